#!/usr/bin/env python
"""Writes Mini COCO (SoCo §4.5): seeded random 5% and 10% image subsets of COCO train2017 with their annotations.

    python tools/make_mini_coco.py                     # both, from and to $DETECTRON2_DATASETS/coco/annotations
    python tools/make_mini_coco.py --percent 5 --seed 1 --input path/to/instances_train2017.json --output mini.json

The default outputs are where ``coco_2017_train_mini5`` / ``coco_2017_train_mini10`` are registered
(objpretrain/data/datasets/coco_json.py), so the configs configs/finetune/mask_rcnn_R_50_FPN_1x_mini*.yaml
use them directly. The paper does not publish its subsets; the same seed always gives the same subset here.
"""
import argparse
import json
import os
import sys

import numpy as np

from objpretrain.data.datasets.coco_json import MINI_COCO_PERCENTS, mini_coco_json
from objpretrain.utils.atomic_io import atomic_write_json


def make_mini_coco(coco, percent, seed):
    """The COCO dict restricted to round(percent% of the images), drawn without replacement with ``seed``."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    images = sorted(coco["images"], key=lambda image: image["id"])
    count = max(1, int(round(len(images) * percent / 100.0)))
    chosen = np.random.default_rng(seed).choice(len(images), size=count, replace=False)
    kept_images = [images[i] for i in sorted(chosen)]
    kept_ids = {image["id"] for image in kept_images}
    subset = {key: value for key, value in coco.items() if key not in ("images", "annotations")}
    subset["images"] = kept_images
    subset["annotations"] = [a for a in coco.get("annotations", []) if a["image_id"] in kept_ids]
    return subset


def main(argv=None):
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=os.path.join(root, "coco", "annotations", "instances_train2017.json"),
                        help="COCO train2017 annotations")
    parser.add_argument("--percent", type=float, action="append",
                        help=f"subset size in percent of the images (repeatable; default {MINI_COCO_PERCENTS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="output json (one --percent only); default: where the dataset is registered")
    args = parser.parse_args(argv)
    percents = args.percent or list(MINI_COCO_PERCENTS)
    if args.output and len(percents) != 1:
        parser.error("--output needs exactly one --percent")
    try:
        with open(args.input) as f:
            coco = json.load(f)
    except (OSError, ValueError) as e:
        print(f"error: cannot read COCO annotations {args.input}: {e}", file=sys.stderr)
        return 1
    if not isinstance(coco, dict) or "images" not in coco:
        print(f"error: {args.input} is not a COCO annotation file (no 'images')", file=sys.stderr)
        return 1
    for percent in percents:
        subset = make_mini_coco(coco, percent, args.seed)
        tag = int(percent) if float(percent).is_integer() else percent
        output = args.output or mini_coco_json(root, tag)
        atomic_write_json(output, subset)
        print(f"{output}: {len(subset['images'])} of {len(coco['images'])} images ({percent}%, seed {args.seed}), "
              f"{len(subset['annotations'])} annotations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
