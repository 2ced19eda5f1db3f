"""End to end: tools/pretrain_net.py on a tiny generated image folder, and kill-and-resume of PretrainTrainer."""
import importlib.util
import itertools
import json
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.engine import HookBase
from detectron2.structures import BoxMode

from objpretrain.config import get_pretrain_cfg
from objpretrain.data.datasets import register_image_folder
from objpretrain.engine import PretrainTrainer, cosine_momentum
from rectangle_scenes import write_rectangle_scenes
from test_soco_model import DEMO_CONFIG, TINY_OPTS, make_soco_batch


@pytest.fixture(scope="module")
def tiny_unlabeled(tmp_path_factory):
    """Six 96x80 images of coloured rectangles on noise, and a Detectron2 proposal pickle with their boxes."""
    root = tmp_path_factory.mktemp("soco_e2e")
    boxes = write_rectangle_scenes(str(root))
    ids = [f"scene_{index}" for index in range(len(boxes))]
    proposal_file = root / "proposals.pkl"
    with open(proposal_file, "wb") as f:
        pickle.dump({"ids": ids, "boxes": boxes, "objectness_logits": [np.zeros(len(b), np.float32) for b in boxes],
                     "bbox_mode": BoxMode.XYXY_ABS}, f)
    register_image_folder("soco_e2e_tiny", str(root))
    return {"name": "soco_e2e_tiny", "proposal_file": str(proposal_file)}


def _read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return {row["iteration"]: row for row in map(json.loads, f) if "iteration" in row}


@pytest.mark.slow
def test_pretrain_net_trains_the_demo_config_and_lowers_the_loss(repo_root, tiny_unlabeled, tmp_path):
    spec = importlib.util.spec_from_file_location("pretrain_net", os.path.join(repo_root, "tools", "pretrain_net.py"))
    pretrain_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain_net)
    from detectron2.engine import default_argument_parser

    output_dir = str(tmp_path / "run")
    args = default_argument_parser().parse_args(
        ["--config-file", os.path.join(repo_root, DEMO_CONFIG)] + TINY_OPTS + [
            "DATASETS.TRAIN", f"('{tiny_unlabeled['name']}',)",
            "DATASETS.PROPOSAL_FILES_TRAIN", f"('{tiny_unlabeled['proposal_file']}',)",
            "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "10", "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.CHECKPOINT_PERIOD", "5", "OBJPRETRAIN.LOG_PERIOD", "1", "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", output_dir,
        ]
    )
    pretrain_net.main(args)

    metrics = _read_metrics(output_dir)
    assert sorted(metrics) == list(range(10))
    for row in metrics.values():
        assert {"total_loss", "loss_v1_v2", "loss_v1_v3", "lr", "momentum_tau", "images_per_sec"} <= set(row)
    losses = [metrics[i]["total_loss"] for i in range(10)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert metrics[0]["momentum_tau"] == pytest.approx(0.99)
    assert sorted(f for f in os.listdir(output_dir) if f.endswith(".pth")) == [
        "model_0000004.pth", "model_0000009.pth", "model_final.pth"]
    with open(os.path.join(output_dir, "last_checkpoint")) as f:
        assert f.read() == "model_final.pth"
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(output_dir))
    state = torch.load(os.path.join(output_dir, "model_final.pth"), map_location="cpu", weights_only=False)
    assert any(k.startswith("online_network.backbone.bottom_up.") for k in state["model"])
    assert state["trainer"]["hooks"]["MomentumTargetHook"] == {"num_updates": 10}


class _FixedBatchTrainer(PretrainTrainer):
    """The same batch every iteration, so that a resumed run sees the data an uninterrupted one does."""

    @classmethod
    def build_train_loader(cls, cfg):
        return itertools.repeat(make_soco_batch(num_images=2, seed=5))


class _KilledAt(HookBase):
    def __init__(self, iteration):
        self.iteration = iteration

    def before_step(self):
        if self.trainer.iter == self.iteration:
            raise KeyboardInterrupt(f"simulated kill at iteration {self.iteration}")


@pytest.mark.slow
def test_kill_and_resume_continues_with_the_same_lr_tau_loss_and_weights(repo_root, tmp_path):
    def cfg_for(output_dir):
        return get_pretrain_cfg(os.path.join(repo_root, DEMO_CONFIG), TINY_OPTS + [
            "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "2",
            "OBJPRETRAIN.LOG_PERIOD", "1", "OUTPUT_DIR", str(output_dir), "SEED", "0"])

    def new_trainer(output_dir, resume):
        torch.manual_seed(0)
        trainer = _FixedBatchTrainer(cfg_for(output_dir))
        trainer.resume_or_load(resume=resume)
        return trainer

    uninterrupted = new_trainer(tmp_path / "a", resume=False)
    uninterrupted.train()

    killed = new_trainer(tmp_path / "b", resume=False)
    killed.register_hooks([_KilledAt(2)])
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    assert open(tmp_path / "b" / "last_checkpoint").read() == "model_0000001.pth"

    torch.manual_seed(123)  # resuming must not depend on the fresh model's initialization
    resumed = _FixedBatchTrainer(cfg_for(tmp_path / "b"))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()

    expected, got = _read_metrics(tmp_path / "a"), _read_metrics(tmp_path / "b")
    for iteration in (2, 3):
        for key in ("lr", "momentum_tau", "total_loss"):
            assert got[iteration][key] == pytest.approx(expected[iteration][key], rel=1e-5), (iteration, key)
    assert got[2]["momentum_tau"] == pytest.approx(cosine_momentum(2, 4, 0.99))
    final_a, final_b = uninterrupted.model.state_dict(), resumed.model.state_dict()
    for name, value in final_a.items():
        assert torch.allclose(value.float(), final_b[name].float(), atol=1e-5), name


@pytest.mark.slow
def test_c4_chain_pretrain_convert_finetune_and_voc_evaluation(repo_root, tiny_unlabeled, demo_data, tmp_path):
    """SoCo R18-C4 (tools/pretrain_net.py) -> tools/convert_ckpt.py --to d2-c4 -> Faster R-CNN R18-C4 with
    Res5ROIHeadsExtraNorm (tools/train_net.py) on the demo trees -> Pascal VOC evaluation, as the FPN chain."""
    import subprocess
    import sys

    from test_convert import load_tool

    pretrain_net = load_tool("pretrain_net")
    pretrain_dir = str(tmp_path / "pretrain")
    pretrain_net.main(pretrain_net.default_argument_parser().parse_args(
        ["--config-file", os.path.join(repo_root, "configs/demo/soco_r18_c4_demo.yaml"),
         "DATASETS.TRAIN", f"('{tiny_unlabeled['name']}',)",
         "DATASETS.PROPOSAL_FILES_TRAIN", f"('{tiny_unlabeled['proposal_file']}',)",
         "INPUT.SOCO.VIEW_SIZE", "64", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
         "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", pretrain_dir]))

    finetune_config = os.path.join(repo_root, "configs/demo/finetune_trees_r18_c4.yaml")
    converted = str(tmp_path / "soco_c4.pkl")
    result = subprocess.run(
        [sys.executable, os.path.join(repo_root, "tools/convert_ckpt.py"),
         os.path.join(pretrain_dir, "model_final.pth"), converted, "--to", "d2-c4", "--verify-config", finetune_config],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

    train_net = load_tool("train_net")
    finetune_dir = str(tmp_path / "finetune")
    results = train_net.main(train_net.get_parser().parse_args(
        ["--config-file", finetune_config, "MODEL.WEIGHTS", converted,
         "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160", "INPUT.MIN_SIZE_TEST", "128",
         "INPUT.MAX_SIZE_TEST", "160", "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "SOLVER.MAX_ITER", "3",
         "SOLVER.STEPS", "(2,)", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100",
         "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", finetune_dir]))
    assert set(results) == {"bbox"} and {"AP", "AP50", "AP75"} <= set(results["bbox"])  # the VOC evaluator's keys
    assert all(np.isfinite(v) for v in results["bbox"].values())

    # The detector started from the pretrained res4 and res5 (3 iterations at lr 0.005 move them little).
    pretrained = torch.load(os.path.join(pretrain_dir, "model_final.pth"), map_location="cpu",
                            weights_only=False)["model"]
    final = torch.load(os.path.join(finetune_dir, "model_final.pth"), map_location="cpu", weights_only=False)["model"]
    for source, name in (("online_network.backbone.res4.0.conv1.weight", "backbone.res4.0.conv1.weight"),
                         ("online_network.res5.2.conv3.weight", "roi_heads.res5.2.conv3.weight")):
        assert source in pretrained, sorted(k for k in pretrained if "res5.2" in k)[:3]
        assert (final[name] - pretrained[source]).abs().max() < 0.1 * pretrained[source].abs().max()
