"""Tiny unlabelled scenes shared by the pretraining tests: coloured rectangles on dark noise."""
import os

import numpy as np
from PIL import Image


def write_rectangle_scenes(folder, count=6, seed=0):
    """Writes ``scene_<i>.png`` (96x80, four rectangles each) into ``folder``; returns per image the
    rectangles as a float32 N x 4 XYXY array, usable as its proposals."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    boxes = []
    for index in range(count):
        image = (rng.rand(80, 96, 3) * 60).astype(np.uint8)
        rects = []
        for _ in range(4):
            x0, y0 = rng.randint(0, 56), rng.randint(0, 40)
            w, h = rng.randint(16, 40), rng.randint(16, 40)
            image[y0:y0 + h, x0:x0 + w] = rng.randint(80, 256, 3)
            rects.append([x0, y0, min(x0 + w, 96), min(y0 + h, 80)])
        Image.fromarray(image).save(os.path.join(folder, f"scene_{index}.png"))
        boxes.append(np.asarray(rects, dtype=np.float32))
    return boxes
