"""Frozen ResNet features for the linear probes (objpretrain.evaluation.linear_probe).

``build_frozen_backbone`` loads the ResNet of any checkpoint ``objpretrain.checkpoint`` reads (or keeps a random
init); ``extract_features`` pools res5 of each resized, centre-cropped image; ``extract_object_features`` RoIAligns
every annotated box from res4 and res5 of the whole resized image; ``reestimate_probe_batchnorm`` gives every
network, random init included, the BatchNorm statistics of the training images at the probe's resolution;
``cached_features`` keeps extracted features on disk, keyed by weights and sizes.

Under Detectron2's ``launch`` (``tools/linear_eval.py --num-gpus N``) ``extract_sharded`` splits the images into
one contiguous block per rank and gathers the blocks in rank order, so every rank gets the features one process
would have extracted, in the same order; ``broadcast_buffers`` gives every rank rank 0's re-estimated BatchNorm
statistics.
"""
import hashlib
import logging
import os

import numpy as np
import torch
import torch.distributed as dist
import torchvision.transforms.v2.functional as TF
from detectron2.modeling import build_backbone
from detectron2.structures import BoxMode
from detectron2.utils import comm
from torchvision.ops import roi_align

from ..checkpoint import convert_state_dict, load_state_dict
from ..data.image_io import BadImageError, read_annotated_images, read_image_rgb
from ..utils.atomic_io import atomic_write
from .view_retrieval import reestimate_batchnorm

__all__ = [
    "broadcast_buffers",
    "build_frozen_backbone",
    "cached_features",
    "extract_sharded",
    "extract_features",
    "extract_object_features",
    "pixel_stats",
    "reestimate_probe_batchnorm",
]

logger = logging.getLogger(__name__)


def build_frozen_backbone(cfg, weights, seed=0, unsafe_full_unpickle=False):
    """A Detectron2 ResNet (to res5) with ``weights`` loaded; every backbone tensor must be present.

    ``weights=None`` keeps Detectron2's random initialization (drawn with ``seed``): the floor that a pretrained
    backbone has to beat. ``unsafe_full_unpickle``: see ``objpretrain.checkpoint.load_state_dict``.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4", "res5"]
    torch.manual_seed(seed)
    backbone = build_backbone(cfg)
    if weights is None:
        return backbone.eval().requires_grad_(False)
    conversion = convert_state_dict(load_state_dict(weights, unsafe_full_unpickle), "d2-backbone")
    incompatible = backbone.load_state_dict(conversion.state_dict, strict=False)
    missing = [k for k in incompatible.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or incompatible.unexpected_keys:
        raise ValueError(f"{weights}: does not fit the config's ResNet (missing {missing[:5]}, unexpected "
                         f"{incompatible.unexpected_keys[:5]}); check MODEL.RESNETS.DEPTH / STRIDE_IN_1X1")
    return backbone.eval().requires_grad_(False)


def pixel_stats(cfg):
    """MODEL.PIXEL_MEAN and MODEL.PIXEL_STD as (C, 1, 1) tensors, to normalize a (C, H, W) image."""
    return (torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1))


def _read_resized(path, resize, cfg, crop=None):
    """The normalized (3, H, W) image, shorter side ``resize``, centre-cropped to ``crop`` when given."""
    mean, std = pixel_stats(cfg)
    image, _ = read_image_rgb(path)
    tensor = TF.resize(torch.from_numpy(np.require(image, requirements="W")).permute(2, 0, 1), [resize], antialias=True)
    if crop is not None:
        tensor = TF.center_crop(tensor, [crop, crop])
    return (tensor.float() - mean) / std


@torch.no_grad()
def extract_features(backbone, dataset_dicts, cfg, resize, crop, batch_size, device):
    """(features (N', C), kept indices): pooled res5 per readable image; unreadable ones are logged, skipped."""
    backbone.to(device)
    features, kept, batch, batch_indices = [], [], [], []

    def flush():
        if batch:
            res5 = backbone(torch.stack(batch).to(device))["res5"]
            features.append(res5.mean(dim=(2, 3)).cpu())
            kept.extend(batch_indices)
            batch.clear()
            batch_indices.clear()

    for index, d in enumerate(dataset_dicts):
        try:
            batch.append(_read_resized(d["file_name"], resize, cfg, crop))
            batch_indices.append(index)
        except BadImageError as error:
            logger.warning("skipping %s (%s)", d["file_name"], error.reason)
            continue
        if len(batch) == batch_size:
            flush()
    flush()
    if not features:
        raise ValueError("no readable image in the dataset")
    skipped = len(dataset_dicts) - len(kept)
    if skipped:
        logger.warning("%d of %d images could not be read and were left out", skipped, len(dataset_dicts))
    return torch.cat(features).numpy(), np.asarray(kept)


@torch.no_grad()
def extract_object_features(backbone, dataset_dicts, cfg, resize, device):
    """(features (M, C), category ids (M,)): one vector per annotated box of the readable images.

    The image is resized (shorter side ``resize``, not cropped, so that every box stays whole) and each box is
    RoIAligned to 1 x 1 from res4 and from res5, concatenated: objects of 12 px cover less than one res5 cell,
    and FPN detectors read such objects from the finer level too. Images without boxes add nothing; unreadable
    ones are logged and skipped.
    """
    mean, std = pixel_stats(cfg)
    strides = {name: backbone.output_shape()[name].stride for name in ("res4", "res5")}
    backbone.to(device)
    features, labels = [], []
    for _, tensor, annotations in read_annotated_images(dataset_dicts, logger):
        scale = resize / min(tensor.shape[1:])
        tensor = (TF.resize(tensor, [resize], antialias=True).float() - mean) / std
        maps = backbone(tensor[None].to(device))
        boxes = torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations],
                             dtype=torch.float32) * scale
        rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1).to(device)
        pooled = [roi_align(maps[name], rois, 1, 1.0 / stride, sampling_ratio=2, aligned=True).flatten(1)
                  for name, stride in strides.items()]
        features.append(torch.cat(pooled, dim=1).cpu())
        labels.extend(a["category_id"] for a in annotations)
    if not features:
        raise ValueError("no readable image with an annotated box in the dataset")
    return torch.cat(features).numpy(), np.asarray(labels)


@torch.no_grad()
def reestimate_probe_batchnorm(backbone, dataset_dicts, cfg, resize, crop, num_images, batch_size, device):
    """Re-estimates the backbone's BatchNorm statistics on up to ``num_images`` training images, preprocessed as
    the probe preprocesses them (``crop=None``: the whole resized image, as for the object probe); returns the
    number of images used. Pretraining views are smaller than the probe's images, and a random init's statistics
    are the unit ones, so neither decides a probe's result."""
    step = max(1, len(dataset_dicts) // max(num_images, 1))
    images = []
    for d in dataset_dicts[::step][:num_images]:
        try:
            images.append(_read_resized(d["file_name"], resize, cfg, crop))
        except BadImageError as error:
            logger.warning("BatchNorm re-estimation: skipping %s (%s)", d["file_name"], error.reason)
    if not images:
        raise ValueError("no readable training image to re-estimate the BatchNorm statistics on")
    backbone.to(device)
    same_size = len({tuple(x.shape) for x in images}) == 1
    batches = torch.stack(images).split(batch_size) if same_size else [x[None] for x in images]
    reestimate_batchnorm(backbone, [lambda b=b: backbone(b.to(device)) for b in batches])
    backbone.requires_grad_(False)
    logger.info("BatchNorm statistics re-estimated on %d training images at the probe's resolution", len(images))
    return len(images)


def extract_sharded(extract, dataset_dicts, second_is_index):
    """``extract(dataset_dicts)`` -> (features, second array) computed by all ranks together: each extracts its
    contiguous block of the dicts, and the blocks are gathered in rank order, so the result (on every rank) equals
    one process's. ``second_is_index``: the second array holds indices into the dicts (kept images), which are
    shifted from block to whole-list indices. A block with nothing to extract (all unreadable) contributes
    nothing; when every block is empty the error is one process's."""
    world_size, rank = comm.get_world_size(), comm.get_rank()
    if world_size == 1:
        return extract(dataset_dicts)
    bounds = np.linspace(0, len(dataset_dicts), world_size + 1).astype(int)
    try:
        features, second = extract(dataset_dicts[bounds[rank]:bounds[rank + 1]])
        part = (features, second + bounds[rank] if second_is_index else second)
    except ValueError as error:  # nothing readable in this block: the others may still have some
        part = str(error)
    parts = comm.all_gather(part)
    found = [p for p in parts if not isinstance(p, str)]
    if not found:
        raise ValueError(parts[0])
    return np.concatenate([p[0] for p in found]), np.concatenate([p[1] for p in found])


def broadcast_buffers(module, src=0):
    """Copies rank ``src``'s buffers (BatchNorm statistics) to every rank; the module is on this rank's device."""
    if comm.get_world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def cached_features(extract, cache_dir, dataset_name, key):
    """``extract()`` (a pair of arrays), read from / written to ``cache_dir`` under a digest of ``key`` (a string
    naming the weights, sizes and settings); no cache when ``cache_dir`` is empty."""
    if not cache_dir:
        return extract()
    cache = os.path.join(cache_dir, f"{dataset_name}_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz")
    if os.path.isfile(cache):
        logger.info("features of %s from %s", dataset_name, cache)
        data = np.load(cache)
        return data["features"], data["kept"]
    features, kept = extract()
    if comm.is_main_process():  # every rank has the same features (extract_sharded); one writes them
        atomic_write(cache, lambda f: np.savez(f, features=features, kept=kept))
    # Every rank must see the file before any looks for the next one (the test split may be the training set):
    # a rank that read it while another extracted would leave that one alone in the gather.
    comm.synchronize()
    return features, kept
