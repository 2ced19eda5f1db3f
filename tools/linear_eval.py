#!/usr/bin/env python
"""Linear probe on frozen pooled features (OAC §3, Tables 2-4: linear evaluation on OHMS, mAP over classes).

The ResNet of a pretraining checkpoint (``online_network.backbone.*``), of a converted Detectron2 ``.pkl``
or of a torchvision-layout ``.pth`` (anything ``objpretrain.checkpoint`` reads) is frozen; every image is
resized (shorter side ``--resize``), centre-cropped (``--crop``), and its res5 map global-average-pooled.
The features are extracted once and cached (``--cache-dir``), then a linear layer is trained on them:

- multi-label (OHMS: each dict's ``labels``; COCO-style sets: the categories of ``annotations``):
  binary cross-entropy, reported as mAP over the classes with a positive test image;
- single-label (a dict's ``label``, else the top folder of its ``image_id``, as in ImageNet-style trees):
  cross-entropy, reported as top-1 accuracy;
- view retrieval (``--task retrieval``): no probe is trained; two augmented views of each test image
  (``objpretrain.evaluation.view_retrieval``, at ``--crop`` px) and the top-1 rate of finding one from the other,
  the pretext task of image-level SSL measured on held-out images, as the pretraining health monitor does;
- objects (``--task objects``, COCO-style sets): every annotated box is one sample, its features RoIAligned
  from res4 and res5 of the whole resized image; cross-entropy over the categories, top-1. Not a protocol of
  either paper: it asks directly whether the frozen features tell objects apart, which is what object-level
  pretraining claims to improve, and it has far less noise than a short detector fine-tuning.

Every result also reports the chance level (a constant score), and ``--random-init`` probes a randomly
initialized ResNet: the two floors a pretrained backbone has to clear.

BatchNorm (``--bn-stats``): by default every backbone, random init included, has its BatchNorm statistics
re-estimated at the probe's own resolution, on up to ``--bn-images`` training images preprocessed as the probe
preprocesses them (``objpretrain.evaluation.view_retrieval.reestimate_batchnorm``), before features are
extracted in eval mode. Pretraining views are smaller than the probe's images (48-96 px against 128-256 px), and a
random init's statistics are the unit ones; ``--bn-stats checkpoint`` keeps the weights' own statistics. The result
records which was used.

Runs on CPU for small sets. Example:
    python tools/linear_eval.py --config-file configs/oac/moco_v2_r50_obj_obj_dilate.yaml \\
        --weights output/oac/moco_v2_r50_obj_obj_dilate/model_final.pth \\
        --train-dataset ohms_train --test-dataset ohms_val --output output/linear_eval_ohms.json
"""
import argparse
import hashlib
import json
import logging
import os
import sys

import objpretrain  # noqa: F401,I001  (first: registers components and silences a dependency's import warning)
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.ops import roi_align

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_backbone
from detectron2.structures import BoxMode

from objpretrain.checkpoint import convert_state_dict, load_state_dict
from objpretrain.config import get_pretrain_cfg
from objpretrain.data.datasets import register_datasets_from_cfg
from objpretrain.data.image_io import BadImageError, read_annotated_images, read_image_rgb
from objpretrain.evaluation.view_retrieval import make_retrieval_views, reestimate_batchnorm, view_retrieval
from objpretrain.utils.atomic_io import atomic_write

logger = logging.getLogger("linear_eval")


# ------------------------------------------------------------------------------------------ metrics
def average_precision(scores, labels):
    """Average precision of one class: sum over score thresholds of (R_k - R_{k-1}) * P_k, with tied scores
    forming one threshold (the definition of scikit-learn's ``average_precision_score``, no interpolation).

    Args:
        scores: (N,) real scores; labels: (N,) in {0, 1}.

    Returns:
        AP in [0, 1], or NaN when there is no positive.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be equal-length vectors")
    if labels.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    true_positives = np.cumsum(labels)
    false_positives = np.cumsum(1 - labels)
    # The last index of every run of equal scores: one operating point per distinct threshold.
    thresholds = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp, fp = true_positives[thresholds], false_positives[thresholds]
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores, labels):
    """Mean of :func:`average_precision` over the columns (classes) that have a positive; (N, C) inputs."""
    aps = [average_precision(scores[:, c], labels[:, c]) for c in range(labels.shape[1])]
    valid = [ap for ap in aps if not np.isnan(ap)]
    if not valid:
        raise ValueError("no class has a positive example in the evaluation set")
    return float(np.mean(valid)), aps


def top1_accuracy(scores, labels):
    return float((np.asarray(scores).argmax(axis=1) == np.asarray(labels)).mean())


# ------------------------------------------------------------------------------------------ labels
def multilabel_targets(dataset_dicts, num_classes):
    """(N, C) {0, 1}: a dict's ``labels`` or the ``category_id`` of its annotations."""
    targets = np.zeros((len(dataset_dicts), num_classes), np.float32)
    for row, d in enumerate(dataset_dicts):
        labels = d["labels"] if "labels" in d else [a["category_id"] for a in d.get("annotations", [])]
        for label in labels:
            if not 0 <= label < num_classes:
                raise ValueError(f"{d['file_name']}: label {label} outside 0..{num_classes - 1}")
            targets[row, label] = 1
    return targets


def singlelabel_names(dataset_dicts):
    """One class name per dict: its ``label``, else the first folder of its ``image_id``."""
    names = []
    for d in dataset_dicts:
        if "label" in d:
            names.append(str(d["label"]))
        elif "/" in str(d.get("image_id", "")):
            names.append(str(d["image_id"]).split("/")[0])
        else:
            raise ValueError(f"{d['file_name']}: no 'label' and no class folder in image_id {d.get('image_id')!r}")
    return names


def class_indices(labels, what):
    """``{split: array of indices into the sorted training labels}`` for ``labels = {"train": [...], "test":
    [...]}``; raises when a test label never occurs in training (the probe could not predict it)."""
    classes = sorted(set(labels["train"]))
    unknown = sorted(set(labels["test"]) - set(classes))
    if unknown:
        raise ValueError(f"test {what} absent from the training set: {unknown[:5]}")
    index = {c: i for i, c in enumerate(classes)}
    return {split: np.asarray([index[v] for v in values], dtype=np.int64) for split, values in labels.items()}


def num_classes_of(dataset_name, dataset_dicts):
    classes = MetadataCatalog.get(dataset_name).get("thing_classes")
    if classes:
        return len(classes)
    labels = [label for d in dataset_dicts
              for label in (d["labels"] if "labels" in d else [a["category_id"] for a in d.get("annotations", [])])]
    if not labels:
        raise ValueError(f"dataset {dataset_name!r} has no labels or annotations for a multi-label probe")
    return max(labels) + 1


# ------------------------------------------------------------------------------------------ features
def build_frozen_backbone(cfg, weights, seed=0):
    """A Detectron2 ResNet (to res5) with ``weights`` loaded; every backbone tensor must be present.

    ``weights=None`` keeps Detectron2's random initialization (drawn with ``seed``): the floor that a pretrained
    backbone has to beat.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4", "res5"]
    torch.manual_seed(seed)
    backbone = build_backbone(cfg)
    if weights is None:
        return backbone.eval().requires_grad_(False)
    conversion = convert_state_dict(load_state_dict(weights), "d2-backbone")
    incompatible = backbone.load_state_dict(conversion.state_dict, strict=False)
    missing = [k for k in incompatible.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or incompatible.unexpected_keys:
        raise ValueError(f"{weights}: does not fit the config's ResNet (missing {missing[:5]}, unexpected "
                         f"{incompatible.unexpected_keys[:5]}); check MODEL.RESNETS.DEPTH / STRIDE_IN_1X1")
    return backbone.eval().requires_grad_(False)


def preprocess(path, resize, crop, mean, std):
    image, _ = read_image_rgb(path)
    tensor = torch.from_numpy(np.require(image, requirements="W")).permute(2, 0, 1)
    tensor = TF.center_crop(TF.resize(tensor, [resize], antialias=True), [crop, crop])
    return (tensor.float() - mean) / std


@torch.no_grad()
def extract_features(backbone, dataset_dicts, cfg, resize, crop, batch_size, device):
    """(features (N', C), kept indices): pooled res5 per readable image; unreadable ones are logged, skipped."""
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
    backbone.to(device)
    features, kept, batch, batch_indices = [], [], [], []

    def flush():
        if batch:
            res5 = backbone(torch.stack(batch).to(device))["res5"]
            features.append(res5.mean(dim=(2, 3)).cpu())
            kept.extend(batch_indices)
            batch.clear()
            batch_indices.clear()

    for index, d in enumerate(dataset_dicts):
        try:
            batch.append(preprocess(d["file_name"], resize, crop, mean, std))
            batch_indices.append(index)
        except BadImageError as error:
            logger.warning("skipping %s (%s)", d["file_name"], error.reason)
            continue
        if len(batch) == batch_size:
            flush()
    flush()
    if not features:
        raise ValueError("no readable image in the dataset")
    skipped = len(dataset_dicts) - len(kept)
    if skipped:
        logger.warning("%d of %d images could not be read and were left out", skipped, len(dataset_dicts))
    return torch.cat(features).numpy(), np.asarray(kept)


@torch.no_grad()
def extract_object_features(backbone, dataset_dicts, cfg, resize, device):
    """(features (M, C), category ids (M,)): one vector per annotated box of the readable images.

    The image is resized (shorter side ``resize``, not cropped, so that every box stays whole) and each box is
    RoIAligned to 1 x 1 from res4 and from res5, concatenated: objects of 12 px cover less than one res5 cell,
    and FPN detectors read such objects from the finer level too. Images without boxes add nothing; unreadable
    ones are logged and skipped.
    """
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
    strides = {name: backbone.output_shape()[name].stride for name in ("res4", "res5")}
    backbone.to(device)
    features, labels = [], []
    for _, tensor, annotations in read_annotated_images(dataset_dicts, logger):
        scale = resize / min(tensor.shape[1:])
        tensor = (TF.resize(tensor, [resize], antialias=True).float() - mean) / std
        maps = backbone(tensor[None].to(device))
        boxes = torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations],
                             dtype=torch.float32) * scale
        rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1).to(device)
        pooled = [roi_align(maps[name], rois, 1, 1.0 / stride, sampling_ratio=2, aligned=True).flatten(1)
                  for name, stride in strides.items()]
        features.append(torch.cat(pooled, dim=1).cpu())
        labels.extend(a["category_id"] for a in annotations)
    if not features:
        raise ValueError("no readable image with an annotated box in the dataset")
    return torch.cat(features).numpy(), np.asarray(labels)


@torch.no_grad()
def reestimate_probe_batchnorm(backbone, dataset_dicts, cfg, args):
    """Re-estimates the backbone's BatchNorm statistics on up to ``args.bn_images`` training images at the probe's
    resolution (module docstring); returns the number of images used."""
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
    step = max(1, len(dataset_dicts) // max(args.bn_images, 1))
    images = []
    for d in dataset_dicts[::step][: args.bn_images]:
        try:
            if args.task == "objects":  # the whole resized image, as extract_object_features sees it
                image, _ = read_image_rgb(d["file_name"])
                tensor = torch.from_numpy(np.require(image, requirements="W")).permute(2, 0, 1)
                images.append((TF.resize(tensor, [args.resize], antialias=True).float() - mean) / std)
            else:
                images.append(preprocess(d["file_name"], args.resize, args.crop, mean, std))
        except BadImageError as error:
            logger.warning("BatchNorm re-estimation: skipping %s (%s)", d["file_name"], error.reason)
    if not images:
        raise ValueError("no readable training image to re-estimate the BatchNorm statistics on")
    backbone.to(args.device)
    same_size = len({tuple(x.shape) for x in images}) == 1
    batches = torch.stack(images).split(args.batch_size) if same_size else [x[None] for x in images]
    reestimate_batchnorm(backbone, [lambda b=b: backbone(b.to(args.device)) for b in batches])
    backbone.requires_grad_(False)
    logger.info("BatchNorm statistics re-estimated on %d training images at the probe's resolution", len(images))
    return len(images)


def cached_features(backbone, dataset_name, dataset_dicts, cfg, args):
    """Features of ``dataset_name``, read from / written to ``args.cache_dir`` (keyed by weights and sizes).

    Returns (features, kept image indices), or for ``--task objects`` (features, category ids).
    """
    cache = None
    if args.cache_dir:
        if args.weights is None:
            source = f"random-init|{args.seed}"
        else:
            stat = os.stat(args.weights)
            source = f"{os.path.abspath(args.weights)}|{stat.st_size}|{stat.st_mtime_ns}"
        key = f"{source}|{args.task == 'objects'}|{args.resize}|{args.crop}|{len(dataset_dicts)}|" \
              f"{cfg.MODEL.RESNETS.DEPTH}|{args.bn_stats}|{args.bn_images}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        cache = os.path.join(args.cache_dir, f"{dataset_name}_{digest}.npz")
        if os.path.isfile(cache):
            logger.info("features of %s from %s", dataset_name, cache)
            data = np.load(cache)
            return data["features"], data["kept"]
    if args.task == "objects":
        features, kept = extract_object_features(backbone, dataset_dicts, cfg, args.resize, args.device)
    else:
        features, kept = extract_features(backbone, dataset_dicts, cfg, args.resize, args.crop, args.batch_size,
                                          args.device)
    if cache:
        atomic_write(cache, lambda f: np.savez(f, features=features, kept=kept))
    return features, kept


# ------------------------------------------------------------------------------------------ probe
def train_linear_probe(train_x, train_y, multilabel, epochs, lr, weight_decay, batch_size, seed=0):
    """A linear layer on standardized features; returns a function scoring new features."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    x = torch.from_numpy((train_x - mean) / std).float()
    y = torch.from_numpy(train_y).float() if multilabel else torch.from_numpy(train_y).long()
    num_outputs = train_y.shape[1] if multilabel else int(train_y.max()) + 1
    layer = torch.nn.Linear(x.shape[1], num_outputs)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(batch_size):
            logits = layer(x[batch])
            loss = (F.binary_cross_entropy_with_logits(logits, y[batch]) if multilabel
                    else F.cross_entropy(logits, y[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()

    @torch.no_grad()
    def score(features):
        return layer(torch.from_numpy((features - mean) / std).float()).numpy()

    return score


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the pretraining config (ResNet depth, pixel mean/std)")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", help="pretraining .pth, converted .pkl or torchvision .pth")
    weights.add_argument("--random-init", action="store_true",
                         help="probe a randomly initialized ResNet instead (the floor for pretrained weights)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialization and of the probe")
    parser.add_argument("--train-dataset", required=True)
    parser.add_argument("--test-dataset", required=True)
    parser.add_argument("--task", choices=("auto", "multilabel", "singlelabel", "objects", "retrieval"),
                        default="auto",
                        help="auto: multi-label when the dicts have 'labels' or 'annotations'; objects: classify "
                             "each annotated box from its RoIAligned res4 + res5 features (top-1); retrieval: find "
                             "each test image's second augmented view (top-1), no probe trained")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64, help="feature extraction batch")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--probe-batch-size", type=int, default=256)
    parser.add_argument("--bn-stats", choices=("reestimate", "checkpoint"), default="reestimate",
                        help="re-estimate BatchNorm statistics at the probe's resolution (default), or keep the "
                             "weights' own")
    parser.add_argument("--bn-images", type=int, default=256, help="training images for the re-estimation")
    parser.add_argument("--cache-dir", help="cache extracted features here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="write the result as JSON here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    cfg = get_pretrain_cfg(args.config_file, args.opts)
    register_datasets_from_cfg(cfg)
    backbone = build_frozen_backbone(cfg, args.weights, args.seed)
    dicts = {split: DatasetCatalog.get(name) for split, name in
             (("train", args.train_dataset), ("test", args.test_dataset))}
    if args.task == "retrieval":
        return write_result(args, retrieval_result(backbone, dicts["test"], cfg, args))
    objects = args.task == "objects"
    if args.bn_stats == "reestimate":
        reestimate_probe_batchnorm(backbone, dicts["train"], cfg, args)
    multilabel = args.task == "multilabel" or (
        args.task == "auto" and any("labels" in d or "annotations" in d for d in dicts["train"][:100]))
    features = {}
    for split, name in (("train", args.train_dataset), ("test", args.test_dataset)):
        features[split] = cached_features(backbone, name, dicts[split], cfg, args)

    if objects:
        targets = class_indices({split: features[split][1].tolist() for split in dicts}, "categories of boxes")
    elif multilabel:
        num_classes = num_classes_of(args.train_dataset, dicts["train"])
        targets = {split: multilabel_targets(dicts[split], num_classes)[features[split][1]] for split in dicts}
    else:
        targets = class_indices({split: singlelabel_names(dicts[split]) for split in dicts}, "classes")
        targets = {split: targets[split][features[split][1]] for split in dicts}

    score = train_linear_probe(features["train"][0], targets["train"], multilabel, args.epochs, args.lr,
                               args.weight_decay, args.probe_batch_size, args.seed)
    test_scores = score(features["test"][0])
    result = {"weights": args.weights or f"random init (seed {args.seed})", "train_dataset": args.train_dataset,
              "test_dataset": args.test_dataset,
              "num_train": len(features["train"][1]), "num_test": len(features["test"][1]),
              "bn_stats": args.bn_stats}
    if multilabel:
        result["mAP"], per_class = mean_average_precision(test_scores, targets["test"])
        result["AP_per_class"] = [None if np.isnan(ap) else ap for ap in per_class]
        # A score that ignores the image ties every test image, so each class's AP is its frequency: the level
        # a probe must exceed to have learned anything (with frequent classes it is far above 0).
        result["chance_mAP"], _ = mean_average_precision(np.zeros_like(test_scores), targets["test"])
        print(f"linear probe mAP: {100 * result['mAP']:.2f} over {sum(not np.isnan(a) for a in per_class)} classes "
              f"(chance {100 * result['chance_mAP']:.2f})")
    else:
        result["top1"] = top1_accuracy(test_scores, targets["test"])
        result["chance_top1"] = float(np.bincount(targets["test"]).max() / len(targets["test"]))  # the majority class
        print(f"linear probe top-1: {100 * result['top1']:.2f} (chance {100 * result['chance_top1']:.2f})")
    return write_result(args, result)


def retrieval_result(backbone, dataset_dicts, cfg, args):
    """View retrieval of the frozen backbone on the test images (BatchNorm re-estimated on the views themselves)."""
    files = [d["file_name"] for d in dataset_dicts]
    views = make_retrieval_views(files, args.crop, seed=0)  # the same views for every weights and --seed
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, -1, 1, 1).to(args.device)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, -1, 1, 1).to(args.device)
    top1 = view_retrieval(backbone, lambda m, x: m(x)["res5"].mean(dim=(2, 3)), views,
                          lambda x: (x.to(args.device).float() - mean) / std, device=args.device)
    print(f"view retrieval top-1: {100 * top1:.2f} (chance {100 * views.chance:.2f})")
    return {"weights": args.weights or f"random init (seed {args.seed})", "test_dataset": args.test_dataset,
            "num_test": len(views), "top1": top1, "chance_top1": views.chance,
            "bn_stats": "re-estimated on the retrieval views"}


def write_result(args, result):
    if args.output:
        atomic_write(args.output, lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
