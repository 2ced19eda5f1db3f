#!/usr/bin/env python
"""Draws proposals on images, before (left) and after (right) the filters, one PNG per image.

Examples:
    python tools/visualize_proposals.py --images datasets/demo/unlabeled --output-dir vis/ --num-images 8
    python tools/visualize_proposals.py --images demo_trees_val --method soco_paper --max-boxes 50 --output-dir vis/
"""
import argparse
import logging
import os
import sys

import numpy as np
from detectron2.utils.logger import setup_logger
from PIL import Image, ImageDraw

import objpretrain  # noqa: F401  (registers the demo datasets)
from objpretrain.data.image_io import BadImageError, read_image_rgb
from objpretrain.data.proposals import process_image, resolve_inputs
from objpretrain.data.proposals.cli import add_recipe_arguments, recipe_from_args

logger = logging.getLogger("objpretrain.visualize_proposals")


def draw_boxes(image, boxes, orig_size, max_boxes, seed):
    """The image with up to ``max_boxes`` boxes (a random, seeded subset; Figure 2 of SoCo does the same)."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rng = np.random.default_rng(seed)
    if len(boxes) > max_boxes:
        boxes = boxes[np.sort(rng.choice(len(boxes), max_boxes, replace=False))]
    scale = np.array([image.shape[1] / orig_size[1], image.shape[0] / orig_size[0]] * 2)
    for box in boxes * scale:
        color = tuple(int(c) for c in rng.integers(64, 256, size=3))
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=color, width=2)
    return np.asarray(canvas)


def render(record, image, max_boxes):
    orig_size = record["size"]
    before = draw_boxes(image, record.get("raw_boxes", []), orig_size, max_boxes, seed=0)
    after = draw_boxes(image, record["boxes"], orig_size, max_boxes, seed=1)
    gap = np.full((image.shape[0], 8, 3), 255, dtype=np.uint8)
    panel = Image.fromarray(np.concatenate([before, gap, after], axis=1))
    ImageDraw.Draw(panel).text((4, 4), f"before: {len(record.get('raw_boxes', []))}", fill=(255, 255, 0))
    ImageDraw.Draw(panel).text((image.shape[1] + 12, 4), f"after: {len(record['boxes'])}", fill=(255, 255, 0))
    return panel


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="image folder, list file or dataset name")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--root", help="for a list file: folder the image ids are relative to")
    parser.add_argument("--num-images", type=int, default=8, help="the first N images of the input")
    parser.add_argument("--max-boxes", type=int, default=30, help="boxes drawn per panel")
    parser.add_argument("--display-size", type=int, default=640, help="longer side of each drawn panel")
    add_recipe_arguments(parser)
    args = parser.parse_args(argv)
    setup_logger(name="objpretrain")
    recipe = recipe_from_args(args)
    backend = recipe.build_backend()
    os.makedirs(args.output_dir, exist_ok=True)
    for index, (image_id, path) in enumerate(resolve_inputs(args.images, root=args.root)[: args.num_images]):
        record = process_image(backend, recipe, index, image_id, path, keep_raw=True)
        if record["status"] != "ok":
            logger.warning("%s: %s (%s), not drawn", path, record["status"], record["reason"])
            continue
        try:
            image, _ = read_image_rgb(path, max_size=args.display_size)
        except BadImageError as e:
            logger.warning("%s: %s, not drawn", path, e.reason)
            continue
        out_path = os.path.join(args.output_dir, image_id.replace("/", "__") + ".png")
        render(record, image, args.max_boxes).save(out_path)
        logger.info("%s: %d proposals before filtering, %d after -> %s",
                    image_id, record["raw"], len(record["boxes"]), out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
