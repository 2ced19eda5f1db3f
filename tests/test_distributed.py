"""Multi-process training on a CPU machine: Detectron2's ``launch`` with gloo, as on GPUs with NCCL."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from detectron2.structures import BoxMode

from rectangle_scenes import write_rectangle_scenes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _run(*command, timeout=600):
    result = subprocess.run([sys.executable, *command], cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_pretrain_net_runs_on_two_cpu_processes(tmp_path):
    """tools/pretrain_net.py --num-gpus 2 on a CPU (DDP with device_ids=None): both ranks train, rank 0 alone
    writes checkpoints and metrics."""
    images = tmp_path / "images"
    boxes = write_rectangle_scenes(str(images))
    proposals = tmp_path / "proposals.pkl"
    with open(proposals, "wb") as f:
        pickle.dump({"ids": [f"scene_{i}" for i in range(len(boxes))], "boxes": boxes,
                     "objectness_logits": [np.zeros(len(b), np.float32) for b in boxes],
                     "bbox_mode": BoxMode.XYXY_ABS}, f)
    output = tmp_path / "run"
    _run("tools/pretrain_net.py", "--config-file", "configs/demo/soco_r18_fpn_demo.yaml", "--num-gpus", "2",
         "DATASETS.IMAGE_FOLDER_REGISTER", f"('ddp_scenes:{images}',)", "DATASETS.TRAIN", "('ddp_scenes',)",
         "DATASETS.PROPOSAL_FILES_TRAIN", f"('{proposals}',)", "INPUT.SOCO.VIEW_SIZE", "64", "INPUT.SOCO.V3_SIZE", "32",
         "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
         "SOLVER.CHECKPOINT_PERIOD", "100", "OBJPRETRAIN.LOG_PERIOD", "1", "DATALOADER.NUM_WORKERS", "0",
         "OUTPUT_DIR", str(output))
    with open(output / "metrics.json") as f:
        rows = [json.loads(line) for line in f if '"iteration"' in line]
    assert [row["iteration"] for row in rows] == [0, 1, 2]  # one writer: no row twice
    assert sorted(name for name in os.listdir(output) if name.endswith(".pth")) == ["model_final.pth"]
    with open(output / "log.txt.rank1") as f:
        assert "Rank of current process: 1. World size: 2" in f.read()


@pytest.mark.slow
def test_train_net_runs_on_two_cpu_processes(synthetic_coco, tmp_path):
    """tools/train_net.py --num-gpus 2 on a CPU: Faster R-CNN R18-FPN fine-tuning and COCO evaluation."""
    output = tmp_path / "finetune"
    spec = f"ddp_coco:{synthetic_coco['json']}:{synthetic_coco['image_root']}"
    result = _run("tools/train_net.py", "--config-file", "configs/demo/finetune_trees_r18_fpn.yaml", "--num-gpus", "2",
                  "--register-coco", spec, "DATASETS.TRAIN", "('ddp_coco',)", "DATASETS.TEST", "('ddp_coco',)",
                  "MODEL.ROI_HEADS.NUM_CLASSES", "3", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
                  "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2",
                  "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "(2,)", "SOLVER.WARMUP_ITERS", "1",
                  "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(output))
    assert "World size: 2" in result.stdout + result.stderr
    assert (output / "model_final.pth").exists()
    with open(output / "metrics.json") as f:
        assert any('"bbox/AP"' in line for line in f)
