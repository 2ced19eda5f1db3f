#!/usr/bin/env python
"""Builds datasets/demo/ from real photographs and real annotations that ship inside PyPI packages.

- ``unlabeled/``: colour and grayscale photographs bundled with scikit-image (public domain / CC0, see
  skimage/data/README.txt), the DeepForest sample images that have no annotations, and the tree tiles.
- ``trees/``: the DeepForest wheel's aerial images with hand-labelled tree crowns (VOC XML; DeepForest is MIT
  licensed), tiled to at most 512 px, converted to COCO json, split into train and val by tile.
- ``trees_voc/``: the same tiles and boxes in Pascal VOC layout (JPEG), for the VOC evaluator of the C4 chain.

The DeepForest wheel is fetched with ``pip download --no-deps`` (a package registry, never the open web) into
``datasets/downloads/``. Re-running is a no-op once ``datasets/demo/.complete`` matches this script's version.

Usage: python datasets/prepare_demo.py [--root datasets/demo] [--force]
"""
import argparse
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
from PIL import Image

logger = logging.getLogger("prepare_demo")

VERSION = "1"
HERE = os.path.dirname(os.path.abspath(__file__))
DEEPFOREST_WHEEL = "deepforest==2.1.0"
MAX_TILE = 512
# A box cut by a tile border is kept when at least this much of its area lies inside the tile.
MIN_VISIBLE_FRACTION = 0.5
MIN_BOX_SIDE = 4
# Every VAL_EVERY-th tile (in a fixed order) goes to val.
VAL_EVERY = 5
# The trees in Pascal VOC layout, beside the COCO json.
TREES_VOC = "trees_voc"
TREES_VOC_VERSION = "2"
SKIMAGE_PHOTOS = [
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg",
    "hubble_deep_field.jpg", "ihc.png", "camera.png", "coins.png", "moon.png", "brick.png",
]


def fetch_deepforest_data(download_dir):
    """Returns the folder holding ``deepforest/data`` extracted from the pip-downloaded wheel."""
    os.makedirs(download_dir, exist_ok=True)
    wheels = glob.glob(os.path.join(download_dir, "deepforest-*.whl"))
    if not wheels:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", download_dir, DEEPFOREST_WHEEL],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pip download {DEEPFOREST_WHEEL} failed:\n{result.stderr}")
        wheels = glob.glob(os.path.join(download_dir, "deepforest-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {DEEPFOREST_WHEEL} left no wheel in {download_dir}")
    extract_dir = os.path.join(download_dir, "deepforest_data")
    if not os.path.isdir(os.path.join(extract_dir, "deepforest", "data")):
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.startswith("deepforest/data/")]
            wheel.extractall(extract_dir, members)
    return os.path.join(extract_dir, "deepforest", "data")


def read_voc_boxes(xml_path):
    root = ET.parse(xml_path).getroot()
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        boxes.append([float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
    return root.findtext("filename"), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def tile_grid(length, max_tile):
    n = -(-length // max_tile)
    edges = np.linspace(0, length, n + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))


def boxes_in_tile(boxes, x0, y0, x1, y1):
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(x0, x1)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(y0, y1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (
        (visible >= MIN_VISIBLE_FRACTION * area)
        & (clipped[:, 2] - clipped[:, 0] >= MIN_BOX_SIDE)
        & (clipped[:, 3] - clipped[:, 1] >= MIN_BOX_SIDE)
    )
    return clipped[keep] - np.array([x0, y0, x0, y0])


def build_trees(data_dir, out_dir):
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    tiles = []
    for xml_path in sorted(glob.glob(os.path.join(data_dir, "*.xml"))):
        stem = os.path.splitext(os.path.basename(xml_path))[0]
        image_path = os.path.join(data_dir, stem + ".png")
        if not os.path.exists(image_path):
            logger.warning("No PNG for %s; skipped", xml_path)
            continue
        _, boxes = read_voc_boxes(xml_path)
        image = Image.open(image_path).convert("RGB")
        width, height = image.size
        for row, (y0, y1) in enumerate(tile_grid(height, MAX_TILE)):
            for col, (x0, x1) in enumerate(tile_grid(width, MAX_TILE)):
                file_name = f"{stem}_r{row}c{col}.png"
                image.crop((x0, y0, x1, y1)).save(os.path.join(image_dir, file_name))
                tiles.append((file_name, x1 - x0, y1 - y0, boxes_in_tile(boxes, x0, y0, x1, y1)))
    splits = {"train": [], "val": []}
    for index, tile in enumerate(tiles):
        splits["val" if index % VAL_EVERY == VAL_EVERY - 1 else "train"].append(tile)
    counts = {}
    for split, split_tiles in splits.items():
        images, annotations = [], []
        for image_id, (file_name, width, height, boxes) in enumerate(split_tiles, start=1):
            images.append({"id": image_id, "file_name": file_name, "width": int(width), "height": int(height)})
            for x0, y0, x1, y1 in boxes.tolist():
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
        with open(os.path.join(out_dir, f"annotations_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": annotations,
                       "categories": [{"id": 1, "name": "tree"}]}, f)
        counts[split] = (len(images), len(annotations))
    return counts


def build_trees_voc(trees_dir, out_dir):
    """The tree tiles again in Pascal VOC layout (JPEGImages/*.jpg, Annotations/*.xml, ImageSets/Main/{train,
    val}.txt), for the VOC evaluator of the C4 chain (configs/demo/finetune_trees_r18_c4.yaml). Boxes are
    written in VOC's 1-based pixel convention, which Detectron2's loader undoes."""
    for folder in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    for split in ("train", "val"):
        with open(os.path.join(trees_dir, f"annotations_{split}.json")) as f:
            coco = json.load(f)
        boxes = {image["id"]: [] for image in coco["images"]}
        for annotation in coco["annotations"]:
            boxes[annotation["image_id"]].append(annotation["bbox"])
        stems = []
        for image in coco["images"]:
            stem = os.path.splitext(image["file_name"])[0]
            stems.append(stem)
            Image.open(os.path.join(trees_dir, "images", image["file_name"])).convert("RGB").save(
                os.path.join(out_dir, "JPEGImages", stem + ".jpg"), quality=95)
            root = ET.Element("annotation")
            ET.SubElement(root, "filename").text = stem + ".jpg"
            size = ET.SubElement(root, "size")
            for key, value in (("width", image["width"]), ("height", image["height"]), ("depth", 3)):
                ET.SubElement(size, key).text = str(value)
            for x, y, w, h in boxes[image["id"]]:
                obj = ET.SubElement(root, "object")
                # Every field Detectron2's VOC evaluator reads (pascal_voc_evaluation.parse_rec).
                ET.SubElement(obj, "name").text = "tree"
                ET.SubElement(obj, "pose").text = "Unspecified"
                ET.SubElement(obj, "truncated").text = "0"
                ET.SubElement(obj, "difficult").text = "0"
                box = ET.SubElement(obj, "bndbox")
                corners = (round(x) + 1, round(y) + 1, round(x + w), round(y + h))
                for key, value in zip(("xmin", "ymin", "xmax", "ymax"), corners):
                    ET.SubElement(box, key).text = str(value)
            ET.ElementTree(root).write(os.path.join(out_dir, "Annotations", stem + ".xml"))
        with open(os.path.join(out_dir, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("".join(stem + "\n" for stem in stems))


def build_unlabeled(data_dir, trees_image_dir, out_dir):
    import skimage

    os.makedirs(out_dir, exist_ok=True)
    skimage_dir = os.path.join(os.path.dirname(skimage.__file__), "data")
    sources = [os.path.join(skimage_dir, name) for name in SKIMAGE_PHOTOS]
    sources += [os.path.join(data_dir, "SOAP_031.png"), os.path.join(data_dir, "AWPE Pigeon Lake 2020 DJI_0005.JPG")]
    count = 0
    for src in sources:
        if not os.path.exists(src):
            logger.warning("Missing bundled photograph %s; skipped", src)
            continue
        name = os.path.basename(src).replace(" ", "_")
        prefix = "skimage_" if src.startswith(skimage_dir) else "deepforest_"
        shutil.copyfile(src, os.path.join(out_dir, prefix + name))
        count += 1
    for tile in sorted(os.listdir(trees_image_dir)):
        shutil.copyfile(os.path.join(trees_image_dir, tile), os.path.join(out_dir, "trees_" + tile))
        count += 1
    return count


def ensure_trees_voc(root):
    """Adds the VOC copy of the trees to a demo folder built before it existed (kept beside its proposals)."""
    out_dir = os.path.join(root, TREES_VOC)
    marker = os.path.join(out_dir, ".complete")
    if os.path.exists(marker) and open(marker).read().strip() == TREES_VOC_VERSION:
        return
    staging = tempfile.mkdtemp(prefix=".voc-staging-", dir=root)
    build_trees_voc(os.path.join(root, "trees"), staging)
    with open(os.path.join(staging, ".complete"), "w") as f:
        f.write(TREES_VOC_VERSION)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)


def prepare(root, download_dir, force=False):
    marker = os.path.join(root, ".complete")
    if not force and os.path.exists(marker) and open(marker).read().strip() == VERSION:
        ensure_trees_voc(root)
        return root
    data_dir = fetch_deepforest_data(download_dir)
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".demo-staging-", dir=parent)
    counts = build_trees(data_dir, os.path.join(staging, "trees"))
    build_trees_voc(os.path.join(staging, "trees"), os.path.join(staging, TREES_VOC))
    with open(os.path.join(staging, TREES_VOC, ".complete"), "w") as f:
        f.write(TREES_VOC_VERSION)
    num_unlabeled = build_unlabeled(data_dir, os.path.join(staging, "trees", "images"),
                                    os.path.join(staging, "unlabeled"))
    with open(os.path.join(staging, "README.md"), "w") as f:
        f.write(
            "Built by datasets/prepare_demo.py. Sources: scikit-image's bundled photographs (public domain / CC0,"
            " see skimage/data/README.txt) and DeepForest's sample data (MIT license), from PyPI.\n"
        )
    with open(os.path.join(staging, ".complete"), "w") as f:
        f.write(VERSION)
    # Swap in the finished folder only at the end, so an interrupted run never leaves a half-built demo set.
    if os.path.exists(root):
        shutil.rmtree(root)
    os.replace(staging, root)
    print(f"demo data in {root}: {num_unlabeled} unlabeled images; trees (images, boxes): {counts}")
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(HERE, "demo"))
    parser.add_argument("--download-dir", default=os.path.join(HERE, "downloads"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    prepare(args.root, args.download_dir, args.force)


if __name__ == "__main__":
    main()
