"""Proposal files: Detectron2's precomputed-proposal pickle and the official SoCo JSON.

Detectron2 pickle (what ``detectron2.data.load_proposals_into_dataset`` reads)::

    {"ids": [str, ...],                       # dataset dicts' str(image_id), in input order
     "boxes": [float32 N_i x 4, ...],         # XYXY_ABS, original-image pixels, best first
     "objectness_logits": [float32 N_i, ...], # higher is better; -rank for rank-only backends
     "bbox_mode": BoxMode.XYXY_ABS,
     "metadata": {...}}                       # ours: recipe, summary, bad images, shard (ignored by Detectron2)

SoCo JSON (``selective_search/filter_ss_proposals_json.py`` of the official code)::

    {key: [[x, y, w, h], ...], ...}           # key: image basename there, our image id here
"""
import json
import os
import pickle

import numpy as np
from detectron2.structures import BoxMode

from ...utils.atomic_io import atomic_write_bytes
from .summary import merge_summaries

__all__ = [
    "save_proposal_file",
    "load_proposal_file",
    "export_soco_json",
    "import_soco_json",
    "merge_proposal_files",
    "rank_logits",
]


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
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"proposal file {path!r} does not exist")
    if path.endswith(".json"):
        return import_soco_json(path)
    try:
        with open(path, "rb") as f:
            proposals = pickle.load(f, encoding="latin1")
    except Exception as e:
        raise ValueError(f"{path}: not a proposal pickle ({type(e).__name__}: {e})") from e
    # Detectron1 names, as load_proposals_into_dataset accepts them.
    for old, new in (("indexes", "ids"), ("scores", "objectness_logits")):
        if old in proposals:
            proposals[new] = proposals.pop(old)
    missing = {"ids", "boxes", "objectness_logits"} - set(proposals)
    if missing:
        raise ValueError(f"{path}: proposal pickle lacks {sorted(missing)}")
    mode = BoxMode(proposals.get("bbox_mode", BoxMode.XYXY_ABS))
    proposals["boxes"] = [
        BoxMode.convert(np.asarray(b, dtype=np.float32).reshape(-1, 4), mode, BoxMode.XYXY_ABS)
        for b in proposals["boxes"]
    ]
    proposals["objectness_logits"] = [np.asarray(s, dtype=np.float32).reshape(-1)
                                      for s in proposals["objectness_logits"]]
    proposals["ids"] = [str(i) for i in proposals["ids"]]
    proposals["bbox_mode"] = BoxMode.XYXY_ABS
    return proposals


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
    pixel extent, the same convention the official loader uses.
    """
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except Exception as e:
        raise ValueError(f"{path}: not a SoCo proposal JSON ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a SoCo proposal JSON maps image keys to box lists, got {type(data).__name__}")
    ids, boxes, logits = [], [], []
    for key, rects in data.items():
        rects = np.asarray(rects, dtype=np.float64)
        if rects.size and (rects.ndim != 2 or rects.shape[1] < 4):
            raise ValueError(f"{path}: entry {key!r} is not a list of [x, y, w, h] boxes")
        xywh = rects[:, :4] if rects.size else np.zeros((0, 4))
        ids.append(str(key))
        boxes.append(BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS).astype(np.float32))
        logits.append(rank_logits(len(xywh)))
    return {
        "ids": ids,
        "boxes": boxes,
        "objectness_logits": logits,
        "bbox_mode": BoxMode.XYXY_ABS,
        "scores_are_ranks": True,
    }


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
