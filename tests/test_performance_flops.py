"""bench/train_step.py's FLOP counts: PyTorch's whole-step counter and fvcore's forward counter agree on SoCo."""
import os
import runpy

import pytest
from detectron2.modeling import build_model

from objpretrain.config import get_pretrain_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    return runpy.run_path(os.path.join(REPO, "bench", "train_step.py"))


def test_soco_step_flops_are_four_times_fvcore_forward_macs(bench):
    cfg = get_pretrain_cfg(os.path.join(REPO, "configs", "demo", "soco_r18_fpn_demo.yaml"),
                           ["INPUT.SOCO.VIEW_SIZE", 64, "INPUT.SOCO.V3_SIZE", 32])
    model = build_model(cfg)
    model.train()
    batch = bench["synthetic_batch"](cfg, 2)
    forward_macs = bench["fvcore_forward_macs"](model, batch)
    step_flops = bench["training_step_flops"](model, batch, "cpu", False)
    assert forward_macs > 0
    # 2 FLOPs per multiply-add, and online + target forward plus the online backward (~2x its forward)
    # make about four forwards' worth of multiply-adds; heads and the target's no-grad pass shift it a little.
    assert 3.5 < step_flops / forward_macs < 4.5


def test_resnet50_ceiling_counts_a_whole_training_step():
    """bench/resnet50_ceiling.py: a torchvision ResNet-50 step; about 3x the forward's 2 x 4.1 GMAC per 224-px
    image (backward ~ 2x forward), here at 64 px."""
    ceiling = runpy.run_path(os.path.join(REPO, "bench", "resnet50_ceiling.py"))
    result = ceiling["main"](["--batch", "2", "--size", "64", "--iters", "1", "--warmup", "0"])
    forward_tflop = 2 * 2 * 4.1e9 * (64 / 224) ** 2 / 1e12
    assert 2.5 < result["step_tflop"] / forward_tflop < 3.5
    assert result["images_per_s"] > 0 and result["achieved_tflops"] > 0


@pytest.mark.slow
def test_gpu_bench_script_runs_its_variants_and_reports_the_ceiling_ratio_on_a_cpu(tmp_path):
    """bench/gpu_train_step.sh with DEVICE=cpu and tiny views: the ceiling line, the SoCo rows of both view
    batchings with FLOPs and phase times, and the ratio summary, so the device run only has to be started."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, OUT=str(tmp_path), DEVICE="cpu", BATCHES="2", PYTHON=sys.executable,
               CEILING_ARGS="--batch 2 --size 64 --iters 1 --warmup 0",
               SOCO_ARGS="--iters 1 --warmup 0 INPUT.SOCO.VIEW_SIZE 64 INPUT.SOCO.V3_SIZE 32 "
                         "MODEL.SOCO.PROJECTOR_HIDDEN_DIM 64 MODEL.SOCO.PREDICTOR_HIDDEN_DIM 64")
    with open(tmp_path / "log.txt", "w") as log:
        subprocess.run(["bash", "bench/gpu_train_step.sh"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                       timeout=600, check=True)
    output = (tmp_path / "log.txt").read_text()
    rows = [json.loads(line) for line in open(tmp_path / "train_step_gpu.jsonl")]
    assert [r.get("bench") for r in rows][0] == "resnet50_ceiling"
    soco = rows[1:]
    assert [(r["batch"], r["view_batching"]) for r in soco] == [(2, "per_view"), (2, "per_size")], output
    assert all(r["forward_s"] > 0 and r["backward_s"] > 0 and r["step_tflop"] > 0 for r in soco)
    assert output.count("of the ceiling (target 0.8)") == 2, output
