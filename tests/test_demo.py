"""`make demo` (tools/run_demo.py) end to end at the study's smoke size: one line per stage with the path of its
log, the two fine-tunings side by side, then the pretraining's health and both detectors' box AP."""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_prints_a_line_per_stage_and_both_detectors(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "run_demo.py"), "--smoke", "--output", str(out),
         "--pretrain-iters", "4", "--finetune-opts", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(2, 3)",
         "SOLVER.WARMUP_ITERS", "1", "TEST.EVAL_PERIOD", "4"],
        cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stages = re.findall(r"^\[(\d)/4\] .+ \.\.\. \d+ s; logs?: (.+)$", result.stdout, flags=re.M)
    assert [step for step, _ in stages] == ["1", "2", "3", "4"], result.stdout
    logs = [log for _, paths in stages for log in paths.split(", ")]
    assert len(logs) == 5 and all(os.path.isfile(log) for log in logs), logs
    # the two fine-tunings ran at once, the cores shared out between them, and each log starts with its command
    threads = max(1, os.cpu_count() // 2)
    spans = {}
    for name, weights in (("finetune_soco", str(out / "soco_r18_fpn.pkl")), ("finetune_random_init", "''")):
        log = (out / f"{name}.log").read_text()
        header = log.splitlines()[0]
        assert header.startswith(f"$ OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} "), header
        assert f"MODEL.WEIGHTS {weights} " in header, header
        stamps = re.findall(r"^\[\d\d/\d\d (\d\d:\d\d:\d\d) ", log, flags=re.M)  # Detectron2's log lines
        spans[name] = (stamps[0], stamps[-1])
    # each one's first log line comes before the other's last (one after the other, it would come after)
    assert spans["finetune_soco"][0] < spans["finetune_random_init"][1], spans
    assert spans["finetune_random_init"][0] < spans["finetune_soco"][1], spans
    assert "pretraining health: " in result.stdout and "view retrieval on study_val" in result.stdout
    for name in ("SoCo       ", "random init"):
        assert re.search(rf"^detector fine-tuned from {name} on 8 labelled scenes: box AP \S+, AP50 \S+",
                         result.stdout, flags=re.M), result.stdout
