"""View retrieval: the pretext task of image-level SSL measured on held-out images.

Each held-out image gives two augmented views (a random resized crop, a flip and a mild colour jitter, drawn
once from a fixed seed, so every model and every iteration is measured on the same pixels). A network embeds all
views; each first view's nearest neighbour (cosine) among all second views must be its own image's second view.
The score is the top-1 rate averaged over both directions (view 1 -> view 2 and view 2 -> view 1); chance is
1 / number of images. A network that learnt invariance to the augmentations scores above random init; a
collapsed one (all embeddings equal) scores near chance.

BatchNorm handling, the same for every model: the statistics are re-estimated on the retrieval views
themselves (a copy of the network, running statistics reset, cumulative average over one pass in train mode),
then the views are embedded in eval mode. So neither the training views' size nor a random init's unit
statistics decide the result.
"""
import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augmentations import PhotometricAugmentation
from ..data.boxes_oac import sample_crop_in_region
from ..data.image_io import BadImageError, read_image_rgb, resize_rgb
from ..data.samplers import derive_seed, seeded_global_rngs

logger = logging.getLogger(__name__)

__all__ = ["RetrievalViews", "make_retrieval_views", "reestimate_batchnorm", "retrieval_top1", "view_retrieval"]


@dataclass
class RetrievalViews:
    """Two uint8 views per image, ``view1`` and ``view2`` of shape (N, 3, S, S), row i from image i."""

    view1: torch.Tensor
    view2: torch.Tensor

    def __len__(self):
        return self.view1.shape[0]

    @property
    def chance(self):
        return 1.0 / len(self)


def make_retrieval_views(file_names, size, seed=0, crop_scale=(0.5, 1.0), color_jitter=(0.2, 0.2, 0.2, 0.05),
                         color_jitter_prob=0.8, grayscale_prob=0.0, hflip_prob=0.5):
    """The two views of every readable image in ``file_names``, deterministic in ``seed``; an unreadable image is
    logged and left out (the others keep their views)."""
    photometric = PhotometricAugmentation(color_jitter=tuple(color_jitter), color_jitter_prob=color_jitter_prob,
                                          grayscale_prob=grayscale_prob, blur_prob=0.0)
    views = ([], [])
    for index, file_name in enumerate(file_names):
        try:
            image, _ = read_image_rgb(file_name)
        except BadImageError as error:
            logger.warning("View retrieval: leaving out %s (%s)", file_name, error.reason)
            continue
        height, width = image.shape[:2]
        with seeded_global_rngs(derive_seed(seed, index)):
            rng = np.random.default_rng(derive_seed(seed, index, 1))
            for out in views:
                x0, y0, x1, y1 = sample_crop_in_region((0, 0, width, height), crop_scale, (3 / 4, 4 / 3), rng)
                view = resize_rgb(image[y0:y1, x0:x1], size, size)
                if rng.random() < hflip_prob:
                    view = view[:, ::-1]
                view = photometric(np.ascontiguousarray(view))
                out.append(torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))))
    if len(views[0]) < 2:
        raise ValueError(f"view retrieval needs at least 2 readable images, got {len(views[0])} of {len(file_names)}")
    return RetrievalViews(torch.stack(views[0]), torch.stack(views[1]))


@torch.no_grad()
def reestimate_batchnorm(module, batches):
    """Resets every BatchNorm's running statistics in ``module`` and re-estimates them as the plain average over
    ``batches`` (an iterable of callables run in train mode, each doing one forward pass); leaves ``module`` in
    eval mode. Returns the number of BatchNorm layers re-estimated."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    module.train()
    for forward in batches:
        forward()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    module.eval()
    return len(norms)


def retrieval_top1(features1, features2):
    """Top-1 rate of finding row i of ``features2`` as the nearest (cosine) neighbour of row i of ``features1``,
    and vice versa, averaged over both directions. (N, C) and (N, C) -> float in [0, 1]."""
    if features1.shape != features2.shape:
        raise ValueError(f"feature shapes differ: {tuple(features1.shape)} and {tuple(features2.shape)}")
    similarity = F.normalize(features1.float(), dim=1) @ F.normalize(features2.float(), dim=1).t()
    target = torch.arange(similarity.shape[0], device=similarity.device)
    forward = (similarity.argmax(dim=1) == target).float().mean()
    backward = (similarity.argmax(dim=0) == target).float().mean()
    return float((forward + backward) / 2)


@torch.no_grad()
def embed_views(module, embed, views, normalize, batch_size=128, device="cpu"):
    """``(features of view1, features of view2)``, each (N, C), of ``embed(copy_of_module, normalized images)``.

    ``module`` is not changed: a copy has its BatchNorm statistics re-estimated on the views (module docstring).
    ``normalize`` maps uint8 (N, 3, S, S) views to the network's float input on ``device``.
    """
    network = copy.deepcopy(module).to(device)
    chunks = [chunk for view in (views.view1, views.view2) for chunk in view.split(batch_size)]
    reestimate_batchnorm(network, [lambda chunk=chunk: embed(network, normalize(chunk.to(device))) for chunk in chunks])
    return tuple(torch.cat([embed(network, normalize(chunk.to(device))) for chunk in view.split(batch_size)])
                 for view in (views.view1, views.view2))


def view_retrieval(module, embed, views, normalize, batch_size=128, device="cpu"):
    """View-retrieval top-1 of ``embed(copy_of_module, normalized images) -> (N, C)`` on ``views``
    (:func:`embed_views`)."""
    return retrieval_top1(*embed_views(module, embed, views, normalize, batch_size, device))
