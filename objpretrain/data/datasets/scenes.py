"""Procedural multi-object scenes: textured objects of several classes at several scales on cluttered backgrounds.

The reproduction study (tools/run_study.py) needs many-object images whose object identity is carried by shape
*and* texture rather than by colour, so that a representation has to look at the object (what object-level
pretraining is meant to help with) and whole-image statistics are not enough. Classes are the product of
``SHAPES`` and ``TEXTURES``; every object gets a random colour pair, size and position; the background holds
unlabelled clutter (line segments and small blobs) with the same colours and textures as objects.
Deterministic: the same arguments always give byte-identical files.

With ``class_textures=True`` (the learning-regime study, docs/results.md) what survives the augmentations is
class-determined: every object of a class has the same texture period and orientation (:data:`CLASS_TEXTURES`,
orientations a horizontal flip leaves unchanged), only its two colours are random per object, so colour carries no
class information. With 8-16 objects of mixed classes per scene, a whole-image crop mixes classes while an object
crop isolates one.
"""
import json
import os

import numpy as np
from PIL import Image, ImageDraw

from .synthetic import place_boxes, shape_polygon

SHAPES = ("rectangle", "ellipse", "triangle")
TEXTURES = ("stripes", "checker")
CATEGORIES = [
    {"id": 1 + i * len(TEXTURES) + j, "name": f"{shape}_{texture}"}
    for i, shape in enumerate(SHAPES)
    for j, texture in enumerate(TEXTURES)
]


# category name -> (texture period in px of a 128-px scene, stripe direction in radians) when class_textures=True.
# Periods stay >= 3 px after the study's 2x shrink; 0 and pi/2 are the stripe directions a flip keeps.
CLASS_TEXTURES = {
    "rectangle_stripes": (6, 0.0),
    "rectangle_checker": (12, 0.0),
    "ellipse_stripes": (12, np.pi / 2),
    "ellipse_checker": (6, 0.0),
    "triangle_stripes": (8, np.pi / 2),
    "triangle_checker": (9, 0.0),
}

# Both colours of every object when gray=True: what survives the augmentations is then shape, texture and layout.
GRAY_OBJECT_COLORS = np.array([[30, 30, 30], [220, 220, 220]])


def _texture(rng, kind, height, width, colors, period=None, angle=None):
    yy, xx = np.mgrid[0:height, 0:width]
    period = int(rng.integers(4, 9)) if period is None else period
    if kind == "stripes":
        angle = rng.uniform(0, np.pi) if angle is None else angle
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) // (period / 2.0)
    else:
        phase = xx // (period / 2.0) + yy // (period / 2.0)
    select = (phase.astype(np.int64) % 2)[..., None]
    return np.where(select == 1, colors[0], colors[1]).astype(np.uint8)


def _clutter(rng, image, count, gray=False):
    draw = ImageDraw.Draw(image)
    size = image.size[0]
    for _ in range(count):
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if gray:
            color = (color[0],) * 3
        x0, y0 = rng.integers(0, size, size=2)
        if rng.random() < 0.5:
            x1, y1 = rng.integers(0, size, size=2)
            draw.line([(int(x0), int(y0)), (int(x1), int(y1))], fill=color, width=int(rng.integers(1, 3)))
        else:
            r = int(rng.integers(1, max(2, size // 32)))
            draw.ellipse([int(x0) - r, int(y0) - r, int(x0) + r, int(y0) + r], fill=color)


def make_scene_coco(out_dir, num_images=64, image_size=128, seed=0, min_objects=3, max_objects=8, clutter=24,
                    class_textures=False, side_range=None, gray=False):
    """Writes ``out_dir/images/*.png`` and ``out_dir/annotations.json`` (boxes and polygon masks).

    ``class_textures``: texture period and orientation fixed per class (module docstring); ``side_range``:
    (min, max) object side in pixels (default image_size / 10 to image_size / 2); ``gray``: no colour at all, every
    object drawn in the same dark and light gray (:data:`GRAY_OBJECT_COLORS`), background and clutter gray. Objects
    do not overlap, so a scene may hold fewer than ``max_objects`` when they do not fit. Returns
    ``(json_path, image_root)``.
    """
    rng = np.random.default_rng(seed)
    image_root = os.path.join(out_dir, "images")
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    min_side, max_side = side_range or (max(8, image_size // 10), max(16, image_size // 2))
    for image_id in range(1, num_images + 1):
        base = rng.integers(40, 160, size=3)
        noise = rng.normal(0, 25, size=(image_size, image_size, 3))
        if gray:
            base, noise = base[:1], noise[..., :1]
        background = np.clip(base + noise, 0, 255).astype(np.uint8)
        image = Image.fromarray(np.broadcast_to(background, (image_size, image_size, 3)).copy())
        _clutter(rng, image, clutter, gray)
        canvas = np.array(image)
        num = int(rng.integers(min_objects, max_objects + 1))
        for box in place_boxes(rng, image_size, num, min_side, max_side):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
            category_id = 1 + SHAPES.index(shape) * len(TEXTURES) + TEXTURES.index(texture)
            polygon = shape_polygon(shape, *box)
            mask_image = Image.new("L", (image_size, image_size), 0)
            ImageDraw.Draw(mask_image).polygon(polygon, fill=1)
            mask = np.array(mask_image, dtype=bool)
            colors = rng.integers(0, 256, size=(2, 3))
            if gray:
                colors = GRAY_OBJECT_COLORS
            period, angle = CLASS_TEXTURES[f"{shape}_{texture}"] if class_textures else (None, None)
            if period is not None:
                period = max(3, round(period * image_size / 128))
            canvas[mask] = _texture(rng, texture, image_size, image_size, colors, period, angle)[mask]
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(mask.sum()),
                    "segmentation": [[coord for point in polygon for coord in point]],
                    "iscrowd": 0,
                }
            )
        file_name = f"{image_id:06d}.png"
        Image.fromarray(canvas).save(os.path.join(image_root, file_name))
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
    json_path = os.path.join(out_dir, "annotations.json")
    with open(json_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return json_path, image_root
