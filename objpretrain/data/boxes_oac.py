"""Box geometry for object-aware cropping (OAC §4.1, §4.2.2, §5).

All boxes are XYXY in absolute pixels of the (EXIF-corrected) image. Crops are integer pixel rectangles
``(x0, y0, x1, y1)`` with exclusive ends, so ``image[y0:y1, x0:x1]`` is the crop.
"""
import math

import numpy as np

__all__ = [
    "average_box_fraction",
    "crop_scale_min",
    "DILATION_MODES",
    "dilate_box",
    "localization_target",
    "pixel_region",
    "sample_crop_in_region",
    "widen_small_box_official",
]


DILATION_MODES = ("paper", "official")


def dilate_box(box, dilation, image_height, image_width, mode="paper"):
    """Grows ``box`` by the dilation delta, clipped to the image (OAC §4.1, ``INPUT.OAC.DILATION_MODE``).

    - "paper": "We dilate the box by 10% or 20% of the image size": each side moves out by ``dilation *
      image_width`` horizontally and ``dilation * image_height`` vertically.
    - "official": the released code (``extract_bb`` in datasets/openimages_dataset_bing.py) scales each
      coordinate about the image origin, ``x0 - int(x0 * dilation)`` and ``x1 + int(x1 * dilation)`` (y alike),
      so a box grows by delta times its distance from the top-left corner: less near that corner, and at delta 0.1
      about half as much as the paper's rule on average. The released code crops past the image edge (PIL fills it
      with black); here the box is clipped as in "paper".
    """
    if dilation < 0:
        raise ValueError(f"INPUT.OAC.DILATION must be >= 0, got {dilation}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if mode == "paper":
        dx, dy = dilation * image_width, dilation * image_height
        x0, y0, x1, y1 = x0 - dx, y0 - dy, x1 + dx, y1 + dy
    elif mode == "official":
        x0, y0 = x0 - int(x0 * dilation), y0 - int(y0 * dilation)
        x1, y1 = x1 + int(x1 * dilation), y1 + int(y1 * dilation)
    else:
        raise ValueError(f"INPUT.OAC.DILATION_MODE must be one of {DILATION_MODES}, got {mode!r}")
    return np.array([max(0.0, x0), max(0.0, y0), min(float(image_width), x1), min(float(image_height), y1)],
                    dtype=np.float32)


def widen_small_box_official(box, min_side, image_height, image_width):
    """The released OAC code's minimum crop (``extract_bb``, datasets/openimages_dataset_bing.py, with 224), per
    axis: a box narrower than ``min_side`` first moves its low edge out by ``min_side / 2`` (or, when that would
    leave the image, becomes ``[0, min_side]``), then its high edge out by ``min_side / 2`` (or, when that would
    leave the image, the low edge moves to ``high - min_side``). As released, a box at the low border therefore
    ends 1.5 x ``min_side`` wide. Clipped to the image at the end (the released code crops past the edge, which PIL
    fills with black). The paper (§4.1) has no such rule; ``min_side`` 0 leaves the box as it is."""
    if min_side < 0:
        raise ValueError(f"INPUT.OAC.MIN_BOX_SIDE must be >= 0, got {min_side}")
    x0, y0, x1, y1 = (float(v) for v in box)
    half = min_side / 2.0

    def widen(lo, hi, size):
        if hi - lo >= min_side:
            return lo, hi
        lo, hi = (lo - half, hi) if lo - half > 0 else (0.0, float(min_side))
        return (lo, hi + half) if hi + half < size else (hi - min_side, hi)

    (x0, x1), (y0, y1) = widen(x0, x1, image_width), widen(y0, y1, image_height)
    return np.array([max(0.0, x0), max(0.0, y0), min(float(image_width), x1), min(float(image_height), y1)],
                    dtype=np.float32)


def pixel_region(box, image_height, image_width):
    """The integer pixel rectangle a float box covers, clipped to the image and at least 1 x 1.

    Ends are snapped inwards (so a crop of the region lies inside the float box) unless that would leave
    no pixel, in which case they are snapped outwards.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    px0, px1 = _snap(x0, x1, image_width)
    py0, py1 = _snap(y0, y1, image_height)
    return px0, py0, px1, py1


def _snap(lo, hi, size):
    lo_in, hi_in = max(0, math.ceil(lo)), min(size, math.floor(hi))
    if hi_in > lo_in:
        return lo_in, hi_in
    lo_out, hi_out = max(0, math.floor(lo)), min(size, math.ceil(hi))
    if hi_out <= lo_out:  # a box entirely outside the image or of zero size: the nearest pixel
        lo_out = min(max(0, math.floor(lo)), size - 1)
        hi_out = lo_out + 1
    return lo_out, hi_out


def sample_crop_in_region(region, scale, ratio, rng, attempts=10):
    """A random crop inside ``region`` (an integer rectangle), as torchvision's ``RandomResizedCrop``.

    The crop's area is a fraction in ``scale`` of the region's area and its aspect ratio is log-uniform in
    ``ratio``; after ``attempts`` failed draws it falls back to the largest centred crop whose aspect ratio
    is clamped to ``ratio`` (torchvision's fallback). Returns ``(x0, y0, x1, y1)`` inside ``region``.
    """
    rx0, ry0, rx1, ry1 = region
    width, height = rx1 - rx0, ry1 - ry0
    if width < 1 or height < 1:
        raise ValueError(f"Cannot crop inside an empty region {region}")
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x0 = rx0 + int(rng.integers(0, width - w + 1))
            y0 = ry0 + int(rng.integers(0, height - h + 1))
            return x0, y0, x0 + w, y0 + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, max(1, int(round(width / min(ratio))))
    elif in_ratio > max(ratio):
        w, h = max(1, int(round(height * max(ratio)))), height
    else:
        w, h = width, height
    x0 = rx0 + (width - w) // 2
    y0 = ry0 + (height - h) // 2
    return x0, y0, x0 + w, y0 + h


def average_box_fraction(boxes_and_sizes):
    """Mean of box area / image area over ``(boxes N x 4, height, width)`` items (boxes clipped to the image).

    Returns ``None`` when there is no box at all.
    """
    total, count = 0.0, 0
    for boxes, height, width in boxes_and_sizes:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        boxes = boxes[np.isfinite(boxes).all(axis=1)]
        if len(boxes) == 0:
            continue
        w = np.clip(boxes[:, 2], 0, width) - np.clip(boxes[:, 0], 0, width)
        h = np.clip(boxes[:, 3], 0, height) - np.clip(boxes[:, 1], 0, height)
        total += float((np.clip(w, 0, None) * np.clip(h, 0, None)).sum()) / float(height * width)
        count += len(boxes)
    return total / count if count else None


def crop_scale_min(scene_crop_min, average_fraction):
    """OAC §5: s_min = 0.2 / average object-proposal size, so the smallest crop inside a box is as large
    (relative to the image) as MoCo-v2's smallest scene crop. Capped at 1 (boxes smaller on average than
    the scene minimum are cropped whole)."""
    if not 0 < scene_crop_min <= 1:
        raise ValueError(f"INPUT.OAC.SCENE_CROP_MIN must be in (0, 1], got {scene_crop_min}")
    if not average_fraction or average_fraction <= 0:
        raise ValueError(f"The average proposal size must be positive, got {average_fraction}")
    return min(1.0, scene_crop_min / average_fraction)


def localization_target(crop, image_height, image_width, grid):
    """OAC §4.2.2 label Y: the image split into ``grid`` x ``grid`` patches, 1 where the crop overlaps a patch.

    Overlap means a positive-area intersection (a crop edge on a patch border does not mark the next patch).
    Row-major (row = vertical patch index), flattened to ``grid * grid`` float32.
    """
    x0, y0, x1, y1 = crop
    xs = np.arange(grid + 1) * (image_width / grid)
    ys = np.arange(grid + 1) * (image_height / grid)
    cols = (xs[:-1] < x1) & (xs[1:] > x0)
    rows = (ys[:-1] < y1) & (ys[1:] > y0)
    return np.outer(rows, cols).astype(np.float32).reshape(-1)
