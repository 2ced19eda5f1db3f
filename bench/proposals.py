#!/usr/bin/env python
"""Speed (images/s per core) and ground-truth recall (IoU >= 0.5) of every proposal backend and preset.

Image sets: the demo photographs (``datasets/demo/unlabeled/skimage_*``, else scikit-image's bundled ones;
speed only, they have no boxes), the demo tree tiles (``demo_trees_val``, when datasets/prepare_demo.py has
run) and a synthetic COCO set (both with ground-truth boxes). The reference is the plain ``selectivesearch``
package at the paper's settings on the full-size image. Every method runs single-process (one core) through
the same pipeline as tools/generate_proposals.py (decode, propose, filters); recall is measured with the
size filter off (aspect-ratio filter and duplicate removal on), over all proposals an image keeps.

    python bench/proposals.py [--max-images 12] [--output table.md]
"""
import argparse
import os
import tempfile
import time

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

import objpretrain  # noqa: F401  (registers the demo datasets)
from objpretrain.data.datasets import demo_root, make_synthetic_coco
from objpretrain.data.datasets.image_folder import list_images
from objpretrain.data.proposals import get_recipe, pairwise_iou, process_image

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")

# (row label, preset, changes to the preset)
METHODS = [
    ("reference: selectivesearch, paper settings, full size", "soco_paper", {"max_input_size": None}),
    ("soco_paper (selectivesearch, 500 px)", "soco_paper", {}),
    ("soco_official (selectivesearch scale 300, min_size 100, 500 px)", "soco_official", {}),
    ("opencv_fast, 500 px", "opencv_fast", {}),
    ("opencv_fast, 256 px", "opencv_fast", {"max_input_size": 256}),
    ("opencv_quality, 500 px", "opencv_quality", {}),
    ("opencv_single (k 500, sigma 0.9, min_size 10), 500 px", "opencv_single", {}),
    ("opencv_single, 384 px", "opencv_single", {"max_input_size": 384}),
    ("opencv_single, 256 px", "opencv_single", {"max_input_size": 256}),
    ("opencv_tuned (default: single, k 200, min_size 30), 384 px", "opencv_tuned", {}),
    ("random (K=4)", "random", {}),
]


def photo_items(limit):
    folder = os.path.join(demo_root(), "unlabeled")
    if os.path.isdir(folder):
        paths = [p for p in list_images(folder) if os.path.basename(p).startswith("skimage_")]
        if paths:
            return [(os.path.splitext(os.path.basename(p))[0], p, None) for p in paths[:limit]]
    import skimage.data
    from PIL import Image

    out = tempfile.mkdtemp(prefix="bench_photos_")
    items = []
    for name in SKIMAGE_PHOTOS[:limit]:
        path = os.path.join(out, name + ".png")
        Image.fromarray(getattr(skimage.data, name)()).save(path)
        items.append((name, path, None))
    return items


def dataset_items(name, limit):
    items = []
    for d in DatasetCatalog.get(name)[:limit]:
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d.get("annotations", [])]
        items.append((str(d["image_id"]), d["file_name"], np.asarray(boxes, dtype=np.float64).reshape(-1, 4)))
    return items


def image_sets(limit):
    sets = {"photos": photo_items(limit)}
    trees_json = os.path.join(demo_root(), "trees", "annotations_val.json")
    if os.path.exists(trees_json):
        sets["trees"] = dataset_items("demo_trees_val", limit)
    synthetic = tempfile.mkdtemp(prefix="bench_synthetic_")
    json_path, image_root = make_synthetic_coco(synthetic, num_images=limit, image_size=256, seed=0)
    from detectron2.data.datasets import load_coco_json

    dicts = load_coco_json(json_path, image_root, dataset_name=None)
    sets["synthetic"] = [
        (str(d["image_id"]), d["file_name"],
         np.asarray([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]],
                    dtype=np.float64).reshape(-1, 4))
        for d in dicts
    ]
    return sets


def measure(recipe, items):
    backend = recipe.build_backend()
    matched = total = 0
    proposals = 0
    start = time.perf_counter()
    records = [process_image(backend, recipe, k, image_id, path) for k, (image_id, path, _) in enumerate(items)]
    seconds = time.perf_counter() - start
    for record, (_, _, gt) in zip(records, items):
        proposals += len(record["boxes"])
        if gt is None or not len(gt):
            continue
        total += len(gt)
        if record["boxes"]:
            matched += int((pairwise_iou(gt, record["boxes"]).max(axis=1) >= 0.5).sum())
    recall = matched / total if total else None
    return len(items) / seconds, recall, proposals / max(len(items), 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-images", type=int, default=12, help="images per set")
    parser.add_argument("--output", help="also write the markdown table here")
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)  # per-core numbers
    sets = image_sets(args.max_images)
    header = ["method"]
    for name, items in sets.items():
        header += [f"{name} img/s/core"] + ([f"{name} recall@0.5"] if items[0][2] is not None else [])
    header += ["proposals/img (all sets)"]
    rows = []
    for label, preset, changes in METHODS:
        recipe = get_recipe(preset).replace(filters={"min_size_ratio": None, "max_size_ratio": None}, **changes)
        row, counts = [label], []
        for name, items in sets.items():
            speed, recall, per_image = measure(recipe, items)
            counts.append(per_image)
            row.append(f"{speed:.2f}")
            if items[0][2] is not None:
                row.append(f"{recall:.3f}")
        row.append(f"{np.mean(counts):.0f}")
        rows.append(row)
        print(" | ".join(row), flush=True)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    sizes = ", ".join(f"{name}: {len(items)} images" for name, items in sets.items())
    table = "\n".join(lines) + f"\n\n({sizes})\n"
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
