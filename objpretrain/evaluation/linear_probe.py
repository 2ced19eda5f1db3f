"""Linear probes on frozen features (OAC §3, Tables 2-4), and view retrieval, as ``tools/linear_eval.py`` runs them.

- multi-label (OHMS: each dict's ``labels``; COCO-style sets: the categories of ``annotations``): binary
  cross-entropy, mAP over the classes with a positive test image;
- single-label (a dict's ``label``, else the top folder of its ``image_id``): cross-entropy, top-1;
- objects (COCO-style sets): every annotated box is one sample, RoIAligned from res4 and res5; top-1;
- view retrieval: no probe; the top-1 rate of finding a held-out image's second augmented view from its first.

Every result reports its chance level (a constant score) and how BatchNorm statistics were set.
"""
import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import MetadataCatalog
from detectron2.utils import comm

from .frozen_features import (
    broadcast_buffers,
    cached_features,
    extract_features,
    extract_object_features,
    extract_sharded,
    reestimate_probe_batchnorm,
)
from .metrics import chance_top1, mean_average_precision, top1_accuracy
from .view_retrieval import make_retrieval_views, view_retrieval

__all__ = [
    "ProbeSettings",
    "class_indices",
    "linear_probe_result",
    "multilabel_targets",
    "num_classes_of",
    "retrieval_result",
    "singlelabel_names",
    "train_linear_probe",
]

logger = logging.getLogger(__name__)
TASKS = ("auto", "multilabel", "singlelabel", "objects", "retrieval")


@dataclass
class ProbeSettings:
    """How features are extracted and the probe is trained (tools/linear_eval.py's options of the same names)."""

    task: str = "auto"
    resize: int = 256
    crop: int = 224
    batch_size: int = 64  # feature extraction
    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    probe_batch_size: int = 256
    bn_stats: str = "reestimate"  # or "checkpoint"
    bn_images: int = 256
    seed: int = 0  # of the random init and of the probe
    device: str = "cpu"
    cache_dir: Optional[str] = None
    protocol: str = "ours"  # or "official": OAC's released main_lincls.py (official_linear_eval.py)
    workers: int = 0  # data-loading processes of the official protocol

    def __post_init__(self):
        if self.protocol not in ("ours", "official"):
            raise ValueError(f"protocol must be 'ours' or 'official', got {self.protocol!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.bn_stats not in ("reestimate", "checkpoint"):
            raise ValueError(f"bn_stats must be 'reestimate' or 'checkpoint', got {self.bn_stats!r}")


# ------------------------------------------------------------------------------------------ labels
def _dict_labels(d):
    return d["labels"] if "labels" in d else [a["category_id"] for a in d.get("annotations", [])]


def multilabel_targets(dataset_dicts, num_classes):
    """(N, C) {0, 1}: a dict's ``labels`` or the ``category_id`` of its annotations."""
    targets = np.zeros((len(dataset_dicts), num_classes), np.float32)
    for row, d in enumerate(dataset_dicts):
        for label in _dict_labels(d):
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
    labels = [label for d in dataset_dicts for label in _dict_labels(d)]
    if not labels:
        raise ValueError(f"dataset {dataset_name!r} has no labels or annotations for a multi-label probe")
    return max(labels) + 1


# ------------------------------------------------------------------------------------------ probe
def train_linear_probe(train_x, train_y, multilabel, epochs, lr, weight_decay, batch_size, seed=0):
    """A linear layer on standardized features (Adam, cosine lr); returns a function scoring new features."""
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


def _features(backbone, dataset_name, dataset_dicts, cfg, weights, settings):
    """(features, kept image indices), or for the object task (features, category ids); cached when asked."""
    objects = settings.task == "objects"
    if weights is None:
        source = f"random-init|{settings.seed}"
    else:
        stat = os.stat(weights)
        source = f"{os.path.abspath(weights)}|{stat.st_size}|{stat.st_mtime_ns}"
    key = (f"{source}|{objects}|{settings.resize}|{settings.crop}|{len(dataset_dicts)}|{cfg.MODEL.RESNETS.DEPTH}|"
           f"{settings.bn_stats}|{settings.bn_images}")

    def extract_block(dicts):
        if objects:
            return extract_object_features(backbone, dicts, cfg, settings.resize, settings.device)
        return extract_features(backbone, dicts, cfg, settings.resize, settings.crop, settings.batch_size,
                                settings.device)

    def extract():
        return extract_sharded(extract_block, dataset_dicts, second_is_index=not objects)

    return cached_features(extract, settings.cache_dir, dataset_name, key)


def linear_probe_result(backbone, cfg, weights, datasets, dicts, settings):
    """Trains the probe on ``dicts["train"]`` and scores ``dicts["test"]``; ``datasets`` names both splits.

    Returns the result dict (mAP with per-class APs and the chance mAP, or top-1 and the chance top-1); None on
    ranks other than 0 under ``launch``."""
    objects = settings.task == "objects"
    if settings.bn_stats == "reestimate":
        if comm.is_main_process():  # once, then every rank takes rank 0's statistics
            reestimate_probe_batchnorm(backbone, dicts["train"], cfg, settings.resize,
                                       None if objects else settings.crop, settings.bn_images, settings.batch_size,
                                       settings.device)
        broadcast_buffers(backbone.to(settings.device))
    multilabel = settings.task == "multilabel" or (
        settings.task == "auto" and any("labels" in d or "annotations" in d for d in dicts["train"][:100]))
    features = {split: _features(backbone, datasets[split], dicts[split], cfg, weights, settings) for split in dicts}
    if not comm.is_main_process():
        return None  # every rank helped extract; the probe is small, rank 0 trains and scores it
    if objects:
        targets = class_indices({split: features[split][1].tolist() for split in dicts}, "categories of boxes")
    elif multilabel:
        num_classes = num_classes_of(datasets["train"], dicts["train"])
        targets = {split: multilabel_targets(dicts[split], num_classes)[features[split][1]] for split in dicts}
    else:
        targets = class_indices({split: singlelabel_names(dicts[split]) for split in dicts}, "classes")
        targets = {split: targets[split][features[split][1]] for split in dicts}

    score = train_linear_probe(features["train"][0], targets["train"], multilabel, settings.epochs,
                               settings.lr, settings.weight_decay, settings.probe_batch_size, settings.seed)
    test_scores = score(features["test"][0])
    result = {"weights": weights or f"random init (seed {settings.seed})", "train_dataset": datasets["train"],
              "test_dataset": datasets["test"], "num_train": len(features["train"][1]),
              "num_test": len(features["test"][1]), "bn_stats": settings.bn_stats}
    if multilabel:
        result["mAP"], per_class = mean_average_precision(test_scores, targets["test"])
        result["AP_per_class"] = [None if np.isnan(ap) else ap for ap in per_class]
        # A score that ignores the image ties every test image, so each class's AP is its frequency: the level
        # a probe must exceed to have learned anything (with frequent classes it is far above 0).
        result["chance_mAP"], _ = mean_average_precision(np.zeros_like(test_scores), targets["test"])
        logger.info("linear probe mAP: %.2f over %d classes (chance %.2f)", 100 * result["mAP"],
                    sum(not np.isnan(a) for a in per_class), 100 * result["chance_mAP"])
    else:
        result["top1"] = top1_accuracy(test_scores, targets["test"])
        result["chance_top1"] = chance_top1(targets["test"])
        logger.info("linear probe top-1: %.2f (chance %.2f)", 100 * result["top1"], 100 * result["chance_top1"])
    return result


def retrieval_result(backbone, cfg, weights, dataset_name, dataset_dicts, settings):
    """View retrieval of the frozen backbone on the images (BatchNorm re-estimated on the views themselves)."""
    files = [d["file_name"] for d in dataset_dicts]
    views = make_retrieval_views(files, settings.crop, seed=0)  # the same views for every weights and seed
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, -1, 1, 1).to(settings.device)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, -1, 1, 1).to(settings.device)
    top1 = view_retrieval(backbone, lambda m, x: m(x)["res5"].mean(dim=(2, 3)), views,
                          lambda x: (x.to(settings.device).float() - mean) / std, device=settings.device)
    logger.info("view retrieval top-1: %.2f (chance %.2f)", 100 * top1, 100 * views.chance)
    return {"weights": weights or f"random init (seed {settings.seed})", "test_dataset": dataset_name,
            "num_test": len(views), "top1": top1, "chance_top1": views.chance,
            "bn_stats": "re-estimated on the retrieval views"}
