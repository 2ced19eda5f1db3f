"""The OAC demo configs train end to end with objpretrain.engine.PretrainTrainer (as tools/pretrain_net.py
runs them) on a tiny synthetic set with a proposal pickle written here, and the checkpoint converts."""
import os
import pickle

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

from objpretrain.checkpoint import convert_checkpoint
from objpretrain.config import get_pretrain_cfg
from objpretrain.data.datasets import register_synthetic_coco
from objpretrain.engine import PretrainTrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def oac_dataset(tmp_path_factory):
    """16 synthetic 128-px images; the proposals are each image's shape boxes, 1-2 px jittered."""
    root = tmp_path_factory.mktemp("oac_train")
    name = "oac_train_synthetic"
    register_synthetic_coco(name, str(root / "data"), num_images=16, image_size=128, seed=3)
    rng = np.random.default_rng(0)
    ids, boxes = [], []
    for d in DatasetCatalog.get(name):
        gt = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]],
                      np.float32).reshape(-1, 4)
        ids.append(str(d["image_id"]))
        boxes.append(gt + rng.uniform(-2, 2, size=gt.shape).astype(np.float32))
    proposal_file = str(root / "proposals.pkl")
    with open(proposal_file, "wb") as f:
        pickle.dump({"ids": ids, "boxes": boxes, "objectness_logits": [np.zeros(len(b), np.float32) for b in boxes],
                     "bbox_mode": BoxMode.XYXY_ABS}, f)
    return name, proposal_file, root


def _train(config, oac_dataset, iters, *opts):
    name, proposal_file, root = oac_dataset
    output = root / os.path.splitext(os.path.basename(config))[0]
    cfg = get_pretrain_cfg(os.path.join(REPO, "configs", "demo", config), [
        "DATASETS.TRAIN", f"('{name}',)", "DATASETS.PROPOSAL_FILES_TRAIN", f"('{proposal_file}',)",
        "SOLVER.MAX_ITER", str(iters), "SOLVER.CHECKPOINT_PERIOD", "100000", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.OAC.CROP_SIZE", "48", "OUTPUT_DIR", str(output), *opts,
    ])
    trainer = PretrainTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer, output


@pytest.mark.slow
def test_byol_demo_config_lowers_the_loss(oac_dataset):
    trainer, _ = _train("oac_byol_r18_demo.yaml", oac_dataset, 30, "MODEL.OAC.LAMBDA_LOC", "1.0")
    total = [value for value, _ in trainer.storage.history("total_loss").values()]
    byol = [value for value, _ in trainer.storage.history("loss_byol").values()]
    assert len(total) == 30 and all(np.isfinite(total))
    assert np.mean(byol[-5:]) < 0.8 * np.mean(byol[:5])
    assert np.mean(total[-5:]) < np.mean(total[:5])


@pytest.mark.slow
@pytest.mark.parametrize("config,losses", [
    ("oac_moco_r18_demo.yaml", {"loss_moco", "loss_rot", "loss_loc"}),
    ("oac_densecl_r18_demo.yaml", {"loss_global", "loss_dense"}),
])
def test_demo_configs_train_and_their_checkpoint_converts(config, losses, oac_dataset, tmp_path):
    trainer, output = _train(config, oac_dataset, 3)
    assert losses <= set(trainer.storage.histories())
    total = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(total) == 3 and all(np.isfinite(total))
    checkpoint = output / "model_final.pth"
    conversion, _ = convert_checkpoint(str(checkpoint), str(tmp_path / "backbone.pkl"), "d2-backbone")
    assert "res5.1.conv2.weight" in conversion.state_dict and "stem.conv1.weight" in conversion.state_dict
    assert not any(k.startswith(("projector", "queues", "rotation", "localization")) for k in conversion.state_dict)


def test_epochs_count_boxes_with_one_item_per_box(oac_dataset, tmp_path):
    """INPUT.OAC.ITEM_PER_BOX: the loader's items are the boxes, and SOLVER.EPOCHS converts with their number."""
    name, proposal_file, _ = oac_dataset
    with open(proposal_file, "rb") as f:
        num_boxes = sum(min(len(b), 10) for b in pickle.load(f)["boxes"])
    assert num_boxes > 16
    for per_box, items in ((False, 16), (True, num_boxes)):
        cfg = get_pretrain_cfg(os.path.join(REPO, "configs", "demo", "oac_moco_r18_demo.yaml"), [
            "DATASETS.TRAIN", f"('{name}',)", "DATASETS.PROPOSAL_FILES_TRAIN", f"('{proposal_file}',)",
            "SOLVER.EPOCHS", "2", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS",
            "0", "MODEL.OAC.LAMBDA_ROT", "0.0", "MODEL.OAC.LAMBDA_LOC", "0.0", "INPUT.OAC.ITEM_PER_BOX", str(per_box),
            "INPUT.OAC.CROP_MODE", "obj-obj+dilate", "OUTPUT_DIR", str(tmp_path / str(per_box))])
        trainer = PretrainTrainer(cfg)
        assert trainer.data_loader.num_items == items and trainer.max_iter == -(-2 * items // 4), per_box
