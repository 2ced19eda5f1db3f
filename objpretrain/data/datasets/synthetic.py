"""Deterministic synthetic COCO-format detection sets: filled shapes with boxes and polygon masks.

Fast tests need labelled detection data that costs nothing to make and is the same on every machine. Each image
has a noisy background and 1-5 non-overlapping shapes (rectangle, ellipse, triangle), one category per shape
kind, so a detector can actually learn them in a few hundred CPU iterations.
"""
import json
import os

import numpy as np
from detectron2.data.datasets import register_coco_instances
from PIL import Image, ImageDraw

CATEGORIES = [
    {"id": 1, "name": "rectangle"},
    {"id": 2, "name": "ellipse"},
    {"id": 3, "name": "triangle"},
]


def shape_polygon(kind, x0, y0, x1, y1):
    """The outline of a ``kind`` ("rectangle", "triangle", else an ellipse of 24 points) filling the box
    (x0, y0, x1, y1): a list of (x, y) points."""
    if kind == "rectangle":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if kind == "triangle":
        return [((x0 + x1) / 2.0, y0), (x1, y1), (x0, y1)]
    cx, cy, rx, ry = (x0 + x1) / 2.0, (y0 + y1) / 2.0, (x1 - x0) / 2.0, (y1 - y0) / 2.0
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    return [(float(cx + rx * np.cos(a)), float(cy + ry * np.sin(a))) for a in angles]


def place_boxes(rng, image_size, num_shapes, min_side, max_side):
    """Up to ``num_shapes`` non-overlapping integer boxes (x0, y0, x1, y1) in a square image, sides drawn from
    [min_side, max_side] with ``rng`` (a NumPy Generator); fewer when num_shapes x 20 draws do not fit them."""
    boxes = []
    for _ in range(num_shapes * 20):
        if len(boxes) == num_shapes:
            break
        w, h = rng.integers(min_side, max_side + 1, size=2)
        x0 = int(rng.integers(0, image_size - w))
        y0 = int(rng.integers(0, image_size - h))
        box = (x0, y0, x0 + int(w), y0 + int(h))
        if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
            boxes.append(box)
    return boxes


def make_synthetic_coco(out_dir, num_images=8, image_size=128, seed=0, max_shapes=5):
    """Writes ``out_dir/images/*.png`` and ``out_dir/annotations.json``; returns ``(json_path, image_root)``.

    The same arguments always produce byte-identical files.
    """
    rng = np.random.default_rng(seed)
    image_root = os.path.join(out_dir, "images")
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    min_side, max_side = max(8, image_size // 8), max(12, image_size // 2)
    for image_id in range(1, num_images + 1):
        background = rng.integers(0, 90, size=(image_size, image_size, 3), dtype=np.uint8)
        image = Image.fromarray(background)
        draw = ImageDraw.Draw(image)
        boxes = place_boxes(rng, image_size, int(rng.integers(1, max_shapes + 1)), min_side, max_side)
        for box in boxes:
            category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            polygon = shape_polygon(category["name"], *box)
            color = tuple(int(c) for c in rng.integers(120, 256, size=3))
            draw.polygon(polygon, fill=color)
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category["id"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "segmentation": [[coord for point in polygon for coord in point]],
                    "iscrowd": 0,
                }
            )
        file_name = f"{image_id:06d}.png"
        image.save(os.path.join(image_root, file_name))
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
    json_path = os.path.join(out_dir, "annotations.json")
    with open(json_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return json_path, image_root


def register_synthetic_coco(name, out_dir, **kwargs):
    """Generates (if needed) and registers a synthetic set under ``name``; returns ``(json_path, image_root)``."""
    json_path = os.path.join(out_dir, "annotations.json")
    image_root = os.path.join(out_dir, "images")
    if not os.path.exists(json_path):
        json_path, image_root = make_synthetic_coco(out_dir, **kwargs)
    register_coco_instances(name, {}, json_path, image_root)
    return json_path, image_root
