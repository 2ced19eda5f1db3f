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

# The reproduction study with its detection transfer (docs/results.md): 3 seeds in about 2 h 45 min on 2 CPU cores,
# two arms side by side with one thread per stage (one seed timed whole: 58 min; 16 fine-tunings of 5.5 min a seed,
# pretraining, probes); resumable (rerun it after an interruption); not part of `make test`.
study: setup
	$(PY) tools/run_study.py --output output/study --jobs 2

test-fast: setup lint
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
