# Two commands for a fresh machine: `make demo` and `make test`. Both install into .venv when needed.
VENV   := .venv
PY     := $(VENV)/bin/python
# The stamp is keyed on the requirement files: editing them re-runs the install, otherwise setup is a no-op.
REQ_HASH := $(shell cat requirements/*.txt setup.py tools/install_env.sh | sha256sum | cut -c1-16)
STAMP  := $(VENV)/.installed-$(REQ_HASH)
PYTEST_ARGS ?=

.PHONY: setup demo lint test test-fast study clean-venv

setup: $(STAMP)

$(STAMP):
	VENV=$(VENV) bash tools/install_env.sh
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(PY) tools/run_demo.py

# ruff (ruff.toml: pycodestyle, pyflakes, import order) first: a lint failure stops before the long suite.
test: setup lint
	$(PY) -m pytest tests $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .

# The reproduction study with its detection transfer (docs/results.md): about 8 hours on 2 CPU cores, estimated from
# its stages' times (20 fine-tunings of 6-8 min per seed at the 800-iteration schedule, measured in the study,
# 25 min of pretraining, probes); not yet timed whole; resumable (rerun it after an interruption); not part of
# `make test`.
study: setup
	$(PY) tools/run_study.py --output output/study

test-fast: setup lint
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
