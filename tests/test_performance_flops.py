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
