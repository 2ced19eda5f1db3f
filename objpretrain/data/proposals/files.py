"""Proposal files: Detectron2's precomputed-proposal pickle and the official SoCo JSON.

Detectron2 pickle (what ``detectron2.data.load_proposals_into_dataset`` reads)::

    {"ids": [str, ...],                       # dataset dicts' str(image_id), in input order
     "boxes": [float32 N_i x 4, ...],         # XYXY_ABS, original-image pixels, best first
     "objectness_logits": [float32 N_i, ...], # higher is better; -rank for rank-only backends
     "bbox_mode": BoxMode.XYXY_ABS,
     "metadata": {...}}                       # ours: recipe, summary, bad images, shard (ignored by Detectron2)

SoCo JSON (``selective_search/filter_ss_proposals_json.py`` of the official code)::

    {key: [[x, y, w, h], ...], ...}           # key: image basename there, our image id here

Both are read as files from anyone (released proposals are traded): no code runs from a pickle (the restricted
unpickler of objpretrain/utils/safe_pickle.py), and every entry is checked, so that a malformed file stops with a
ValueError naming it and the entry instead of giving wrong proposals (see ``load_proposal_file``).
"""
import collections
import json
import logging
import os
import pickle

import numpy as np
from detectron2.structures import BoxMode

from ...utils.atomic_io import atomic_write_bytes
from ...utils.safe_pickle import UnsafePickleError, load_pickle
from .summary import merge_summaries

__all__ = [
    "save_proposal_file",
    "load_proposal_file",
    "export_soco_json",
    "import_soco_json",
    "merge_proposal_files",
    "rank_logits",
]

logger = logging.getLogger(__name__)


def rank_logits(num_boxes):
    """Objectness logits of a ranked list: 0 for the best box, -1 for the next, ..."""
    return (-np.arange(num_boxes)).astype(np.float32)


def save_proposal_file(path, ids, boxes, objectness_logits, metadata=None):
    """Atomically writes a Detectron2 proposal pickle (see the module docstring)."""
    if not (len(ids) == len(boxes) == len(objectness_logits)):
        raise ValueError(f"{len(ids)} ids, {len(boxes)} box arrays, {len(objectness_logits)} logit arrays")
    proposals = {
        "ids": [str(i) for i in ids],
        "boxes": [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes],
        "objectness_logits": [np.asarray(s, dtype=np.float32).reshape(-1) for s in objectness_logits],
        "bbox_mode": BoxMode.XYXY_ABS,
    }
    for image_id, b, s in zip(proposals["ids"], proposals["boxes"], proposals["objectness_logits"]):
        if len(b) != len(s):
            raise ValueError(f"image {image_id!r}: {len(b)} boxes but {len(s)} logits")
    if metadata is not None:
        proposals["metadata"] = metadata
    atomic_write_bytes(path, pickle.dumps(proposals, protocol=pickle.HIGHEST_PROTOCOL))


def load_proposal_file(path):
    """Reads a Detectron2 pickle or a SoCo JSON into the pickle's form, boxes converted to XYXY_ABS.

    A SoCo JSON has no scores: its boxes get ``rank_logits`` and the result has ``scores_are_ranks=True``.
    A pickle that asks for anything but numpy arrays, builtin containers and ``BoxMode`` raises
    ``UnsafePickleError`` (nothing in it runs). A ValueError naming the file and the entry is raised for what
    would otherwise give wrong proposals: ids, boxes and logits of different counts, an image id given twice or
    not a str / int, boxes that are not N x 4 numbers, logits that are not one per box or are NaN (they order
    the boxes), a relative or rotated ``bbox_mode``. NaN/Inf and empty boxes are kept and counted in a warning:
    the pretraining mappers, which know the image size, drop them with the boxes outside the image.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"proposal file {path!r} does not exist")
    if path.endswith(".json"):
        return import_soco_json(path)
    try:
        proposals = load_pickle(path)
    except UnsafePickleError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: not a proposal pickle ({type(e).__name__}: {e})") from e
    if not isinstance(proposals, dict):
        raise ValueError(f"{path}: a proposal pickle holds a dict, this one a {type(proposals).__name__}")
    # Detectron1 names, as load_proposals_into_dataset accepts them.
    for old, new in (("indexes", "ids"), ("scores", "objectness_logits")):
        if old in proposals:
            proposals[new] = proposals.pop(old)
    missing = {"ids", "boxes", "objectness_logits"} - set(proposals)
    if missing:
        raise ValueError(f"{path}: proposal pickle lacks {sorted(missing)}")
    try:
        mode = BoxMode(proposals.get("bbox_mode", BoxMode.XYXY_ABS))
    except (TypeError, ValueError):
        mode = None
    if mode not in (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS):
        raise ValueError(f"{path}: bbox_mode {proposals['bbox_mode']!r} is not XYXY_ABS or XYWH_ABS (boxes are "
                         "original-image pixels)")
    proposals.update(_checked_entries(path, proposals["ids"], proposals["boxes"], proposals["objectness_logits"],
                                      mode))
    proposals["bbox_mode"] = BoxMode.XYXY_ABS
    return proposals


def _checked_entries(path, ids, boxes, logits, mode):
    """{"ids": [str], "boxes": [float32 N x 4, XYXY_ABS], "objectness_logits": [float32 N]} of a file's entries,
    or a ValueError naming ``path`` (see ``load_proposal_file``)."""
    for key, value in (("ids", ids), ("boxes", boxes), ("objectness_logits", logits)):
        if not isinstance(value, (list, tuple, np.ndarray)):
            raise ValueError(f"{path}: {key!r} must be a list, one entry per image, not a {type(value).__name__}")
    if not len(ids) == len(boxes) == len(logits):
        raise ValueError(f"{path}: {len(ids)} ids, {len(boxes)} box arrays and {len(logits)} logit arrays; the "
                         "three lists need one entry per image each")
    for image_id in ids:
        if not isinstance(image_id, (str, int, np.integer)) or isinstance(image_id, bool):
            raise ValueError(f"{path}: image id {image_id!r} is a {type(image_id).__name__}, not a str or int")
    ids = [str(i) for i in ids]
    repeated = [i for i, n in collections.Counter(ids).items() if n > 1]
    if repeated:
        raise ValueError(f"{path}: {len(repeated)} image ids have more than one entry (e.g. {repeated[:3]}), so "
                         "which proposals an image gets would depend on the order; keep one entry per image")
    checked = {"ids": ids, "boxes": [], "objectness_logits": []}
    for image_id, image_boxes, image_logits in zip(ids, boxes, logits):
        try:
            with np.errstate(over="ignore"):  # values beyond float32 become Inf: counted below with the NaN boxes
                image_boxes = np.asarray(image_boxes, dtype=np.float32)
                image_logits = np.asarray(image_logits, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: image {image_id!r}: boxes and logits must be numeric arrays ({e})") from None
        if image_boxes.size == 0:
            image_boxes = image_boxes.reshape(0, 4)
        if image_boxes.ndim != 2 or image_boxes.shape[1] != 4:
            raise ValueError(f"{path}: image {image_id!r}: boxes must be N x 4, got shape {image_boxes.shape}")
        if len(image_logits) != len(image_boxes):
            raise ValueError(f"{path}: image {image_id!r}: {len(image_boxes)} boxes but {len(image_logits)} "
                             "objectness logits")
        checked["boxes"].append(BoxMode.convert(image_boxes, mode, BoxMode.XYXY_ABS))
        checked["objectness_logits"].append(image_logits)
    if not ids:
        return checked
    # Values are checked on all images at once: per-image numpy calls would double the load time of ImageNet's file.
    image_of_box = np.repeat(np.arange(len(ids)), [len(b) for b in checked["boxes"]])
    nan_logits = np.isnan(np.concatenate(checked["objectness_logits"]))
    if nan_logits.any():
        raise ValueError(f"{path}: image {ids[image_of_box[nan_logits.argmax()]]!r}: NaN objectness logits (they "
                         "decide the boxes' order)")
    all_boxes = np.concatenate(checked["boxes"])
    invalid = ~(np.isfinite(all_boxes).all(axis=1) & (all_boxes[:, 2] > all_boxes[:, 0])
                & (all_boxes[:, 3] > all_boxes[:, 1]))
    if invalid.any():
        logger.warning("%s: %d boxes of %d images are NaN/Inf or empty (x2 <= x1 or y2 <= y1), e.g. in image %r; "
                       "the pretraining mappers drop them (the SoCo mapper counts them as invalid_proposals)",
                       path, int(invalid.sum()), len(np.unique(image_of_box[invalid])),
                       ids[image_of_box[invalid.argmax()]])
    return checked


def export_soco_json(proposals, path):
    """Writes ``{image_id: [[x, y, w, h], ...]}`` (boxes best first) atomically."""
    out = {}
    for image_id, boxes, logits in zip(proposals["ids"], proposals["boxes"], proposals["objectness_logits"]):
        order = np.argsort(-np.asarray(logits), kind="stable")
        ordered = np.asarray(boxes, dtype=np.float32)[order].astype(np.float64)
        xywh = BoxMode.convert(ordered, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        out[str(image_id)] = [[float(v) for v in box] for box in xywh]
    atomic_write_bytes(path, json.dumps(out).encode("utf-8"))


def import_soco_json(path):
    """Reads a SoCo JSON into the Detectron2 pickle's form (boxes in listed order, ``rank_logits``).

    The official files hold ``(min_x, min_y, max_x - min_x, max_y - min_y)`` of the selectivesearch package;
    they are read as Detectron2's XYWH_ABS (x2 = x + w), so the box is one pixel short of the region's
    pixel extent, the same convention the official loader uses. The file may be UTF-8 (with or without a BOM),
    UTF-16 or UTF-32; a key given twice, or an entry that is not a list of boxes, raises a ValueError naming it.
    """
    try:
        with open(path, "rb") as f:
            # From bytes, json detects the encodings JSON allows; a repeated key would otherwise keep its last value.
            data = json.loads(f.read(), object_pairs_hook=_unique_keys)
    except Exception as e:
        raise ValueError(f"{path}: not a SoCo proposal JSON ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a SoCo proposal JSON maps image keys to box lists, got {type(data).__name__}")
    ids, boxes, logits = [], [], []
    for key, rects in data.items():
        try:
            rects = np.asarray(rects, dtype=np.float64)
        except (TypeError, ValueError):
            rects = None
        if rects is None or (rects.size and (rects.ndim != 2 or rects.shape[1] < 4)):
            raise ValueError(f"{path}: entry {key!r} is not a list of [x, y, w, h] boxes")
        xywh = rects[:, :4] if rects.size else np.zeros((0, 4))
        ids.append(str(key))
        boxes.append(BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))  # to float32 in _checked_entries
        logits.append(rank_logits(len(xywh)))
    return {
        **_checked_entries(path, ids, boxes, logits, BoxMode.XYXY_ABS),
        "bbox_mode": BoxMode.XYXY_ABS,
        "scores_are_ranks": True,
    }


def _unique_keys(pairs):
    keys = collections.Counter(key for key, _ in pairs)
    repeated = [key for key, n in keys.items() if n > 1]
    if repeated:
        raise ValueError(f"key {repeated[0]!r} occurs {keys[repeated[0]]} times in one object; keep one entry "
                         "per image")
    return dict(pairs)


def merge_proposal_files(paths, output_path):
    """Merges the shard files of one job (``--shard i/n`` for every i) into one file, in input order.

    Checks that the shards come from the same recipe and input list, that every shard is present once,
    and that no image id repeats. The merged summary is the sum of the shards'.
    """
    shards = []
    for path in paths:
        proposals = load_proposal_file(path)
        meta = proposals.get("metadata") or {}
        if "shard" not in meta:
            raise ValueError(f"{path}: not written by tools/generate_proposals.py (no shard metadata)")
        shards.append((path, proposals, meta))
    shards.sort(key=lambda s: s[2]["shard"][0])
    first_meta = shards[0][2]
    num_shards = first_meta["shard"][1]
    for path, _, meta in shards:
        for key in ("recipe", "num_inputs", "inputs_digest"):
            if meta[key] != first_meta[key]:
                raise ValueError(f"{path}: {key} differs from {shards[0][0]}'s; the shards are from different jobs")
        if meta["shard"][1] != num_shards:
            raise ValueError(f"{path}: shard {meta['shard']} is not one of {num_shards} shards")
    indices = [meta["shard"][0] for _, _, meta in shards]
    if indices != list(range(num_shards)):
        raise ValueError(f"need shards 0..{num_shards - 1} exactly once, got {indices} from {[s[0] for s in shards]}")

    ids, boxes, logits, bad_images = [], [], [], {}
    for _, proposals, meta in shards:
        ids.extend(proposals["ids"])
        boxes.extend(proposals["boxes"])
        logits.extend(proposals["objectness_logits"])
        bad_images.update(meta["bad_images"])
    if len(set(ids)) != len(ids):
        raise ValueError("image ids repeat across shards")
    metadata = {
        **first_meta,
        "shard": [0, 1],
        "summary": merge_summaries([meta["summary"] for _, _, meta in shards]),
        "bad_images": bad_images,
    }
    save_proposal_file(output_path, ids, boxes, logits, metadata)
    return metadata
