"""The evaluators of tools/train_net.py (objpretrain.evaluation.detection): chosen by evaluator_type; scores on a
VOC-format set written here (JPEGImages / Annotations / ImageSets) and on an LVIS-format set; the Trainer's test
loop over the VOC set."""
import math
import os
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_pascal_voc
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, Instances
from PIL import Image

from objpretrain.config import get_pretrain_cfg
from objpretrain.engine.finetune import FinetuneTrainer
from objpretrain.evaluation.detection import build_detection_evaluator
from test_convert import DEMO_FINETUNE

CLASSES = ("cat", "dog")
# (image id, [(class, xmin, ymin, xmax, ymax) in VOC's 1-based pixels])
OBJECTS = [
    ("000001", [("cat", 5, 8, 30, 40), ("dog", 35, 30, 60, 60)]),
    ("000002", [("dog", 10, 10, 50, 40)]),
    ("000003", [("cat", 20, 5, 45, 55)]),
    ("000004", [("cat", 2, 2, 20, 20), ("dog", 30, 40, 62, 62)]),
]


def write_voc(root, size=64):
    for folder in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, objects in OBJECTS:
        pixels = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
        for name, x0, y0, x1, y1 in objects:
            pixels[y0 - 1:y1, x0 - 1:x1] = (220, 60, 60) if name == "cat" else (60, 60, 220)
        Image.fromarray(pixels).save(os.path.join(root, "JPEGImages", image_id + ".jpg"))
        annotation = ET.Element("annotation")
        image_size = ET.SubElement(annotation, "size")
        for key, value in (("width", size), ("height", size), ("depth", 3)):
            ET.SubElement(image_size, key).text = str(value)
        for name, *box in objects:
            obj = ET.SubElement(annotation, "object")
            for key, value in (("name", name), ("pose", "Unspecified"), ("truncated", 0), ("difficult", 0)):
                ET.SubElement(obj, key).text = str(value)
            bndbox = ET.SubElement(obj, "bndbox")
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
                ET.SubElement(bndbox, key).text = str(value)
        ET.ElementTree(annotation).write(os.path.join(root, "Annotations", image_id + ".xml"))
    with open(os.path.join(root, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("\n".join(image_id for image_id, _ in OBJECTS) + "\n")


@pytest.fixture(scope="module")
def voc_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("voc") / "VOC2007")
    write_voc(root)
    name = "voc_tiny_test"
    if name not in DatasetCatalog.list():
        register_pascal_voc(name, root, "test", 2007, CLASSES)
        # As Detectron2's builtin VOC registration does (register_pascal_voc leaves it to the caller).
        MetadataCatalog.get(name).evaluator_type = "pascal_voc"
    return name


def predictions(dataset, shift=0.0):
    """Ground truth as detections (score 1), each box moved right by ``shift`` times its width."""
    outputs = []
    for record in dataset:
        boxes = torch.tensor([a["bbox"] for a in record["annotations"]], dtype=torch.float32)
        boxes[:, [0, 2]] += shift * (boxes[:, 2] - boxes[:, 0])[:, None]
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(boxes)
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
        outputs.append({"instances": instances})
    return outputs


def test_voc_evaluator_scores_ground_truth(voc_set):
    cfg = get_pretrain_cfg(DEMO_FINETUNE)
    evaluator = build_detection_evaluator(cfg, voc_set)
    assert isinstance(evaluator, PascalVOCDetectionEvaluator)
    dataset = DatasetCatalog.get(voc_set)
    scores = {}
    for shift in (0.0, 0.6):
        evaluator.reset()
        evaluator.process([{"image_id": r["image_id"]} for r in dataset], predictions(dataset, shift))
        scores[shift] = evaluator.evaluate()["bbox"]
    assert scores[0.0]["AP50"] == pytest.approx(100.0) and scores[0.0]["AP"] == pytest.approx(100.0)
    assert scores[0.6]["AP50"] < 50.0


def test_evaluator_follows_evaluator_type(voc_set, synthetic_coco):
    cfg = get_pretrain_cfg(DEMO_FINETUNE)
    evaluator = build_detection_evaluator(cfg, synthetic_coco["name"], "unused_output")
    assert isinstance(evaluator, COCOEvaluator) and evaluator._tasks == ("bbox",)
    cfg.MODEL.MASK_ON = True
    assert build_detection_evaluator(cfg, synthetic_coco["name"], "unused_output")._tasks == ("bbox", "segm")
    MetadataCatalog.get("voc_tiny_unknown_type").set(evaluator_type="cityscapes")
    with pytest.raises(ValueError, match="voc_tiny_unknown_type.*'cityscapes'"):
        build_detection_evaluator(cfg, "voc_tiny_unknown_type")


def test_trainer_evaluates_a_voc_set(voc_set, tmp_path):
    cfg = get_pretrain_cfg(DEMO_FINETUNE, ["DATASETS.TEST", f"('{voc_set}',)", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
                                           "INPUT.MIN_SIZE_TEST", "64", "OUTPUT_DIR", str(tmp_path)])
    torch.manual_seed(0)
    model = FinetuneTrainer.build_model(cfg).eval()
    results = FinetuneTrainer.test(cfg, model)
    assert set(results["bbox"]) == {"AP", "AP50", "AP75"}
    assert all(math.isfinite(v) for v in results["bbox"].values())


def _lvis_set(synthetic_coco, tmp_path):
    """The synthetic COCO set rewritten in LVIS v1's format (coco_url, frequency, the federated image lists) and
    registered as Detectron2's register_lvis_instances does, minus its builtin-name metadata lookup."""
    import json

    from detectron2.data.datasets.lvis import load_lvis_json

    with open(synthetic_coco["json"]) as f:
        coco = json.load(f)
    ids = {c["id"]: i + 1 for i, c in enumerate(coco["categories"])}  # LVIS ids are 1..C
    for image in coco["images"]:
        image.update(coco_url=f"http://images.cocodataset.org/train2017/{image['file_name']}", neg_category_ids=[],
                     not_exhaustive_category_ids=[])
    for ann in coco["annotations"]:
        ann["category_id"] = ids[ann["category_id"]]
    counts = {i: sum(a["category_id"] == i for a in coco["annotations"]) for i in ids.values()}
    coco["categories"] = [{"id": ids[c["id"]], "name": c["name"], "synset": c["name"], "frequency": "f",
                           "image_count": counts[ids[c["id"]]], "instance_count": counts[ids[c["id"]]]}
                          for c in coco["categories"]]
    path = tmp_path / "lvis_tiny.json"
    path.write_text(json.dumps(coco))
    name = "lvis_tiny_test"
    if name not in DatasetCatalog.list():
        root = os.path.dirname(synthetic_coco["image_root"].rstrip("/")) + "/"
        os.makedirs(root + "train2017", exist_ok=True)
        for image in coco["images"]:
            target = root + "train2017/" + image["file_name"]
            if not os.path.exists(target):
                os.symlink(os.path.join(synthetic_coco["image_root"], image["file_name"]), target)
        DatasetCatalog.register(name, lambda: load_lvis_json(str(path), root))
        MetadataCatalog.get(name).set(json_file=str(path), image_root=root, evaluator_type="lvis",
                                      thing_classes=[c["name"] for c in coco["categories"]])
    return name


def test_lvis_evaluator_scores_ground_truth(synthetic_coco, tmp_path):
    """LVISEvaluator through build_detection_evaluator, with lvis 0.5.3 (np.float) under NumPy 2: ground truth as
    detections gives AP 100, shifted boxes much less."""
    name = _lvis_set(synthetic_coco, tmp_path)
    assert MetadataCatalog.get(name).evaluator_type == "lvis"
    cfg = get_pretrain_cfg(DEMO_FINETUNE, ["OUTPUT_DIR", str(tmp_path)])
    evaluator = build_detection_evaluator(cfg, name)
    dataset = DatasetCatalog.get(name)
    for record in dataset:  # LVIS dicts are XYWH; predictions() expects XYXY
        for a in record["annotations"]:
            x, y, w, h = a["bbox"]
            a["bbox"] = [x, y, x + w, y + h]
    scores = {}
    for shift in (0.0, 0.6):
        evaluator.reset()
        evaluator.process([{"image_id": r["image_id"]} for r in dataset], predictions(dataset, shift))
        scores[shift] = evaluator.evaluate()["bbox"]["AP"]
    assert scores[0.0] == pytest.approx(100.0) and scores[0.6] < 50.0
