"""Proposal backends: selective search (PyPI package or OpenCV), random boxes, and boxes from a file.

A backend is built from ``PROPOSAL_BACKEND_REGISTRY`` by name with keyword arguments (a preset's
``backend_args``). ``propose(image, orig_size, image_id)`` gets the image decoded with its longer side at
most ``max_input_size`` and returns ``(boxes, scores)``: float32 N x 4 XYXY boxes in ORIGINAL-image pixels and
float32 N scores (higher is better), or ``None`` scores when the backend only ranks its boxes (best first).
"""
import ctypes
import ctypes.util
import functools
import hashlib
import logging
import math
import sys
import warnings

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "PROPOSAL_BACKENDS",
    "register_proposal_backend",
    "ProposalBackend",
    "SelectiveSearchBackend",
    "OpenCVSelectiveSearchBackend",
    "RandomBoxesBackend",
    "FileProposalsBackend",
    "build_proposal_backend",
    "seed_for_image",
]

# Backend name (the ``--method`` value) -> class built as ``cls(max_input_size=..., **backend_args)``.
PROPOSAL_BACKENDS = {}


def register_proposal_backend(name):
    def register(cls):
        if name in PROPOSAL_BACKENDS:
            raise KeyError(f"proposal backend {name!r} is already registered")
        PROPOSAL_BACKENDS[name] = cls
        cls.name = name
        return cls

    return register


def build_proposal_backend(name, max_input_size=None, **backend_args):
    if name not in PROPOSAL_BACKENDS:
        raise KeyError(f"unknown proposal backend {name!r}; known: {sorted(PROPOSAL_BACKENDS)}")
    return PROPOSAL_BACKENDS[name](max_input_size=max_input_size, **backend_args)


def seed_for_image(image_id):
    """A seed that depends only on the image id, so random boxes are the same in every run and worker."""
    return int.from_bytes(hashlib.sha256(str(image_id).encode("utf-8")).digest()[:8], "little")


def rescale_boxes(boxes, from_size, to_size):
    """Maps XYXY boxes from an image of size ``from_size`` (H, W) to one of size ``to_size``."""
    (from_h, from_w), (to_h, to_w) = from_size, to_size
    scale = np.array([to_w / from_w, to_h / from_h] * 2, dtype=np.float64)
    return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale).astype(np.float32)


def _seed_c_rand(seed):
    libc = _c_library()
    if libc is not None:
        libc.srand(ctypes.c_uint(seed % (2**32)))


@functools.lru_cache(maxsize=1)
def _c_library():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") if sys.platform != "linux" else None)
    except OSError:
        logger.warning("cannot load the C library to seed rand(): OpenCV proposal order will vary between runs")
        return None


class ProposalBackend:
    """Runs on the decoded (possibly reduced) image; subclasses implement ``propose_on_image``."""

    def __init__(self, max_input_size=None):
        self.max_input_size = max_input_size

    def propose(self, image, orig_size, image_id):
        boxes, scores = self.propose_on_image(image, image_id)
        return rescale_boxes(boxes, image.shape[:2], orig_size), scores

    def propose_on_image(self, image, image_id):
        raise NotImplementedError


@register_proposal_backend("selectivesearch")
class SelectiveSearchBackend(ProposalBackend):
    """The ``selectivesearch`` PyPI package (the implementation the official SoCo code adapted).

    Its regions come out in merge order (initial segments first, the whole image last); they are ranked in
    reverse, so the higher a region sits in the grouping hierarchy the better its rank.
    """


    def __init__(self, max_input_size=None, scale=500.0, sigma=0.9, min_size=10):
        super().__init__(max_input_size)
        self.scale, self.sigma, self.min_size = scale, sigma, min_size

    def propose_on_image(self, image, image_id):
        import selectivesearch

        with warnings.catch_warnings():
            # skimage warns that LBP on the package's float image "may give unexpected results"; it is the
            # package's (and the official SoCo code's) behaviour, so it is kept as is.
            warnings.simplefilter("ignore", UserWarning)
            _, regions = selectivesearch.selective_search(
                image, scale=self.scale, sigma=self.sigma, min_size=self.min_size
            )
        # The package's rect is (min_x, min_y, max_x - min_x, max_y - min_y) over pixel indices; the region
        # covers pixels min..max inclusive, i.e. [min, max + 1) in continuous coordinates.
        rects = np.array([r["rect"] for r in reversed(regions)], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:] + 1.0], axis=1)
        return boxes, None


@register_proposal_backend("opencv")
class OpenCVSelectiveSearchBackend(ProposalBackend):
    """``cv2.ximgproc.segmentation`` selective search (Uijlings et al.'s ranking, best first).

    Modes: ``fast`` and ``quality`` are OpenCV's diversification presets; ``single`` is one strategy
    (HSV colour space; colour + fill + size + texture similarity) with one graph segmentation whose
    parameters are ``scale`` (Felzenszwalb k), ``sigma`` and ``min_size``, i.e. the settings the
    ``selectivesearch`` package takes.
    """

    MODES = ("fast", "quality", "single")

    def __init__(self, max_input_size=None, mode="fast", scale=500.0, sigma=0.9, min_size=10):
        super().__init__(max_input_size)
        if mode not in self.MODES:
            raise ValueError(f"opencv selective search mode must be one of {self.MODES}, got {mode!r}")
        self.mode, self.scale, self.sigma, self.min_size = mode, scale, sigma, min_size

    def propose_on_image(self, image, image_id):
        import cv2

        segmentation = cv2.ximgproc.segmentation
        search = segmentation.createSelectiveSearchSegmentation()
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        search.setBaseImage(bgr)
        if self.mode == "fast":
            search.switchToSelectiveSearchFast()
        elif self.mode == "quality":
            search.switchToSelectiveSearchQuality()
        else:
            search.clearImages()
            search.addImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV))
            search.clearGraphSegmentations()
            search.addGraphSegmentation(
                segmentation.createGraphSegmentation(float(self.sigma), float(self.scale), int(self.min_size))
            )
            search.clearStrategies()
            search.addStrategy(
                segmentation.createSelectiveSearchSegmentationStrategyMultiple(
                    segmentation.createSelectiveSearchSegmentationStrategyColor(),
                    segmentation.createSelectiveSearchSegmentationStrategyFill(),
                    segmentation.createSelectiveSearchSegmentationStrategySize(),
                    segmentation.createSelectiveSearchSegmentationStrategyTexture(),
                )
            )
        # OpenCV ranks proposals by hierarchy level times a draw from C's rand(): seeding it per image makes
        # the order independent of which images a worker ran before (same boxes, different order otherwise).
        _seed_c_rand(seed_for_image(image_id))
        # OpenCV's rects are (x, y, w, h) with w, h the pixel extent: x2 = x + w.
        rects = np.asarray(search.process(), dtype=np.float64).reshape(-1, 4)
        return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1), None


@register_proposal_backend("random")
class RandomBoxesBackend(ProposalBackend):
    """K random boxes per image (SoCo Table 5(c), "Random"), seeded by the image id.

    Box scale sqrt(wh)/sqrt(WH) is uniform in [min_size_ratio, max_size_ratio] and the aspect ratio w/h
    log-uniform in [min_aspect_ratio, max_aspect_ratio] (by default the SoCo filter ranges, so the boxes
    survive the filters); the position is uniform over the positions that keep the box inside the image.
    """


    def __init__(
        self,
        max_input_size=None,
        num_boxes=4,
        min_size_ratio=0.3,
        max_size_ratio=0.8,
        min_aspect_ratio=1.0 / 3.0,
        max_aspect_ratio=3.0,
    ):
        super().__init__(max_input_size)
        self.num_boxes = int(num_boxes)
        self.size_range = (float(min_size_ratio), float(max_size_ratio))
        self.log_aspect_range = (math.log(min_aspect_ratio), math.log(max_aspect_ratio))

    def propose(self, image, orig_size, image_id):
        height, width = orig_size
        rng = np.random.default_rng(seed_for_image(image_id))
        side = rng.uniform(*self.size_range, size=self.num_boxes) * math.sqrt(width * height)
        aspect = np.exp(rng.uniform(*self.log_aspect_range, size=self.num_boxes))
        box_w = np.minimum(side * np.sqrt(aspect), width)
        box_h = np.minimum(side / np.sqrt(aspect), height)
        x1 = rng.uniform(size=self.num_boxes) * (width - box_w)
        y1 = rng.uniform(size=self.num_boxes) * (height - box_h)
        boxes = np.stack([x1, y1, x1 + box_w, y1 + box_h], axis=1).astype(np.float32)
        return boxes, None


@register_proposal_backend("file")
class FileProposalsBackend(ProposalBackend):
    """Boxes computed elsewhere (LOD proposals for OAC, the official SoCo JSON, another run's pickle).

    ``proposal_file`` is a Detectron2 proposal pickle or a SoCo JSON (``{key: [[x, y, w, h], ...]}``, see
    ``files.load_proposal_file``); both are in original-image pixels. An image is looked up by its id, then
    by the id's basename (the official SoCo JSON is keyed by ImageNet basenames). Images it lacks raise
    ``KeyError``, which the job records as a zero-proposal image.
    """


    def __init__(self, max_input_size=None, proposal_file=None):
        super().__init__(max_input_size)
        if not proposal_file:
            raise ValueError("the 'file' backend needs a proposal_file (--proposal-file)")
        from .files import load_proposal_file

        self.proposal_file = proposal_file
        proposals = load_proposal_file(proposal_file)
        self._by_id = {
            str(i): (b, s) for i, b, s in zip(proposals["ids"], proposals["boxes"], proposals["objectness_logits"])
        }
        self._keeps_scores = not proposals.get("scores_are_ranks", False)

    def propose(self, image, orig_size, image_id):
        image_id = str(image_id)
        entry = self._by_id.get(image_id) or self._by_id.get(image_id.rsplit("/", 1)[-1])
        if entry is None:
            raise KeyError(f"image id {image_id!r} is not in {self.proposal_file}")
        boxes, scores = entry
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), (scores if self._keeps_scores else None)
