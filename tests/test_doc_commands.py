"""Every shell command in README.md and docs/*.md works as written.

A command is a line (backslash continuations joined) in a fenced code block that starts with ``python``,
``.venv/bin/python``, ``make``, ``bash`` or ``VAR=value`` assignments before one of them. Two kinds:

- **Runs here.** Unmarked commands are run, in the order of their document, through bash in a scratch copy of
  the checkout (the repository's folders linked, outputs written in the scratch folder, so a document's chain of
  commands sees its own outputs), at a tiny size: the test appends ``KEY VALUE`` overrides or options that
  shorten training (``TINY``). A failing command fails the test with its output.
- **Needs what this machine lacks.** A command whose trailing comment starts with ``needs:`` (ImageNet, 8 GPUs,
  a GPU, an hour) is not run; its script and every file of the repository it names must exist, and a Python
  tool's arguments must parse (its argparse parser runs, then the tool is stopped). ``needs: synopsis`` marks
  a usage line with placeholders, of which only the script is checked. A command that another test runs end to
  end names that test in its ``needs:`` comment and is checked the same way.

``make`` targets (``make demo`` takes 7 minutes, ``make test`` is this suite, ``make study`` about 2 h 45 min) are
never run here: ``make -n`` checks that the target exists and what it would run resolves.
"""
import argparse
import glob
import os
import re
import runpy
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
COMMAND = re.compile(r"^((?:[A-Z_][A-Z0-9_]*=\S*\s+)*)(python|\.venv/bin/python|make|bash)\b")
# Options appended to runnable commands so that they finish in seconds (KEY VALUE overrides for the trainers).
TINY = {
    "tools/pretrain_net.py": "SOLVER.MAX_ITER 2 SOLVER.WARMUP_ITERS 1 SOLVER.IMS_PER_BATCH 4 "
                             "SOLVER.CHECKPOINT_PERIOD 100 DATALOADER.NUM_WORKERS 0 "
                             "OBJPRETRAIN.HEALTH.RETRIEVAL_PERIOD 0",
    "tools/train_net.py": "SOLVER.MAX_ITER 2 SOLVER.STEPS '(1,)' SOLVER.WARMUP_ITERS 1 SOLVER.CHECKPOINT_PERIOD 100 "
                          "'INPUT.MIN_SIZE_TRAIN' '(128,)' INPUT.MAX_SIZE_TRAIN 160 INPUT.MIN_SIZE_TEST 128 "
                          "INPUT.MAX_SIZE_TEST 160 DATALOADER.NUM_WORKERS 0",
    "tools/generate_proposals.py": "--workers 2 --no-progress --max-input-size 160",
}
# Repository folders the scratch copy links to (datasets/ is rebuilt so that files written there stay local).
LINKED = ("configs", "tools", "bench", "objpretrain", ".venv", "Makefile", "requirements", "setup.py")


class _Parsed(BaseException):
    """Raised by the patched ArgumentParser.parse_args once a tool's arguments have parsed."""


def doc_commands():
    """(document, line number, command, needs) for every command of the documents, in order."""
    commands = []
    for doc in DOCS:
        lines = open(os.path.join(REPO, doc)).read().splitlines()
        in_block, index = False, 0
        while index < len(lines):
            line = lines[index]
            if line.lstrip().startswith("```"):
                in_block = not in_block
                index += 1
                continue
            start = index
            text = line.strip()
            while in_block and text.endswith("\\") and index + 1 < len(lines):
                index += 1
                text = text[:-1].rstrip() + " " + lines[index].strip()
            index += 1
            if not in_block or not COMMAND.match(text):
                continue
            command, _, comment = text.partition(" # ")
            comment = comment.strip()
            needs = comment[len("needs:"):].strip() if comment.startswith("needs:") else None
            commands.append((doc, start + 1, command.strip(), needs))
    return commands


def _words(command):
    """The command's words after its VAR=value assignments; a leading python interpreter removed."""
    words = shlex.split(command)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    if words and words[0] in ("python", ".venv/bin/python"):
        words = words[1:]
    return words


def _scratch_checkout(root):
    for name in LINKED:
        os.symlink(os.path.join(REPO, name), os.path.join(root, name))
    demo = os.path.join(REPO, "datasets", "demo")
    os.makedirs(os.path.join(root, "datasets", "demo"))
    for name in ("prepare_demo.py",):
        os.symlink(os.path.join(REPO, "datasets", name), os.path.join(root, "datasets", name))
    for name in os.listdir(demo):
        if not name.endswith(".pkl"):  # proposal files are what the documents' commands make
            os.symlink(os.path.join(demo, name), os.path.join(root, "datasets", "demo", name))
    return root


def test_every_command_is_found_and_the_markers_are_known():
    commands = doc_commands()
    assert len(commands) >= 30  # README and docs/ hold about 45; fewer means the parser lost some
    for doc, line, command, needs in commands:
        words = _words(command)
        assert words, f"{doc}:{line}: empty command"
        assert needs is None or needs, f"{doc}:{line}: 'needs:' says what is needed"


def _checked_only(command):
    return command[3] is not None or _words(command[2])[0] == "make"


@pytest.mark.parametrize("doc, line, command, needs", [c for c in doc_commands() if _checked_only(c)],
                         ids=lambda v: str(v)[:60] if isinstance(v, str) else str(v))
def test_commands_that_need_more_than_this_machine_exist_and_parse(doc, line, command, needs, monkeypatch):
    words = _words(command)
    where = f"{doc}:{line}: {command}"
    if words[0] == "make":
        targets = [w for w in words[1:] if not w.startswith("-")]
        result = subprocess.run(["make", "-n"] + targets, cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, f"{where}\n{result.stderr}"
        return
    if words[0] == "bash":
        script = os.path.join(REPO, words[1])
        assert os.path.isfile(script), where
        assert subprocess.run(["bash", "-n", script]).returncode == 0, where
        return
    if words[0] == "-c":  # python -c "...": the code compiles
        compile(words[1], where, "exec")
        return
    if words[0] == "-m":  # python -m pytest FILES: the files exist
        assert all(os.path.exists(os.path.join(REPO, w)) for w in words[2:] if not w.startswith("-")), where
        return
    script = os.path.join(REPO, words[0])
    assert os.path.isfile(script), f"{where}: {words[0]} does not exist"
    for word in words[1:]:
        if re.match(r"^(configs|tools|bench)/\S+\.(yaml|py|sh)$", word):
            assert os.path.isfile(os.path.join(REPO, word)), f"{where}: {word} does not exist"
    if needs.startswith("synopsis"):
        return
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [script] + words[1:])
    monkeypatch.chdir(REPO)
    # as `python tools/x.py` does: the script's folder first on the path (tools/run_study.py imports tools/study)
    monkeypatch.syspath_prepend(os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    except _Parsed:
        return
    except SystemExit as exit:
        pytest.fail(f"{where}: the arguments do not parse (exit {exit.code})")
    pytest.fail(f"{where}: ran without parsing arguments")


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if any(c[0] == d and not _checked_only(c) for c in doc_commands())])
def test_runnable_commands_run_at_a_tiny_size(doc, demo_data, tmp_path):
    root = _scratch_checkout(str(tmp_path))
    env = dict(os.environ, PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ["PATH"],
               OBJPRETRAIN_DEMO_ROOT=os.path.join(root, "datasets", "demo"), OMP_NUM_THREADS="2")
    for _, line, command, _ in [c for c in doc_commands() if c[0] == doc and not _checked_only(c)]:
        words = _words(command)
        tiny = TINY.get(words[0] if words else "", "")
        result = subprocess.run(["bash", "-c", f"{command} {tiny}"], cwd=root, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, f"{doc}:{line}: {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
