"""OHMS construction (tools/build_ohms.py, objpretrain.data.datasets.ohms) and the linear probe
(tools/linear_eval.py, objpretrain/evaluation): average precision, and an end-to-end run on a tiny synthetic set."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from PIL import Image

from objpretrain.config import get_pretrain_cfg
from objpretrain.data.datasets.ohms import build_ohms_subset, load_class_descriptions, register_ohms
from objpretrain.evaluation import frozen_features, linear_probe, metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def build_ohms():
    return _load_tool("build_ohms")


@pytest.fixture(scope="module")
def linear_eval():
    return _load_tool("linear_eval")


HEADER = "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
CAT, DOG, CAR, TREE, BIRD = "/m/cat", "/m/dog", "/m/car", "/m/tree", "/m/bird"


def _box_rows():
    rows = [
        ("A", CAT), ("A", DOG),
        ("B", CAT), ("B", DOG), ("B", CAR),
        ("C", CAT), ("C", CAT),  # one class only
        ("D", CAR), ("D", TREE),
        ("E", TREE),
        ("F", DOG), ("F", BIRD),
    ]
    lines = [HEADER] + [f"{image},xclick,{label},1,0.1,0.5,0.2,0.6,0,0,0,0,0" for image, label in rows]
    lines.append(f"G,xclick,{CAT},1,0.1,0.5,0.2,0.6,0,0,0,0,0")
    lines.append(f"G,xclick,{DOG},0,0.1,0.5,0.2,0.6,0,0,0,0,0")  # a negative: G has one class
    return "\n".join(lines) + "\n"


@pytest.fixture
def openimages_csvs(tmp_path):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(_box_rows())
    no_header = tmp_path / "class-descriptions-boxable.csv"  # OpenImages' own file has no header
    no_header.write_text(f"{CAT},Cat\n{DOG},Dog\n{CAR},Car\n{TREE},Tree\n{BIRD},Bird\n")
    with_header = tmp_path / "classes_with_header.csv"
    with_header.write_text("LabelName,DisplayName\n" + no_header.read_text())
    return str(boxes), str(no_header), str(with_header)


def test_class_descriptions_with_and_without_header(openimages_csvs):
    _, no_header, with_header = openimages_csvs
    assert load_class_descriptions(no_header) == load_class_descriptions(with_header)
    names = load_class_descriptions(with_header)
    assert names[DOG] == "Dog" and "LabelName" not in names


def test_build_ohms_hand_counted(openimages_csvs, tmp_path, build_ohms):
    boxes, no_header, with_header = openimages_csvs
    output = str(tmp_path / "ohms.json")
    build_ohms.main(["--boxes", boxes, "--class-descriptions", no_header, "--output", output,
                     "--min-images-per-class", "2"])
    with open(output) as f:
        subset = json.load(f)
    # By hand: images with >= 2 classes are A, B, D, F (C, E, G have one; G's dog is a negative). Classes in
    # >= 2 of them: cat (A, B), dog (A, B, F), car (B, D); tree and bird (1 each) go. Then D keeps only car
    # and F only dog, so both go; car is left in B alone and goes too. Stable: A and B with cat and dog.
    assert [c["name"] for c in subset["categories"]] == ["Cat", "Dog"]
    assert [c["num_images"] for c in subset["categories"]] == [2, 2]
    assert [i["image_id"] for i in subset["images"]] == ["A", "B"]
    assert all(i["labels"] == [0, 1] for i in subset["images"])
    assert [len(i["boxes"]) for i in subset["images"]] == [2, 2]  # B's car box is dropped
    counts = subset["info"]["counts"]
    assert counts["images"] == 2 and counts["classes"] == 2 and counts["boxes"] == 4
    assert counts["input_images"] == 7 and counts["input_classes"] == 5
    assert counts["negative_rows_skipped"] == 1 and counts["filter_rounds"] == 3
    # The header variant of the class file gives the same subset.
    assert build_ohms_subset(boxes, with_header, 2, 2) == subset
    # Thresholds are options: with 1 image per class, A, B, D, F survive with all 5 classes.
    loose = build_ohms_subset(boxes, no_header, 2, 1)
    assert loose["info"]["counts"]["images"] == 4 and loose["info"]["counts"]["classes"] == 5


def test_build_ohms_rejects_malformed_csv(tmp_path, openimages_csvs):
    _, no_header, _ = openimages_csvs
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageID,LabelName,XMin\nA,/m/cat,0.1\n")
    with pytest.raises(ValueError, match="bad.csv.*XMax"):
        build_ohms_subset(str(bad), no_header)


def test_registered_ohms_gives_multilabel_dicts_and_absolute_boxes(openimages_csvs, tmp_path, build_ohms):
    boxes, no_header, _ = openimages_csvs
    image_root = tmp_path / "images"
    image_root.mkdir()
    Image.new("RGB", (200, 100)).save(image_root / "A.jpg")  # B has no file: it gets no size
    output = str(tmp_path / "ohms_sized.json")
    build_ohms.main(["--boxes", boxes, "--class-descriptions", no_header, "--output", output,
                     "--min-images-per-class", "2", "--image-root", str(image_root)])
    register_ohms("ohms_test_split", output, str(image_root))
    dicts = DatasetCatalog.get("ohms_test_split")
    assert [d["labels"] for d in dicts] == [[0, 1], [0, 1]]
    assert MetadataCatalog.get("ohms_test_split").thing_classes == ["Cat", "Dog"]
    a, b = dicts
    assert (a["height"], a["width"]) == (100, 200) and "annotations" not in b
    # XMin 0.1, XMax 0.5, YMin 0.2, YMax 0.6 of a 200 x 100 image.
    assert a["annotations"][0]["bbox"] == pytest.approx([20, 20, 100, 60])
    assert a["annotations"][0]["bbox_mode"] == BoxMode.XYXY_ABS


# ------------------------------------------------------------------------------------------ linear probe
def test_average_precision_hand_examples():
    """The cases of the hand-written AP the probes used before scikit-learn's, which must give the same values."""
    # Ranked: + - + -: P@1 = 1 (R 0.5), P@3 = 2/3 (R 1.0): AP = 0.5 * 1 + 0.5 * 2/3.
    assert metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    assert metrics.average_precision([0.1, 0.9, 0.3], [1, 0, 0]) == pytest.approx(1 / 3)
    assert metrics.average_precision([0.3, 0.2], [1, 1]) == pytest.approx(1.0)
    # Ties are one threshold: both examples enter together, precision 1/2.
    assert metrics.average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert metrics.average_precision([0.5, 0.5, 0.1], [0, 1, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert np.isnan(metrics.average_precision([0.5, 0.4], [0, 0]))
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3]])
    labels = np.array([[1, 0], [0, 0], [1, 0]])  # class 1 has no positive: left out of the mean
    mean_ap, per_class = metrics.mean_average_precision(scores, labels)
    assert mean_ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3) and np.isnan(per_class[1])
    assert metrics.top1_accuracy([[0.1, 0.9], [0.8, 0.2]], [1, 1]) == 0.5


def test_batch_averaged_map_is_the_released_scripts_definition():
    """metrics.batch_mean_average_precision: per batch of 2, each class's mean precision at its positives, the mean
    over the classes with a positive in the batch, then the size-weighted mean over batches."""
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.3, 0.5], [0.7, 0.4]])
    labels = np.array([[0, 1], [1, 1], [1, 0], [0, 0]])
    # batch 1: class 0 ranks its positive 2nd (1/2), class 1 both positives first (1) -> 0.75; batch 2: class 0
    # ranks its positive 2nd (1/2), class 1 has none -> 0.5; (0.75 * 2 + 0.5 * 2) / 4
    assert metrics.batch_mean_average_precision(scores, labels, batch_size=2) == pytest.approx(0.625)
    # one batch holding every image, no tied scores: the whole-set mAP
    assert metrics.batch_mean_average_precision(scores, labels, batch_size=4) == pytest.approx(
        metrics.mean_average_precision(scores, labels)[0])
    with pytest.raises(ValueError, match="no class"):
        metrics.batch_mean_average_precision(scores, np.zeros_like(labels))


def test_official_protocol_trains_on_fresh_crops_and_leaves_the_backbone_alone(linear_eval, synthetic_coco,
                                                                               tmp_path, monkeypatch):
    """--protocol official: SGD lr 30 with its steps, the checkpoint's BatchNorm statistics (the ResNet is not
    changed), a random crop per image and epoch, and both mAPs."""
    from objpretrain.evaluation import official_linear_eval

    crops, built = [], []
    original = official_linear_eval._AugmentedImages.__getitem__

    def recording(self, index):
        item = original(self, index)
        crops.append(item[0])
        return item

    def build_and_keep(*args, **kwargs):
        backbone = frozen_features.build_frozen_backbone(*args, **kwargs)
        built.append((backbone, {k: v.clone() for k, v in backbone.state_dict().items()}))
        return backbone

    monkeypatch.setattr(official_linear_eval._AugmentedImages, "__getitem__", recording)
    monkeypatch.setattr(linear_eval, "build_frozen_backbone", build_and_keep)
    result = linear_eval.main(_probe_args(synthetic_coco, tmp_path, "--protocol", "official", "--epochs", "3",
                                          "--crop", "48", "--probe-batch-size", "4"))
    assert result["protocol"] == "official" and result["lr"] == 30.0 and result["lr_steps"] == [2, 2]
    assert result["bn_stats"] == "checkpoint" and 0 <= result["batch_mAP"] <= 1 and 0 <= result["mAP"] <= 1
    assert len(crops) == 3 * result["num_train"] and all(tuple(c.shape) == (3, 48, 48) for c in crops)
    assert not all(torch.equal(crops[0], c) for c in crops[result["num_train"]::result["num_train"]])
    backbone, state = built[0]
    assert all(torch.equal(value, state[key]) for key, value in backbone.state_dict().items())
    with pytest.raises(ValueError, match="official"):
        linear_eval.main(_probe_args(synthetic_coco, tmp_path, "--protocol", "official", "--task", "objects"))


def test_linear_eval_end_to_end_on_cpu(linear_eval, synthetic_coco, tmp_path):
    cfg = get_pretrain_cfg(os.path.join(REPO, "configs", "demo", "oac_moco_r18_demo.yaml"))
    model = build_model(cfg)
    weights = str(tmp_path / "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    args = ["--config-file", os.path.join(REPO, "configs", "demo", "oac_moco_r18_demo.yaml"), "--weights", weights,
            "--train-dataset", synthetic_coco["name"], "--test-dataset", synthetic_coco["name"],
            "--resize", "64", "--crop", "64", "--epochs", "30", "--cache-dir", str(tmp_path / "cache"),
            "--output", str(tmp_path / "result.json")]
    result = linear_eval.main(args)
    assert 0.0 <= result["mAP"] <= 1.0 and result["num_train"] == 8
    # Features are cached: a second run reads them (and trains the same probe).
    assert len(os.listdir(tmp_path / "cache")) == 1
    again = linear_eval.main(args)
    assert again["mAP"] == pytest.approx(result["mAP"])
    # Training-set probe on 8 images: the linear layer fits its own training labels.
    assert result["mAP"] > 0.6
    with open(tmp_path / "result.json") as f:
        assert json.load(f)["mAP"] == pytest.approx(result["mAP"])


class _PooledImage(torch.nn.Module):
    """A stand-in backbone whose res4 / res5 maps are the image average-pooled at strides 16 / 32."""

    def output_shape(self):
        from detectron2.layers import ShapeSpec

        return {"res4": ShapeSpec(channels=3, stride=16), "res5": ShapeSpec(channels=3, stride=32)}

    def forward(self, x):
        return {"res4": torch.nn.functional.avg_pool2d(x, 16), "res5": torch.nn.functional.avg_pool2d(x, 32)}


def test_object_features_pool_each_box_from_its_own_region(linear_eval, tmp_path):
    image = np.full((64, 128, 3), 128, np.uint8)
    image[8:48, 8:48] = (255, 0, 0)
    image[16:56, 80:120] = (0, 0, 255)
    path = str(tmp_path / "two_boxes.png")
    Image.fromarray(image).save(path)
    dicts = [{"file_name": path, "annotations": [
        {"bbox": [8, 8, 40, 40], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
        {"bbox": [80, 16, 120, 56], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2},
        {"bbox": [0, 0, 128, 64], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1, "iscrowd": 1}]},
        {"file_name": str(tmp_path / "missing.png"), "annotations": [
            {"bbox": [0, 0, 8, 8], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1}]}]
    cfg = get_pretrain_cfg(os.path.join(REPO, "configs", "demo", "oac_moco_r18_demo.yaml"),
                           ["MODEL.PIXEL_MEAN", "[0.0, 0.0, 0.0]", "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"])
    # Shorter side 64 -> 128: the boxes double, and their inner stride-16 cells are all one colour.
    features, labels = frozen_features.extract_object_features(_PooledImage(), dicts, cfg, resize=128, device="cpu")
    assert labels.tolist() == [0, 2]  # the crowd box and the unreadable image are left out
    assert features.shape == (2, 6)
    np.testing.assert_allclose(features[0, :3], [255, 0, 0], atol=2)  # 2: bilinear edges
    np.testing.assert_allclose(features[1, :3], [0, 0, 255], atol=2)  # 2: bilinear edges
    assert features[0, 3] > features[1, 3] and features[1, 5] > features[0, 5]  # res5 mixes in the background


def _probe_args(synthetic_coco, tmp_path, *extra):
    return ["--config-file", os.path.join(REPO, "configs", "demo", "oac_moco_r18_demo.yaml"), "--random-init",
            "--train-dataset", synthetic_coco["name"], "--test-dataset", synthetic_coco["name"],
            "--resize", "64", "--crop", "64", "--epochs", "30", *extra]


def test_random_init_probe_and_chance_levels(linear_eval, synthetic_coco, tmp_path):
    dicts = DatasetCatalog.get(synthetic_coco["name"])
    presence = np.zeros((len(dicts), 3))
    for row, d in enumerate(dicts):
        for a in d["annotations"]:
            presence[row, a["category_id"]] = 1
    result = linear_eval.main(_probe_args(synthetic_coco, tmp_path))
    assert result["weights"] == "random init (seed 0)"
    assert result["chance_mAP"] == pytest.approx(presence[:, presence.sum(0) > 0].mean(0).mean())
    assert linear_eval.main(_probe_args(synthetic_coco, tmp_path))["mAP"] == pytest.approx(result["mAP"])

    objects = linear_eval.main(_probe_args(synthetic_coco, tmp_path, "--task", "objects", "--seed", "1"))
    categories = [a["category_id"] for d in dicts for a in d["annotations"] if not a.get("iscrowd", 0)]
    assert objects["num_train"] == objects["num_test"] == len(categories)
    assert objects["chance_top1"] == pytest.approx(np.bincount(categories).max() / len(categories))
    assert 0.0 <= objects["top1"] <= 1.0


def test_several_probes_in_one_process_equal_separate_runs(linear_eval, synthetic_coco, tmp_path):
    """--probe TASK,RESIZE,CROP,OUTPUT, repeated: each result equals that probe run alone; trailing KEY VALUE
    overrides still reach the config; a malformed spec is refused."""
    tasks, sizes = ["retrieval", "objects", "auto"], ["48", "64", "64"]
    outputs = [str(tmp_path / f"{task}.json") for task in tasks]
    args = _probe_args(synthetic_coco, tmp_path)
    specs = [a for task, size, out in zip(tasks, sizes, outputs) for a in ("--probe", f"{task},{size},{size},{out}")]
    # the set under another name, registered by a trailing override: it must reach the config
    register = f"('probe_multi:{synthetic_coco['json']}:{synthetic_coco['image_root']}',)"
    renamed = [a if a != synthetic_coco["name"] else "probe_multi" for a in args]
    together = linear_eval.main(renamed + specs + ["DATASETS.COCO_JSON_REGISTER", register])
    assert len(together) == 3
    for task, size, output, result in zip(tasks, sizes, outputs, together):
        alone = linear_eval.main(_probe_args(synthetic_coco, tmp_path, "--task", task, "--resize", size,
                                             "--crop", size))
        for key in ("train_dataset", "test_dataset"):
            result.pop(key, None), alone.pop(key, None)
        with open(output) as f:
            written = json.load(f)
        for key in ("train_dataset", "test_dataset"):
            written.pop(key, None)
        assert written == alone == result, task
    with pytest.raises(SystemExit):
        linear_eval.main(args + ["--probe", "objects,64,out.json"])


def test_random_init_backbone_follows_the_seed(linear_eval):
    cfg = get_pretrain_cfg(os.path.join(REPO, "configs", "demo", "oac_moco_r18_demo.yaml"))
    first, again, other = (frozen_features.build_frozen_backbone(cfg, None, seed).state_dict() for seed in (0, 0, 1))
    name = "stem.conv1.weight"
    assert torch.equal(first[name], again[name]) and not torch.equal(first[name], other[name])


def test_object_classifier_control_fits_its_objects_and_loads_into_the_probe(linear_eval, synthetic_coco, tmp_path):
    control = _load_tool("train_object_classifier")
    config = os.path.join(REPO, "configs", "demo", "oac_moco_r18_demo.yaml")
    output = str(tmp_path / "control.pth")
    accuracies = control.main(["--config-file", config, "--dataset", synthetic_coco["name"], "--output", output,
                               "--crop-size", "32", "--epochs", "15", "--batch-size", "16"])
    assert accuracies[-1] >= 0.8 and accuracies[-1] > accuracies[0]  # a supervised ResNet fits its own objects
    initial = frozen_features.build_frozen_backbone(get_pretrain_cfg(config), None, seed=0).state_dict()
    trained = torch.load(output)["model"]
    assert not torch.equal(trained["res2.0.conv1.weight"], initial["res2.0.conv1.weight"])  # the ResNet trained too
    # the probe builds the ResNet from it with every tensor present (build_frozen_backbone raises otherwise)
    result = linear_eval.main(["--config-file", config, "--weights", output, "--task", "objects",
                               "--train-dataset", synthetic_coco["name"], "--test-dataset", synthetic_coco["name"],
                               "--resize", "64", "--epochs", "30"])
    assert 0.0 <= result["top1"] <= 1.0


def test_class_indices_map_to_sorted_training_labels_and_reject_unseen_test_labels(linear_eval):
    targets = linear_probe.class_indices({"train": ["dog", "cat", "dog"], "test": ["cat", "cat"]}, "classes")
    assert targets["train"].tolist() == [1, 0, 1] and targets["test"].tolist() == [0, 0]
    with pytest.raises(ValueError, match=r"test classes absent from the training set: \['bird'\]"):
        linear_probe.class_indices({"train": ["dog"], "test": ["bird", "dog"]}, "classes")


def test_single_label_probe_skips_unreadable_images_and_reports_the_majority_chance(linear_eval, synthetic_coco,
                                                                                     tmp_path):
    dicts = [{"file_name": d["file_name"], "image_id": d["image_id"], "label": f"c{d['annotations'][0]['category_id']}"}
             for d in DatasetCatalog.get(synthetic_coco["name"])]
    dicts.append({"file_name": str(tmp_path / "missing.png"), "image_id": "missing", "label": "only_unreadable"})
    name = "synthetic_single_label"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: dicts)
    result = linear_eval.main(["--config-file", os.path.join(REPO, "configs", "demo", "oac_moco_r18_demo.yaml"),
                               "--random-init", "--task", "singlelabel", "--train-dataset", name, "--test-dataset",
                               name, "--resize", "64", "--crop", "64", "--epochs", "30"])
    labels = [d["label"] for d in dicts[:-1]]
    assert result["num_train"] == result["num_test"] == len(labels)  # the unreadable image is left out
    assert result["chance_top1"] == pytest.approx(max(labels.count(c) for c in set(labels)) / len(labels))


@pytest.mark.parametrize("task", ["multilabel", "objects"])
def test_probe_batchnorm_is_reestimated_at_the_probe_resolution(synthetic_coco, task):
    """Every BN of the frozen backbone gets the statistics of the training images as the probe preprocesses them."""
    from detectron2.data import DatasetCatalog

    cfg = get_pretrain_cfg(os.path.join(REPO, "configs", "demo", "oac_moco_r18_demo.yaml"))
    backbone = frozen_features.build_frozen_backbone(cfg, None, seed=0)
    stem_norm = backbone.stem.conv1.norm
    assert torch.all(stem_norm.running_mean == 0)  # a random init's unit statistics
    dicts = DatasetCatalog.get(synthetic_coco["name"])
    crop = None if task == "objects" else 64
    assert frozen_features.reestimate_probe_batchnorm(backbone, dicts, cfg, 64, crop, 4, 2, "cpu") == 4
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    # The stem's BN mean is the mean of its conv output over the 4 preprocessed training images.
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
    step = len(dicts) // 4
    import torchvision.transforms.v2.functional as TF

    images = [TF.resize(torch.from_numpy(np.array(Image.open(d["file_name"]).convert("RGB"))).permute(2, 0, 1),
                        [64], antialias=True) for d in dicts[::step][:4]]
    if crop:
        images = [TF.center_crop(image, [crop, crop]) for image in images]
    images = [(image.float() - mean) / std for image in images]
    conv = torch.nn.functional.conv2d(torch.stack(images), backbone.stem.conv1.weight, stride=2, padding=3)
    torch.testing.assert_close(stem_norm.running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)
