"""The installed environment, registration, and the demo / synthetic datasets."""
import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_environment_imports_from_any_directory(tmp_path):
    code = "import objpretrain, detectron2, cv2; cv2.ximgproc.segmentation; print(detectron2.__version__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0.7.2"


def test_add_objpretrain_config_adds_documented_keys():
    from detectron2.config import get_cfg

    from objpretrain.config import add_objpretrain_config

    cfg = get_cfg()
    add_objpretrain_config(cfg)
    add_objpretrain_config(cfg)  # idempotent
    assert cfg.INPUT.SOCO.NUM_PROPOSALS == 4
    assert tuple(cfg.INPUT.SOCO.CROP_SCALE) == (0.5, 1.0)
    assert cfg.MODEL.SOCO.SCALE_AWARE_THRESHOLDS == [48, 96, 192]
    assert cfg.MODEL.OAC.QUEUE_SIZE == 65536
    # A typo in a YAML file must fail loudly rather than be ignored.
    with pytest.raises(AssertionError, match="Non-existent key: INPUT.SOCO.NUM_PROPOSAL"):
        cfg.merge_from_list(["INPUT.SOCO.NUM_PROPOSAL", 3])


def test_stock_mask_rcnn_r50_fpn_builds_and_trains_one_step_on_cpu():
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    model = build_model(cfg)
    model.train()
    image = torch.randint(0, 255, (3, 128, 160), dtype=torch.uint8).float()
    instances = Instances((128, 160))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 60.0, 90.0]]))
    instances.gt_classes = torch.tensor([3])
    mask = torch.zeros(1, 128, 160, dtype=torch.bool)
    mask[:, 20:90, 10:60] = True
    instances.gt_masks = BitMasks(mask)
    with EventStorage():
        losses = model([{"image": image, "instances": instances}])
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grad = model.backbone.bottom_up.res5[0].conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_synthetic_coco_is_deterministic_and_valid(tmp_path):
    from pycocotools.coco import COCO

    from objpretrain.data.datasets import make_synthetic_coco

    json_a, root_a = make_synthetic_coco(str(tmp_path / "a"), num_images=4, image_size=96, seed=3)
    json_b, root_b = make_synthetic_coco(str(tmp_path / "b"), num_images=4, image_size=96, seed=3)
    assert filecmp.cmp(json_a, json_b, shallow=False)
    for name in os.listdir(root_a):
        assert filecmp.cmp(os.path.join(root_a, name), os.path.join(root_b, name), shallow=False)
    json_c, _ = make_synthetic_coco(str(tmp_path / "c"), num_images=4, image_size=96, seed=4)
    assert not filecmp.cmp(json_a, json_c, shallow=False)

    coco = COCO(json_a)
    assert len(coco.getImgIds()) == 4 and len(coco.getAnnIds()) >= 4
    for ann in coco.loadAnns(coco.getAnnIds()):
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96 and w > 0 and h > 0
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        # the mask fills its box (to rasterisation precision)
        assert xs.min() >= x - 1 and xs.max() <= x + w + 1 and ys.min() >= y - 1 and ys.max() <= y + h + 1


def test_demo_datasets_register_with_valid_dicts(demo_data):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from PIL import Image
    from pycocotools.coco import COCO

    unlabeled = DatasetCatalog.get("demo_unlabeled")
    assert len(unlabeled) >= 40
    ids = [d["image_id"] for d in unlabeled]
    assert len(set(ids)) == len(ids) and all(isinstance(i, str) for i in ids)
    assert all(os.path.exists(d["file_name"]) for d in unlabeled)

    total_boxes = 0
    for split in ("train", "val"):
        name = f"demo_trees_{split}"
        dicts = DatasetCatalog.get(name)
        assert MetadataCatalog.get(name).thing_classes == ["tree"]
        assert len(dicts) >= 5
        for d in dicts:
            width, height = Image.open(d["file_name"]).size
            assert (width, height) == (d["width"], d["height"]) and max(width, height) <= 512
            for ann in d["annotations"]:
                x, y, w, h = ann["bbox"]
                assert ann["category_id"] == 0
                assert 0 <= x and 0 <= y and x + w <= width + 1e-6 and y + h <= height + 1e-6 and w >= 4 and h >= 4
                total_boxes += 1
        COCO(os.path.join(demo_data, "trees", f"annotations_{split}.json"))
    # DeepForest's four annotated images hold about 950 crowns; tiling keeps nearly all of them.
    assert 850 <= total_boxes <= 960


def test_demo_trees_in_voc_layout_have_the_coco_boxes(demo_data):
    """datasets/demo/trees_voc (the C4 chain's VOC evaluation) holds the same tiles and boxes as the COCO json,
    to VOC's integer pixels."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for split in ("train", "val"):
        coco = {os.path.splitext(os.path.basename(d["file_name"]))[0]: d
                for d in DatasetCatalog.get(f"demo_trees_{split}")}
        voc = DatasetCatalog.get(f"demo_trees_voc_{split}")
        assert MetadataCatalog.get(f"demo_trees_voc_{split}").evaluator_type == "pascal_voc"
        assert sorted(d["image_id"] for d in voc) == sorted(coco)
        for d in voc:
            xyxy = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                    for a in coco[d["image_id"]]["annotations"]]
            expected = np.array(sorted(xyxy)).reshape(-1, 4)
            boxes = np.array(sorted(a["bbox"] for a in d["annotations"])).reshape(-1, 4)
            assert boxes.shape == expected.shape and np.abs(boxes - expected).max(initial=0) <= 0.5 + 1e-6
            assert (d["width"], d["height"]) == (coco[d["image_id"]]["width"], coco[d["image_id"]]["height"])


def test_demo_tree_tiles_keep_the_source_pixels(demo_data, tmp_path):
    """A tile is the exact crop of its source image: boxes converted to tile coordinates stay on the same trees."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "datasets"))
    try:
        import prepare_demo
    finally:
        sys.path.pop(0)
    boxes = np.array([[10, 10, 30, 30], [80, 10, 110, 30], [99, 40, 140, 60], [0, 0, 2, 2]], dtype=float)
    kept = prepare_demo.boxes_in_tile(boxes, 100, 0, 200, 100)
    # box 0 and box 3 lie outside; box 1 is a third inside (dropped); box 2 is 40/41 inside (kept, clipped)
    np.testing.assert_allclose(kept, [[0, 40, 40, 60]])
    assert prepare_demo.tile_grid(1035, 512) == [(0, 345), (345, 690), (690, 1035)]
    with open(os.path.join(demo_data, "trees", "annotations_train.json")) as f:
        first = json.load(f)["images"][0]
    assert first["file_name"].endswith(".png")


def test_import_registers_every_component():
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import META_ARCH_REGISTRY, ROI_HEADS_REGISTRY

    import objpretrain  # noqa: F401
    from objpretrain.data.build import MAPPER_REGISTRY

    assert {"SoCo", "SoCoC4", "OACMoCo", "OACBYOL", "OACDenseCL"} <= set(META_ARCH_REGISTRY._obj_map)
    assert "Res5ROIHeadsExtraNorm" in ROI_HEADS_REGISTRY._obj_map
    assert {"SoCoMapper", "OACMapper"} <= set(MAPPER_REGISTRY._obj_map)
    assert {"demo_unlabeled", "demo_trees_train", "demo_trees_val", "imagenet_train_unlabeled"} <= set(
        DatasetCatalog.list()
    )


@pytest.mark.parametrize("tool", sorted(t for t in os.listdir(os.path.join(REPO, "tools")) if t.endswith(".py")))
def test_no_tool_prints_the_dependencies_jit_script_warning(tool):
    """fvcore and Detectron2 script functions at import (a FutureWarning on torch 2.14); objpretrain silences those
    two imports, and every tool must import objpretrain before Detectron2 for that to hold."""
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "jit.script" not in result.stdout + result.stderr
