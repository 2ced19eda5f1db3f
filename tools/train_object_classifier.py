#!/usr/bin/env python
"""A supervised positive control for the probes of tools/linear_eval.py (docs/results.md).

A ResNet is trained with labels to classify the annotated objects of a COCO-style set from their crops. A probe
that finds pretrained features no better than random ones says something only if it can see better features
where there are some; this backbone, trained on the probe's training split and probed on the other split, is
that check. The output is a Detectron2 ResNet state dict (``{"model": ...}``), which linear_eval.py and
convert_ckpt.py read.

    python tools/train_object_classifier.py --config-file configs/demo/oac_byol_r18_demo.yaml \\
        --dataset study_train --epochs 8 --output output/object_classifier.pth \\
        DATASETS.COCO_JSON_REGISTER \\
        "('study_train:output/study/data/train/annotations.json:output/study/data/train/images',)"
"""
import argparse
import logging
import sys

import objpretrain  # noqa: F401  (first: registers components and silences a dependency's import warning)

# isort: split
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_backbone
from detectron2.structures import BoxMode

from objpretrain.config import get_pretrain_cfg
from objpretrain.data.datasets import register_datasets_from_cfg
from objpretrain.data.image_io import read_annotated_images
from objpretrain.utils.atomic_io import atomic_write

logger = logging.getLogger("train_object_classifier")


def object_crops(dataset_dicts, size, pixel_mean, pixel_std):
    """(crops (M, 3, size, size) normalized, category ids (M,)) of every non-crowd box of at least 1 x 1 px.

    Unreadable images are logged and skipped.
    """
    mean = torch.tensor(pixel_mean).view(-1, 1, 1)
    std = torch.tensor(pixel_std).view(-1, 1, 1)
    crops, labels = [], []
    for _, tensor, annotations in read_annotated_images(dataset_dicts, logger):
        for a in annotations:
            x0, y0, x1, y1 = (int(round(v)) for v in BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS))
            crop = tensor[:, max(y0, 0):y1, max(x0, 0):x1]
            if crop.shape[1] < 1 or crop.shape[2] < 1:
                continue
            crops.append((TF.resize(crop, [size, size], antialias=True).float() - mean) / std)
            labels.append(a["category_id"])
    if not crops:
        raise ValueError("no readable image with an annotated box in the dataset")
    return torch.stack(crops), torch.as_tensor(labels)


def train_classifier(backbone, crops, labels, epochs, lr, batch_size, seed=0):
    """Trains ``backbone`` (its res5, globally pooled) and a linear layer with cross-entropy, Adam; returns the
    training accuracy of every epoch."""
    torch.manual_seed(seed)
    classes, targets = torch.unique(labels, return_inverse=True)
    head = torch.nn.Linear(backbone.output_shape()["res5"].channels, len(classes))
    optimizer = torch.optim.Adam(list(backbone.parameters()) + list(head.parameters()), lr=lr)
    backbone.train()
    accuracies = []
    for epoch in range(epochs):
        correct = 0
        for batch in torch.randperm(len(crops)).split(batch_size):
            if len(batch) < 2:  # BatchNorm cannot train on one crop (at 32 px res5 is 1 x 1): a last odd crop waits
                continue
            logits = head(backbone(crops[batch])["res5"].mean(dim=(2, 3)))
            loss = F.cross_entropy(logits, targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct += (logits.argmax(dim=1) == targets[batch]).sum().item()
        accuracies.append(correct / len(crops))
        logger.info("epoch %d: loss %.3f, training accuracy %.3f", epoch, loss.item(), accuracies[-1])
    return accuracies


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a pretraining config (ResNet depth, pixel mean/std)")
    parser.add_argument("--dataset", required=True, help="registered COCO-style training set")
    parser.add_argument("--output", required=True, help="the trained ResNet, as {'model': state_dict}")
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    cfg = get_pretrain_cfg(args.config_file, args.opts)
    register_datasets_from_cfg(cfg)
    cfg.defrost()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    torch.manual_seed(args.seed)
    backbone = build_backbone(cfg)
    crops, labels = object_crops(DatasetCatalog.get(args.dataset), args.crop_size, cfg.MODEL.PIXEL_MEAN,
                                 cfg.MODEL.PIXEL_STD)
    accuracies = train_classifier(backbone, crops, labels, args.epochs, args.lr, args.batch_size, args.seed)
    atomic_write(args.output, lambda f: torch.save({"model": backbone.state_dict()}, f))
    print(f"{len(crops)} objects, training accuracy {accuracies[-1]:.3f}; wrote {args.output}")
    return accuracies


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
