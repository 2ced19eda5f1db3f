"""The SoCo proposal filters (SoCo §3.2), each counting what it removes.

Boxes are float XYXY in continuous pixel coordinates (Detectron2's XYXY_ABS), so width = x2 - x1.
"""
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

__all__ = ["FilterSettings", "filter_proposals", "pairwise_iou", "FILTER_NAMES"]

# The order filters run in; also the keys of the "removed" counter.
FILTER_NAMES = ("degenerate", "min_side", "aspect_ratio", "size", "duplicate", "top_n")


@dataclass(frozen=True)
class FilterSettings:
    """Thresholds of the proposal filters. ``None`` switches a filter off."""

    # SoCo §3.2 requirement 1): 1/3 <= w/h <= 3.
    min_aspect_ratio: Optional[float] = 1.0 / 3.0
    max_aspect_ratio: Optional[float] = 3.0
    # SoCo §3.2 requirement 2): 0.3 <= sqrt(wh) / sqrt(WH) <= 0.8, W x H the (original) image size.
    min_size_ratio: Optional[float] = 0.3
    max_size_ratio: Optional[float] = 0.8
    # Shorter box side in original pixels; the official SoCo filters.py also drops boxes under 32 px.
    min_side: Optional[float] = None
    # Greedy duplicate removal in rank order: a box whose IoU with a better-ranked kept box is >= this goes.
    # Selective search emits many (near-)identical boxes from different levels of its hierarchy.
    dedup_iou: Optional[float] = 0.95
    # Keep at most this many proposals (the best-ranked ones).
    top_n: Optional[int] = None

    def to_dict(self):
        return asdict(self)

    def without_size_filter(self):
        return FilterSettings(**{**asdict(self), "min_size_ratio": None, "max_size_ratio": None})


def pairwise_iou(boxes1, boxes2):
    """IoU matrix (len(boxes1) x len(boxes2)) of XYXY boxes."""
    boxes1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    boxes2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    left_top = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    right_bottom = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = np.clip(right_bottom - left_top, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _within(values, low, high):
    """Mask of ``values`` inside ``[low, high]``; a bound that is None is open."""
    keep = np.ones(len(values), dtype=bool)
    if low is not None:
        keep &= values >= low
    if high is not None:
        keep &= values <= high
    return keep


def _dedup_keep_mask(boxes, iou_threshold):
    keep = np.ones(len(boxes), dtype=bool)
    for i in range(len(boxes)):
        if not keep[i]:
            continue
        later = np.flatnonzero(keep[i + 1 :]) + i + 1
        if later.size:
            keep[later[pairwise_iou(boxes[i], boxes[later])[0] >= iou_threshold]] = False
    return keep


def filter_proposals(boxes, scores, image_size, settings):
    """Applies the filters of ``settings`` in the order of ``FILTER_NAMES``.

    Args:
        boxes: float array N x 4, XYXY in original-image pixels.
        scores: float array N, higher is better; boxes are ranked by it (ties keep input order).
        image_size: (H, W) of the original image.
        settings: FilterSettings.

    Returns:
        (boxes, scores, removed): the kept boxes (float32, best first) and scores, and a Counter of how many
        boxes each filter removed (only filters that removed something appear).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    removed = Counter()

    def apply(name, keep):
        nonlocal boxes, scores
        n_removed = int((~keep).sum())
        if n_removed:
            removed[name] += n_removed
            boxes, scores = boxes[keep], scores[keep]

    widths = lambda: (boxes[:, 2] - boxes[:, 0]).astype(np.float64)  # noqa: E731
    heights = lambda: (boxes[:, 3] - boxes[:, 1]).astype(np.float64)  # noqa: E731

    apply("degenerate", np.isfinite(boxes).all(axis=1) & (widths() > 0) & (heights() > 0))
    if settings.min_side is not None:
        apply("min_side", np.minimum(widths(), heights()) >= settings.min_side)
    if settings.min_aspect_ratio is not None or settings.max_aspect_ratio is not None:
        apply("aspect_ratio", _within(widths() / heights(), settings.min_aspect_ratio, settings.max_aspect_ratio))
    if settings.min_size_ratio is not None or settings.max_size_ratio is not None:
        height, width = image_size
        size_ratio = np.sqrt(widths() * heights()) / np.sqrt(float(width) * float(height))
        apply("size", _within(size_ratio, settings.min_size_ratio, settings.max_size_ratio))
    if settings.dedup_iou is not None:
        apply("duplicate", _dedup_keep_mask(boxes, settings.dedup_iou))
    if settings.top_n is not None:
        apply("top_n", np.arange(len(boxes)) < settings.top_n)
    return boxes, scores, removed
