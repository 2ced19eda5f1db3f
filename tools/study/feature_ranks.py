#!/usr/bin/env python
"""The effective rank (RankMe, ``objpretrain.modeling.health.effective_rank``) of a detector's image features per
ResNet stage (res2-res5) and FPN level (p2-p6), pooled over each held-out image, with BatchNorm on the batch's
statistics as fine-tuning runs it: the control that shows a pretrained module's dimensional collapse
(docs/results.md, "Detection transfer").

    python tools/study/feature_ranks.py --images output/demo/data/val/images random output/demo/soco_r18_fpn.pkl

Each WEIGHTS is a Detectron2 checkpoint (tools/convert_ckpt.py) or ``random`` (the detector's own initialization,
seed 0); one line per WEIGHTS.
"""
import argparse
import glob
import os
import sys

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import objpretrain  # noqa: F401  (registers the project's components)
from objpretrain.data.image_io import read_image_rgb
from objpretrain.engine.defaults import build_config
from objpretrain.modeling.health import effective_rank

# The study's fine-tuning detector, from the checkout (tools/study/ lives in it).
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "configs", "transfer", "faster_rcnn_r18_fpn_scenes_n8.yaml")


@torch.no_grad()
def feature_ranks(cfg, weights, images):
    """``{feature name: effective rank}`` of the detector of ``cfg`` loaded with ``weights`` ("random": none) over
    ``images`` (N, 3, H, W) float RGB in [0, 255], one pooled vector per image and feature."""
    torch.manual_seed(0)
    model = build_model(cfg)
    if weights != "random":
        DetectionCheckpointer(model).load(weights)
    model.train()  # BatchNorm on the batch's statistics, as in fine-tuning
    x = (images - model.pixel_mean) / model.pixel_std
    features = {**model.backbone.bottom_up(x), **model.backbone(x)}
    return {name: effective_rank(value.mean(dim=(2, 3))) for name, value in features.items()}


def read_images(folder, limit):
    files = sorted(glob.glob(os.path.join(folder, "*.png")) + glob.glob(os.path.join(folder, "*.jpg")))[:limit]
    if not files:
        sys.exit(f"no .png or .jpg images in {folder}")
    arrays = [read_image_rgb(f)[0] for f in files]  # (image, original size)
    if len({a.shape for a in arrays}) != 1:
        sys.exit(f"the images of {folder} differ in size; this control needs one size (the study's scenes)")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", help="Detectron2 checkpoints (.pkl / .pth) or 'random'")
    parser.add_argument("--images", required=True, help="a folder of same-size held-out images")
    parser.add_argument("--limit", type=int, default=128, help="at most this many images (sorted by name)")
    parser.add_argument("--config-file", default=CONFIG)
    args = parser.parse_args(argv)
    cfg = build_config(args.config_file, ["MODEL.DEVICE", "cpu"])
    images = read_images(args.images, args.limit)
    rows = {}
    for weights in args.weights:
        rows[weights] = feature_ranks(cfg, weights, images)
        print(weights + ": " + ", ".join(f"{k} {v:.1f}" for k, v in rows[weights].items()), flush=True)
    return rows


if __name__ == "__main__":
    main()
