"""OAC's released linear evaluation (shlokk/object-cropping-ssl, ``main_lincls.py``), beside this project's probe.

Ours (``linear_probe.py``): features extracted once at ``resize``/``crop``, standardized, and a linear layer trained
on them with Adam and a cosine schedule. The released protocol, which produced the paper's numbers, trains the
linear layer under the frozen ResNet on fresh views every epoch:

- the ResNet in eval mode, so its checkpoint's BatchNorm statistics (``bn_stats="checkpoint"``; "reestimate"
  re-estimates them first, which the released script does not);
- a linear layer on the pooled res5, weights N(0, 0.01), bias 0; binary cross-entropy over the classes;
- each epoch, every training image as a RandomResizedCrop(``crop``) (scale 0.08-1) with a horizontal flip;
- SGD, lr 30, momentum 0.9, no weight decay, batch 256, lr x 0.1 at 60 % and 80 % of the epochs (60 and 80 of
  100, ``--schedule``);
- test images resized (shorter side ``resize``, 256) and centre-cropped (``crop``, 224).

It reports the batch-averaged mAP of the released script (``metrics.batch_mean_average_precision``: the number the
paper's tables compare) and, beside it, the mAP over the whole test set. The released script scores the test set
before each epoch's training and keeps the best value over epochs; this scores once, after the last epoch.
"""
import logging

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch import nn
from torchvision.transforms import v2 as T

from ..data.image_io import BadImageError, read_image_rgb
from .frozen_features import extract_features, pixel_stats, reestimate_probe_batchnorm
from .linear_probe import multilabel_targets, num_classes_of
from .metrics import batch_mean_average_precision, mean_average_precision

__all__ = ["OFFICIAL_LR", "official_linear_eval_result"]

logger = logging.getLogger(__name__)
OFFICIAL_LR = 30.0
OFFICIAL_MOMENTUM = 0.9
LR_STEPS = (0.6, 0.8)  # fractions of the epochs: --schedule 60 80 of --epochs 100


class _AugmentedImages(torch.utils.data.Dataset):
    """Normalized RandomResizedCrop + flip views of the dicts' images with their multi-label targets; an unreadable
    image gives None (logged), which the collate function drops."""

    def __init__(self, dataset_dicts, targets, crop, cfg):
        self.dicts, self.targets = dataset_dicts, targets
        self.augment = T.Compose([T.RandomResizedCrop(crop, antialias=True), T.RandomHorizontalFlip()])
        self.mean, self.std = pixel_stats(cfg)

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, index):
        try:
            image, _ = read_image_rgb(self.dicts[index]["file_name"])
        except BadImageError as error:
            logger.warning("skipping %s (%s)", self.dicts[index]["file_name"], error.reason)
            return None
        view = self.augment(torch.from_numpy(np.require(image, requirements="W")).permute(2, 0, 1))
        return (view.float() - self.mean) / self.std, torch.from_numpy(self.targets[index])


def _collate(items):
    items = [item for item in items if item is not None]
    return (torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])) if items else None


def official_linear_eval_result(backbone, cfg, weights, datasets, dicts, settings):
    """Trains and scores the released protocol's linear layer (module docstring); the result dict. One process."""
    if comm.get_world_size() > 1:
        raise ValueError("--protocol official runs in one process (it trains on fresh crops; use --num-gpus 1)")
    if settings.task not in ("auto", "multilabel"):
        raise ValueError(f"--protocol official is OAC's multi-label evaluation, not --task {settings.task}")
    device = settings.device
    if settings.bn_stats == "reestimate":
        reestimate_probe_batchnorm(backbone, dicts["train"], cfg, settings.resize, settings.crop, settings.bn_images,
                                   settings.batch_size, device)
    backbone.to(device).eval()
    num_classes = num_classes_of(datasets["train"], dicts["train"])
    targets = {split: multilabel_targets(dicts[split], num_classes) for split in dicts}

    torch.manual_seed(settings.seed)
    layer = nn.Linear(backbone.output_shape()["res5"].channels, num_classes).to(device)
    nn.init.normal_(layer.weight, mean=0.0, std=0.01)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.SGD(layer.parameters(), lr=settings.lr, momentum=OFFICIAL_MOMENTUM,
                                weight_decay=settings.weight_decay)
    steps = [round(fraction * settings.epochs) for fraction in LR_STEPS]
    loader = torch.utils.data.DataLoader(
        _AugmentedImages(dicts["train"], targets["train"], settings.crop, cfg), batch_size=settings.probe_batch_size,
        shuffle=True, num_workers=settings.workers, collate_fn=_collate,
        generator=torch.Generator().manual_seed(settings.seed))
    for epoch in range(settings.epochs):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * 0.1 ** sum(epoch >= step for step in steps)
        last_loss = float("nan")
        for batch in loader:
            if batch is None:
                continue
            images, labels = batch
            with torch.no_grad():
                features = backbone(images.to(device))["res5"].mean(dim=(2, 3))
            loss = F.binary_cross_entropy_with_logits(layer(features), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            last_loss = loss.item()
        logger.info("official linear evaluation: epoch %d/%d, last batch loss %.4f", epoch + 1, settings.epochs,
                    last_loss)

    test_features, kept = extract_features(backbone, dicts["test"], cfg, settings.resize, settings.crop,
                                           settings.batch_size, device)
    with torch.no_grad():
        scores = layer(torch.from_numpy(test_features).to(device)).cpu().numpy()
    test_targets = targets["test"][kept]
    batch_size = settings.probe_batch_size
    result = {
        "protocol": "official", "weights": weights or f"random init (seed {settings.seed})",
        "train_dataset": datasets["train"], "test_dataset": datasets["test"], "num_train": len(dicts["train"]),
        "num_test": len(kept), "bn_stats": settings.bn_stats, "lr": settings.lr, "lr_steps": steps,
        "batch_mAP": batch_mean_average_precision(scores, test_targets, batch_size),
        "mAP": mean_average_precision(scores, test_targets)[0],
        # A constant score (every image tied, scored as one threshold): the chance level, as for our probe. The
        # batch-averaged mAP has none: it breaks ties by the images' order.
        "chance_mAP": mean_average_precision(np.zeros_like(scores), test_targets)[0],
    }
    logger.info("official linear evaluation: batch-averaged mAP %.2f, whole-set mAP %.2f (chance %.2f)",
                100 * result["batch_mAP"], 100 * result["mAP"], 100 * result["chance_mAP"])
    return result
