"""SoCo's views and proposal boxes (SoCo §3.2; SoCo* §4.3), as a Detectron2 dataset mapper.

Views, built from one decode of the image (big JPEGs decode at reduced size with PIL's draft mode, the
smallest DCT scale that keeps the shorter side at least ``VIEW_SIZE``, so V1 is still a shrink):

- V1: the whole image resized to ``VIEW_SIZE`` x ``VIEW_SIZE`` (224);
- V2: a random crop of V1 (area scale ``CROP_SCALE``, log-uniform aspect ratio ``CROP_RATIO``) resized to
  ``VIEW_SIZE``;
- V3 (``V3_SIZE > 0``): V2 downsampled to ``V3_SIZE`` (112). It is returned at 112 x 112, **not padded**: the
  model pads it at batching with ``ImageList.from_tensors(images, backbone.size_divisibility)`` (FPN: 32, so
  112 -> 128, padded at the bottom and right, which leaves the boxes unchanged). ``V3_SIZE = 0`` drops V3
  (the C4 variant, §3.3);
- V4 (``V4_SIZE > 0``, SoCo*): another random crop of V1, like V2's, resized to ``V4_SIZE`` (192).

Then every view is augmented independently (§3.2 "each view is randomly and independently augmented"): a
horizontal flip (``HFLIP_PROB``), then BYOL's colour pipeline, with BYOL's first-view probabilities for V1 and
its second-view ones for V2, V3, V4 (``objpretrain.data.augmentations``).

All geometry is a Detectron2 ``Transform`` (``ResizeTransform``, ``CropTransform``, ``HFlipTransform``): each
view's transform list from the V1 frame is applied to the view's pixels and, through ``apply_box``, to its boxes.

Proposals (``proposal_boxes`` attached from a proposal file, original-image pixels): a proposal is *usable*
when it is finite with positive size and at least ``MIN_VISIBLE_FRACTION`` of its area lies inside the V2 crop
(and inside the V4 crop when V4 is on); K = ``NUM_PROPOSALS`` of them are drawn without replacement. Row i of
every view's ``boxes`` is the same proposal. With fewer than K usable proposals (including none, or no
``proposal_boxes`` at all) the image still yields K rows, padded per ``FALLBACK``:

- ``"repeat"``: every usable proposal once, then usable proposals drawn again at random (box jitter makes
  the repeats differ); an image with no usable proposal gets ``"whole_image"`` rows;
- ``"whole_image"``: the region visible in every view (the V2 crop, intersected with the V4 crop if on);
- ``"random"``: random boxes inside that region, with the sizes and aspect ratios that SoCo's proposal filter
  keeps (§3.2: sqrt(wh / WH) in [0.3, 0.8], w/h in [1/3, 3]), as in the "Random" row of Table 5(c).

``SoCoMapper.counters`` (a ``Counter``, logged every minute by each data-loader worker) counts ``images``,
``bad_images`` (skipped), ``missing_proposals`` (no ``proposal_boxes``), ``invalid_proposals`` (non-finite or
empty boxes, dropped), ``size_mismatch`` (dataset dict height/width differ from the decoded image),
``fallback_images``, ``no_usable_proposals`` and ``fallback_<mode>_boxes`` (padded rows per mode).

Box jitter (§3.2, probability ``BOX_JITTER_PROB``, r uniform in [-``BOX_JITTER_RATIO``, ``BOX_JITTER_RATIO``])
is drawn **independently per view** and per proposal, with an independent r for each of x, y, w, h: the paper
introduces it "to further encourage variance of scales and locations of object proposals across views",
which a jitter shared by all views would not do (it would move the box identically in every view). It is
applied in the V1 frame before the view's transform; since it is relative to the box size, that equals
jittering in the view's own frame. Boxes are then clipped to the view.

Random draws use NumPy's global RNG, which the pretraining loader seeds per sample from ``cfg.SEED`` and the
sample's stream position (``objpretrain/data/samplers.py``).

Speed (bench/mappers.py, docs/performance.md): one decode per image, at reduced size; one resize per view
(PyTorch's uint8 antialiased kernel, ``image_io.resize_rgb``); every later op works on arrays of at most
VIEW_SIZE pixels; blur and hue use OpenCV (see augmentations.py).
"""
import logging
from collections import Counter

import numpy as np
import torch
from PIL import Image

from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode
from detectron2.structures.boxes import pairwise_intersection
from detectron2.utils.logger import log_every_n_seconds, log_first_n

from .augmentations import build_byol_augmentations
from .build import MAPPER_REGISTRY
from .image_io import BadImageError, read_image_rgb, resize_rgb

__all__ = ["SoCoMapper"]

logger = logging.getLogger(__name__)

FALLBACK_MODES = ("repeat", "whole_image", "random")
# "random" fallback boxes follow SoCo's proposal filter (§3.2): sqrt(wh)/sqrt(WH) in [0.3, 0.8], 1/3 <= w/h <= 3.
RANDOM_BOX_SCALE = (0.3**2, 0.8**2)
RANDOM_BOX_RATIO = (1.0 / 3.0, 3.0)
_CROP_ATTEMPTS = 10
_COUNTER_LOG_SECONDS = 60


def sample_scaled_box(region_w, region_h, scale, ratio):
    """An integer box ``(x0, y0, w, h)`` inside ``region_w x region_h`` with area fraction in ``scale`` and
    log-uniform aspect ratio (w/h) in ``ratio``: torchvision's ``RandomResizedCrop.get_params``, on NumPy's RNG."""
    area = region_w * region_h
    log_ratio = np.log(ratio)
    for _ in range(_CROP_ATTEMPTS):
        target_area = area * np.random.uniform(*scale)
        aspect = np.exp(np.random.uniform(*log_ratio))
        w = int(round(np.sqrt(target_area * aspect)))
        h = int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= region_w and 0 < h <= region_h:
            return np.random.randint(0, region_w - w + 1), np.random.randint(0, region_h - h + 1), w, h
    # Fallback: the largest centred box whose aspect ratio is within range.
    aspect = region_w / region_h
    w, h = region_w, region_h
    if aspect < min(ratio):
        h = int(round(w / min(ratio)))
    elif aspect > max(ratio):
        w = int(round(h * max(ratio)))
    return (region_w - w) // 2, (region_h - h) // 2, max(w, 1), max(h, 1)


class ResizeTransform(T.ResizeTransform):
    """Detectron2's bilinear ``ResizeTransform`` (boxes unchanged) with pixels resized by ``resize_rgb``: the
    same antialiased bilinear filter as PIL's, to within 1 grey level, about 5x faster."""

    def apply_image(self, img, interp=None):
        if img.dtype != np.uint8 or img.ndim != 3 or (interp or self.interp) != Image.BILINEAR:
            return super().apply_image(img, interp)
        assert img.shape[:2] == (self.h, self.w), f"expected a {self.h}x{self.w} image, got {img.shape[:2]}"
        return resize_rgb(img, self.new_h, self.new_w)


@MAPPER_REGISTRY.register()
class SoCoMapper:
    """Maps a dataset dict with ``proposal_boxes`` to SoCo's views and boxes (docs/design.md, "SoCo mapper").

    Returns ``None`` for an unreadable image when ``OBJPRETRAIN.BAD_IMAGE_POLICY == "skip"`` (logged and
    counted; Detectron2's ``MapDataset`` then draws another image), and raises naming the file on ``"raise"``.
    """

    def __init__(self, cfg, is_train=True):
        soco = cfg.INPUT.SOCO
        self.view_size = int(soco.VIEW_SIZE)
        self.v3_size = int(soco.V3_SIZE)
        self.v4_size = int(soco.V4_SIZE)
        self.crop_scale = tuple(float(s) for s in soco.CROP_SCALE)
        self.crop_ratio = tuple(float(r) for r in soco.CROP_RATIO)
        self.num_proposals = int(soco.NUM_PROPOSALS)
        self.min_visible_fraction = float(soco.MIN_VISIBLE_FRACTION)
        self.jitter_prob = float(soco.BOX_JITTER_PROB)
        self.jitter_ratio = float(soco.BOX_JITTER_RATIO)
        self.fallback = soco.FALLBACK
        self.bad_image_policy = cfg.OBJPRETRAIN.BAD_IMAGE_POLICY
        self.flip = T.RandomFlip(prob=float(soco.HFLIP_PROB), horizontal=True, vertical=False)
        self.first_view_aug, self.other_view_aug = build_byol_augmentations(soco)
        self._check_config()
        self.counters = Counter()

    def _check_config(self):
        problems = []
        if self.view_size <= 0 or self.v3_size < 0 or self.v4_size < 0:
            problems.append("INPUT.SOCO.VIEW_SIZE must be > 0 and V3_SIZE, V4_SIZE >= 0")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            problems.append(f"INPUT.SOCO.CROP_SCALE must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            problems.append(f"INPUT.SOCO.CROP_RATIO must satisfy 0 < low <= high, got {self.crop_ratio}")
        if self.num_proposals < 1:
            problems.append(f"INPUT.SOCO.NUM_PROPOSALS must be >= 1, got {self.num_proposals}")
        if not 0 < self.min_visible_fraction <= 1:
            problems.append(f"INPUT.SOCO.MIN_VISIBLE_FRACTION must be in (0, 1], got {self.min_visible_fraction}")
        if not 0 <= self.jitter_prob <= 1 or not 0 <= self.jitter_ratio < 1:
            problems.append("INPUT.SOCO.BOX_JITTER_PROB must be in [0, 1] and BOX_JITTER_RATIO in [0, 1)")
        if self.fallback not in FALLBACK_MODES:
            problems.append(f"INPUT.SOCO.FALLBACK must be one of {FALLBACK_MODES}, got {self.fallback!r}")
        if self.bad_image_policy not in ("skip", "raise"):
            problems.append(
                f"OBJPRETRAIN.BAD_IMAGE_POLICY must be 'skip' or 'raise', got {self.bad_image_policy!r}"
            )
        if problems:
            raise ValueError("Invalid SoCo mapper config: " + "; ".join(problems))

    def __call__(self, dataset_dict):
        file_name = dataset_dict["file_name"]
        try:
            image, (orig_h, orig_w) = read_image_rgb(file_name, min_scale=self._decode_min_scale(file_name))
        except BadImageError as error:
            if self.bad_image_policy == "raise":
                raise
            self.counters["bad_images"] += 1
            logger.warning("Skipping unreadable image %s (%s)", file_name, error.reason)
            return None
        self.counters["images"] += 1
        listed_size = (dataset_dict.get("height"), dataset_dict.get("width"))
        if None not in listed_size and tuple(listed_size) != (orig_h, orig_w):
            # Proposal files are computed on the decoded (EXIF-upright) image, so its size is the one to trust.
            self.counters["size_mismatch"] += 1
            log_first_n(
                logging.WARNING,
                f"{file_name} decodes to {orig_w}x{orig_h} (EXIF-upright) but its dataset dict says "
                f"{listed_size[1]}x{listed_size[0]}; its proposals are read as {orig_w}x{orig_h} pixels",
                n=10,
            )

        size = self.view_size
        v1 = ResizeTransform(image.shape[0], image.shape[1], size, size).apply_image(image)
        proposals = self._proposals_in_v1(dataset_dict, ResizeTransform(orig_h, orig_w, size, size))

        # Geometry of each view from the V1 frame, and the pixels it produces (before flip and colour).
        x0, y0, w, h = sample_scaled_box(size, size, self.crop_scale, self.crop_ratio)
        v2_geometry = [T.CropTransform(x0, y0, w, h), ResizeTransform(h, w, size, size)]
        crops = [(x0, y0, x0 + w, y0 + h)]
        views = [("v1", [], v1), ("v2", v2_geometry, T.TransformList(v2_geometry).apply_image(v1))]
        if self.v3_size > 0:
            to_v3 = ResizeTransform(size, size, self.v3_size, self.v3_size)
            views.append(("v3", v2_geometry + [to_v3], to_v3.apply_image(views[1][2])))
        if self.v4_size > 0:
            x0, y0, w, h = self._sample_v4_crop(crops[0])
            v4_geometry = [T.CropTransform(x0, y0, w, h), ResizeTransform(h, w, self.v4_size, self.v4_size)]
            crops.append((x0, y0, x0 + w, y0 + h))
            views.append(("v4", v4_geometry, T.TransformList(v4_geometry).apply_image(v1)))

        selected = self._select_proposals(proposals, crops)

        out_views, out_boxes = [], []
        for view_index, (name, geometry, pixels) in enumerate(views):
            flip = self.flip.get_transform(pixels)
            to_view = T.TransformList(geometry + [flip])
            boxes = to_view.apply_box(self._jitter(selected))
            view_h, view_w = pixels.shape[:2]
            boxes = np.clip(boxes, 0, [view_w, view_h, view_w, view_h])
            augment = self.first_view_aug if view_index == 0 else self.other_view_aug
            pixels = augment(np.ascontiguousarray(flip.apply_image(pixels)))
            out_views.append(torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))))
            out_boxes.append(torch.as_tensor(boxes, dtype=torch.float32))

        log_every_n_seconds(logging.INFO, f"SoCo mapper counters: {dict(self.counters)}", n=_COUNTER_LOG_SECONDS)
        return {
            "image_id": str(dataset_dict["image_id"]),
            "file_name": file_name,
            "views": out_views,
            "boxes": out_boxes,
            "view_names": [name for name, _, _ in views],
        }

    def _decode_min_scale(self, file_name):
        """``min_scale`` for ``read_image_rgb``: the shorter side keeps at least VIEW_SIZE pixels, so V1 (the
        whole image resized to VIEW_SIZE x VIEW_SIZE) is a shrink from the decoded image as from the full one."""
        try:
            with Image.open(file_name) as header:  # parses the header only
                return self.view_size / min(header.size)
        except Exception:  # read_image_rgb reports the problem with the file
            return 1.0

    def _proposals_in_v1(self, dataset_dict, to_v1):
        """The image's valid proposals as XYXY boxes in V1 pixels (float64, N x 4)."""
        if "proposal_boxes" not in dataset_dict:
            self.counters["missing_proposals"] += 1
            return np.zeros((0, 4))
        boxes = np.asarray(dataset_dict["proposal_boxes"], dtype=np.float64)
        if boxes.size > 0 and (boxes.ndim != 2 or boxes.shape[1] != 4):
            raise ValueError(
                f"proposal_boxes of {dataset_dict['file_name']} must be N x 4, got shape {boxes.shape}"
            )
        boxes = boxes.reshape(-1, 4)
        mode = dataset_dict.get("proposal_bbox_mode", BoxMode.XYXY_ABS)
        boxes = BoxMode.convert(boxes, mode, BoxMode.XYXY_ABS)
        valid = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        self.counters["invalid_proposals"] += int((~valid).sum())
        return to_v1.apply_box(boxes[valid]).reshape(-1, 4)

    def _sample_v4_crop(self, v2_crop):
        # The fallback region (V2 crop ∩ V4 crop) must not be empty; below CROP_SCALE 0.5 two crops can miss.
        for _ in range(_CROP_ATTEMPTS):
            x0, y0, w, h = sample_scaled_box(self.view_size, self.view_size, self.crop_scale, self.crop_ratio)
            if min(x0 + w, v2_crop[2]) > max(x0, v2_crop[0]) and min(y0 + h, v2_crop[3]) > max(y0, v2_crop[1]):
                return x0, y0, w, h
        return v2_crop[0], v2_crop[1], v2_crop[2] - v2_crop[0], v2_crop[3] - v2_crop[1]

    def _select_proposals(self, proposals, crops):
        """K proposals (K x 4, V1 frame) visible in every crop, padded per FALLBACK when fewer are usable."""
        k = self.num_proposals
        candidates = Boxes(proposals)
        visible = torch.ones(len(candidates), dtype=torch.bool)
        for crop in crops:
            inside = pairwise_intersection(candidates, Boxes([crop]))[:, 0]
            visible &= inside >= self.min_visible_fraction * candidates.area()
        usable = proposals[visible.numpy()]
        if len(usable) >= k:
            return usable[np.random.choice(len(usable), k, replace=False)]

        self.counters["fallback_images"] += 1
        if len(usable) == 0:
            self.counters["no_usable_proposals"] += 1
        mode = "whole_image" if self.fallback == "repeat" and len(usable) == 0 else self.fallback
        self.counters[f"fallback_{mode}_boxes"] += k - len(usable)
        region = np.array(crops[0], dtype=np.float64)
        for crop in crops[1:]:
            region = np.concatenate([np.maximum(region[:2], crop[:2]), np.minimum(region[2:], crop[2:])])
        if mode == "repeat":
            padding = usable[np.random.choice(len(usable), k - len(usable), replace=True)]
        elif mode == "whole_image":
            padding = np.repeat(region[None], k - len(usable), axis=0)
        else:
            padding = np.array([self._random_box(region) for _ in range(k - len(usable))])
        selected = np.concatenate([usable, padding.reshape(-1, 4)])
        return selected[np.random.permutation(k)]

    @staticmethod
    def _random_box(region):
        region_w, region_h = int(region[2] - region[0]), int(region[3] - region[1])
        x0, y0, w, h = sample_scaled_box(region_w, region_h, RANDOM_BOX_SCALE, RANDOM_BOX_RATIO)
        return [region[0] + x0, region[1] + y0, region[0] + x0 + w, region[1] + y0 + h]

    def _jitter(self, boxes):
        """SoCo §3.2 box jitter: x += r_x w, y += r_y h, w += r_w w, h += r_h h, applied with BOX_JITTER_PROB."""
        if self.jitter_prob == 0 or self.jitter_ratio == 0:
            return boxes
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        cx, cy = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
        r = np.random.uniform(-self.jitter_ratio, self.jitter_ratio, size=(len(boxes), 4))
        r *= (np.random.rand(len(boxes)) < self.jitter_prob)[:, None]
        cx, cy, w, h = cx + r[:, 0] * w, cy + r[:, 1] * h, w * (1 + r[:, 2]), h * (1 + r[:, 3])
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
