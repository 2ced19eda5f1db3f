#!/usr/bin/env python
"""Builds OHMS, the OpenImages Hard Multi-object Subset (OAC §3), from OpenImages box annotations.

Keeps images with boxes of at least 2 distinct classes and classes with at least 900 such images (both rules
applied until stable; thresholds are options), writes the subset as JSON for
``objpretrain.data.datasets.ohms.register_ohms`` and prints the counts.

Examples:
    # the training subset (paper: 212,753 images, 208 classes)
    python tools/build_ohms.py --boxes oidv6-train-annotations-bbox.csv \\
        --class-descriptions class-descriptions-boxable.csv --output datasets/ohms/ohms_train.json
    # a validation split over the same classes, with image sizes so GT boxes become absolute
    python tools/build_ohms.py --boxes validation-annotations-bbox.csv \\
        --class-descriptions class-descriptions-boxable.csv --classes-from datasets/ohms/ohms_train.json \\
        --image-root datasets/openimages/validation --output datasets/ohms/ohms_val.json
"""
import argparse
import json
import logging
import os
import sys

from objpretrain.data.datasets.ohms import build_ohms_subset
from objpretrain.data.oac_mapper import oriented_image_size
from objpretrain.utils.atomic_io import atomic_write_json

logger = logging.getLogger("build_ohms")


def add_image_sizes(subset, image_root):
    """Adds ``height``/``width`` (EXIF-oriented, from the file header) to every image found under
    ``image_root``; missing or unreadable files are counted and left without a size."""
    missing = 0
    for image in subset["images"]:
        path = os.path.join(image_root, image["file_name"])
        try:
            height, width = oriented_image_size(path)
        except OSError as error:
            missing += 1
            if missing <= 10:
                logger.warning("no size for %s (%s)", path, error)
            continue
        image["height"], image["width"] = height, width
    subset["info"]["counts"]["images_without_size"] = missing


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", nargs="+", required=True, help="OpenImages box-annotation CSV file(s)")
    parser.add_argument("--class-descriptions", required=True, help="LabelName,DisplayName CSV (header optional)")
    parser.add_argument("--output", required=True, help="the OHMS JSON file to write")
    parser.add_argument("--min-classes-per-image", type=int, default=2, help="OAC §3: 2")
    parser.add_argument("--min-images-per-class", type=int, default=900, help="OAC §3: 900")
    parser.add_argument("--classes-from", help="an OHMS JSON whose classes to keep (for a validation split)")
    parser.add_argument("--image-root", help="read image sizes from here (enables absolute GT boxes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    for path in [*args.boxes, args.class_descriptions]:
        if not os.path.isfile(path):
            parser.error(f"{path}: no such file")
    classes = None
    if args.classes_from:
        with open(args.classes_from, encoding="utf-8") as f:
            classes = [c["label_name"] for c in json.load(f)["categories"]]
    subset = build_ohms_subset(args.boxes, args.class_descriptions, args.min_classes_per_image,
                               args.min_images_per_class, classes=classes)
    if args.image_root:
        add_image_sizes(subset, args.image_root)
    atomic_write_json(args.output, subset)
    counts = subset["info"]["counts"]
    width = max(len(k) for k in counts)
    print(f"OHMS subset written to {args.output}")
    for key, value in counts.items():
        print(f"  {key:<{width}}  {value}")
    if not subset["images"]:
        print("warning: the subset is empty; lower --min-images-per-class for small inputs", file=sys.stderr)
    return subset


if __name__ == "__main__":
    main()
