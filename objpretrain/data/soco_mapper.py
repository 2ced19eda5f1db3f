"""SoCo's views and proposal boxes (SoCo §3.2; SoCo* §4.3), as a Detectron2 dataset mapper.

Views, built from one decode of the image (big JPEGs decode at reduced size with PIL's draft mode, the
smallest DCT scale that keeps the shorter side at least ``VIEW_SIZE``, so V1 is still a shrink):

- V1: the whole image resized to ``VIEW_SIZE`` x ``VIEW_SIZE`` (224);
- V2: a random crop of V1 (area scale ``CROP_SCALE``, log-uniform aspect ratio ``CROP_RATIO``) resized to
  ``VIEW_SIZE``;
- V3 (``V3_SIZE > 0``): V2 downsampled to ``V3_SIZE`` (112), returned at 112 x 112; the pretraining FPN takes
  any size, so it is not padded (objpretrain/modeling/any_size_fpn.py). ``V3_SIZE = 0`` drops V3 (the C4
  variant, §3.3);
- V4 (``V4_SIZE > 0``, SoCo*): another random crop of V1, like V2's, resized to ``V4_SIZE`` (192).

Then every view is augmented independently (§3.2 "each view is randomly and independently augmented"): a
horizontal flip (``HFLIP_PROB``), then BYOL's colour pipeline, with BYOL's first-view probabilities for V1 and
its second-view ones for V2, V3, V4 (``objpretrain.data.augmentations``).

All geometry is a Detectron2 ``Transform`` (``ResizeTransform``, ``CropTransform``, ``HFlipTransform``): each
view's transform list from the decoded image's frame is applied to the view's pixels and, through ``apply_box``,
to its boxes.

Proposals (``proposal_boxes`` attached from a proposal file, original-image pixels): a proposal is *usable*
when it is finite with positive size and survives the crops of its views: at least ``MIN_VISIBLE_FRACTION`` of
its area inside the V2 crop (and inside the V4 crop when V4 is on), or, with ``PROPOSAL_KEEP_RULE
"any_overlap"``, any part of it; K = ``NUM_PROPOSALS`` of them are drawn without replacement. Row i of every
view's ``boxes`` is the same proposal, and ``box_ids`` gives each row's proposal index. With fewer than K usable
proposals (including none, or no ``proposal_boxes`` at all) the image still yields K rows, padded per
``FALLBACK``:

- ``"repeat"``: every usable proposal once, then usable proposals drawn again at random (box jitter makes
  the repeats differ); an image with no usable proposal gets ``"whole_image"`` rows;
- ``"whole_image"``: the region visible in every view (the V2 crop, intersected with the V4 crop if on);
- ``"random"``: random boxes inside that region, with the sizes and aspect ratios that SoCo's proposal filter
  keeps (§3.2: sqrt(wh / WH) in [0.3, 0.8], w/h in [1/3, 3]), as in the "Random" row of Table 5(c).

The official recipe (hologerry/SoCo; docs/fidelity.md) differs in keys that default to the paper:
``CROP_FROM "original"`` crops V2 (and V4) from the decoded image rather than from V1; ``OWN_PROPOSAL_VIEWS``
lists views cropped on their own with their own K proposals, for which V1 carries a second set of boxes
(``v1_boxes[name]``, K x 4, row i showing the view's row i); ``CROP_TRIES`` redraws the crops while a group of
views keeps fewer than max(K // 2, 1) proposals; ``BOX_JITTER_VIEWS "v1"`` and ``BOX_JITTER_ANCHOR "corner"``
jitter only V1's boxes, from their corner; ``CUTOUT_PROB`` blanks squares inside the boxes of every view but V1.

``SoCoMapper.counters`` (a ``Counter``, logged every minute by each data-loader worker) counts ``images``,
``bad_images`` (skipped), ``missing_proposals`` (no ``proposal_boxes``), ``invalid_proposals`` (non-finite or
empty boxes, dropped), ``size_mismatch`` (dataset dict height/width differ from the decoded image),
``fallback_images`` (per group of views sharing proposals: one per image in the paper's recipe),
``no_usable_proposals`` and ``fallback_<mode>_boxes`` (padded rows per mode).

Box jitter (§3.2, probability ``BOX_JITTER_PROB``, r uniform in [-``BOX_JITTER_RATIO``, ``BOX_JITTER_RATIO``])
is drawn **independently per view** and per proposal, with an independent r for each of x, y, w, h: the paper
introduces it "to further encourage variance of scales and locations of object proposals across views",
which a jitter shared by all views would not do (it would move the box identically in every view). It is
applied in the decoded image's frame before the view's transform; since it is relative to the box size, that
equals jittering in the view's own frame. Boxes are then clipped to the view.

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
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode
from detectron2.structures.boxes import pairwise_intersection
from detectron2.utils.logger import log_every_n_seconds, log_first_n
from PIL import Image

from .augmentations import build_byol_augmentations
from .build import MAPPER_REGISTRY, PretrainMapper
from .image_io import BadImageError, read_image_rgb, resize_rgb

__all__ = ["SoCoMapper"]

logger = logging.getLogger(__name__)

# The INPUT.SOCO.FALLBACK modes the mapper implements (objpretrain.config_validation checks the config against them).
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
class SoCoMapper(PretrainMapper):
    """Maps a dataset dict with ``proposal_boxes`` to SoCo's views and boxes (docs/design.md, "SoCo mapper").

    Returns ``None`` for an unreadable image when ``OBJPRETRAIN.BAD_IMAGE_POLICY == "skip"`` (logged and
    counted; Detectron2's ``MapDataset`` then draws another image), and raises naming the file on ``"raise"``.
    """

    def __init__(self, cfg, is_train=True, dataset_dicts=None):
        # dataset_dicts: not needed, nothing of the SoCo views depends on the dataset as a whole. The values are
        # checked once, before launch (objpretrain.config_validation), not here in every worker.
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
        self.crop_from = soco.CROP_FROM
        self.own_proposal_views = tuple(soco.OWN_PROPOSAL_VIEWS)
        self.keep_rule = soco.PROPOSAL_KEEP_RULE
        self.crop_tries = int(soco.CROP_TRIES)
        self.jitter_views = soco.BOX_JITTER_VIEWS
        self.jitter_anchor = soco.BOX_JITTER_ANCHOR
        self.cutout_prob = float(soco.CUTOUT_PROB)
        self.cutout_area = tuple(float(a) for a in soco.CUTOUT_AREA)
        # Cutout's fill: the pixel mean, which normalization maps to 0 (what the official code writes), in the
        # views' RGB order (MODEL.PIXEL_MEAN is in INPUT.FORMAT's).
        mean = np.asarray(cfg.MODEL.PIXEL_MEAN, dtype=np.float64)
        mean = mean[::-1] if cfg.INPUT.FORMAT == "BGR" else mean
        self.cutout_fill = np.round(mean).clip(0, 255).astype(np.uint8)
        self.bad_image_policy = cfg.OBJPRETRAIN.BAD_IMAGE_POLICY
        self.flip = T.RandomFlip(prob=float(soco.HFLIP_PROB), horizontal=True, vertical=False)
        self.first_view_aug, self.other_view_aug = build_byol_augmentations(soco)
        self.counters = Counter()

    def dataset_items(self, dataset_dicts):
        """The dicts themselves; a warning when none has proposals (no DATASETS.PROPOSAL_FILES_TRAIN): every image
        is then padded per INPUT.SOCO.FALLBACK."""
        if not any("proposal_boxes" in d for d in dataset_dicts):
            logger.warning("No image of the training set has proposals (DATASETS.PROPOSAL_FILES_TRAIN is empty?): the "
                           "SoCo mapper pads every image per INPUT.SOCO.FALLBACK=%r", self.fallback)
        return dataset_dicts

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

        # Every box lives in the frame of the decoded image (the "source"); each view has its transforms from it.
        source_h, source_w = image.shape[:2]
        proposals = self._proposals_in_source(dataset_dict, ResizeTransform(orig_h, orig_w, source_h, source_w))
        to_v1 = ResizeTransform(source_h, source_w, self.view_size, self.view_size)
        v1 = to_v1.apply_image(image)

        # Draw the crops; official recipe: again while a group of views keeps too few proposals (CROP_TRIES).
        enough = max(self.num_proposals // 2, 1)
        for _ in range(self.crop_tries):
            views = self._draw_views(source_w, source_h, to_v1)
            groups = self._view_groups(views)
            usable = [self._usable(proposals, [views[name]["crop"] for name in group]) for group in groups]
            if min(len(u) for u in usable) >= enough:
                break
            enough = max(enough // 2, 1)
        selections = [self._select_proposals(proposals, u, [views[name]["crop"] for name in group])
                      for u, group in zip(usable, groups)]
        group_of = {name: index for index, group in enumerate(groups) for name in group}
        self._render(views, image, v1)

        # V1's boxes, once per group: V1 pairs with every view, and each group brings its own proposals.
        v1_flip = self.flip.get_transform(v1)
        v1_geometry = T.TransformList([to_v1, v1_flip])
        v1_boxes = [self._boxes_in_view(v1_geometry, boxes, v1.shape, jitter=True) for boxes, _ in selections]
        out_views = [self._finish_pixels(v1, v1_flip, self.first_view_aug, [])]
        out_boxes, out_ids = [v1_boxes[0]], [selections[0][1]]
        names = ["v1"]
        for name, view in views.items():
            flip = self.flip.get_transform(view["pixels"])
            boxes, ids = selections[group_of[name]]
            boxes = self._boxes_in_view(T.TransformList(view["geometry"] + [flip]), boxes, view["pixels"].shape,
                                        jitter=self.jitter_views == "all")
            out_views.append(self._finish_pixels(view["pixels"], flip, self.other_view_aug, boxes))
            out_boxes.append(boxes)
            out_ids.append(ids)
            names.append(name)

        log_every_n_seconds(logging.INFO, f"SoCo mapper counters: {dict(self.counters)}", n=_COUNTER_LOG_SECONDS)
        out = {
            "image_id": str(dataset_dict["image_id"]),
            "file_name": file_name,
            "views": out_views,
            "boxes": out_boxes,
            "box_ids": [torch.as_tensor(ids, dtype=torch.int64) for ids in out_ids],
            "view_names": names,
        }
        if len(groups) > 1:  # V1's boxes for the views with their own proposals
            out["v1_boxes"] = {name: v1_boxes[group_of[name]] for name in names[1:] if group_of[name] > 0}
        return out

    def _decode_min_scale(self, file_name):
        """``min_scale`` for ``read_image_rgb``: the shorter side keeps at least VIEW_SIZE pixels, so V1 (the
        whole image resized to VIEW_SIZE x VIEW_SIZE) is a shrink from the decoded image as from the full one.
        Crops of the original (CROP_FROM "original") keep the smallest crop's shorter side at VIEW_SIZE too."""
        try:
            with Image.open(file_name) as header:  # parses the header only
                shorter = min(header.size)
        except Exception:  # read_image_rgb reports the problem with the file
            return 1.0
        if self.crop_from == "original":
            # The narrowest crop: area CROP_SCALE[0] of the image at the most elongated aspect ratio.
            elongation = max(self.crop_ratio[1], 1.0 / self.crop_ratio[0])
            shorter *= np.sqrt(self.crop_scale[0] / elongation)
        return min(1.0, self.view_size / shorter)

    def _proposals_in_source(self, dataset_dict, to_source):
        """The image's valid proposals as XYXY boxes in decoded-image pixels (float64, N x 4)."""
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
        return to_source.apply_box(boxes[valid]).reshape(-1, 4)

    def _draw_views(self, source_w, source_h, to_v1):
        """The views after V1, name -> {"geometry": its transforms from the source frame (for boxes), "crop": its
        crop as an XYXY source-frame box, and for its pixels either "pixel_geometry" (the transforms from the image
        it is cut from: V1, or the source) or "from_v2" (V3 as V2 downsampled)}; :meth:`_render` adds "pixels"."""
        # Crops are drawn in the frame they are cut from (V1's 224 x 224, or the source image) and mapped back.
        if self.crop_from == "v1":
            frame_w = frame_h = self.view_size
            base, to_frame = [to_v1], (source_w / self.view_size, source_h / self.view_size)
        else:
            frame_w, frame_h, base, to_frame = source_w, source_h, [], (1.0, 1.0)

        def crop_view(crop, size):
            x0, y0, w, h = crop
            pixel_geometry = [T.CropTransform(x0, y0, w, h), ResizeTransform(h, w, size, size)]
            source_box = np.array([x0 * to_frame[0], y0 * to_frame[1], (x0 + w) * to_frame[0], (y0 + h) * to_frame[1]])
            return {"geometry": base + pixel_geometry, "pixel_geometry": pixel_geometry, "crop": source_box,
                    "frame_crop": (x0, y0, x0 + w, y0 + h)}

        views = {"v2": crop_view(sample_scaled_box(frame_w, frame_h, self.crop_scale, self.crop_ratio), self.view_size)}
        if self.v3_size > 0:
            if "v3" in self.own_proposal_views:
                views["v3"] = crop_view(sample_scaled_box(frame_w, frame_h, self.crop_scale, self.crop_ratio),
                                        self.v3_size)
            else:  # V2 downsampled (§3.2): V2's crop and proposals
                to_v3 = ResizeTransform(self.view_size, self.view_size, self.v3_size, self.v3_size)
                views["v3"] = {"geometry": views["v2"]["geometry"] + [to_v3], "crop": views["v2"]["crop"],
                               "from_v2": to_v3}
        if self.v4_size > 0:
            shared = "v4" not in self.own_proposal_views
            crop = self._sample_v4_crop(frame_w, frame_h, views["v2"]["frame_crop"] if shared else None)
            views["v4"] = crop_view(crop, self.v4_size)
        return views

    def _render(self, views, image, v1):
        """Fills in each view's pixels (before flip and colour)."""
        source = v1 if self.crop_from == "v1" else image
        for view in views.values():
            if "from_v2" not in view:
                view["pixels"] = T.TransformList(view["pixel_geometry"]).apply_image(source)
        for view in views.values():
            if "from_v2" in view:
                view["pixels"] = view["from_v2"].apply_image(views["v2"]["pixels"])

    def _sample_v4_crop(self, frame_w, frame_h, v2_crop):
        """V4's crop (x0, y0, w, h). Sharing V2's proposals (``v2_crop`` given), the region visible in both must not
        be empty: below CROP_SCALE 0.5 two crops can miss each other."""
        for _ in range(_CROP_ATTEMPTS):
            x0, y0, w, h = sample_scaled_box(frame_w, frame_h, self.crop_scale, self.crop_ratio)
            if v2_crop is None or (min(x0 + w, v2_crop[2]) > max(x0, v2_crop[0])
                                   and min(y0 + h, v2_crop[3]) > max(y0, v2_crop[1])):
                return x0, y0, w, h
        return v2_crop[0], v2_crop[1], v2_crop[2] - v2_crop[0], v2_crop[3] - v2_crop[1]

    def _view_groups(self, views):
        """Lists of view names that share one selection of proposals: V2 with V3-from-V2 and a shared V4, then each
        OWN_PROPOSAL_VIEWS view on its own."""
        own = [name for name in views if name in self.own_proposal_views]
        return [[name for name in views if name not in own]] + [[name] for name in own]

    def _usable(self, proposals, crops):
        """Indices of the proposals that survive every one of ``crops`` (source-frame XYXY) by PROPOSAL_KEEP_RULE."""
        candidates = Boxes(torch.as_tensor(proposals))
        keep = torch.ones(len(candidates), dtype=torch.bool)
        for crop in crops:
            inside = pairwise_intersection(candidates, Boxes(torch.as_tensor(crop[None])))[:, 0]
            if self.keep_rule == "any_overlap":
                keep &= inside > 0
            else:
                keep &= inside >= self.min_visible_fraction * candidates.area()
        return np.flatnonzero(keep.numpy())

    def _select_proposals(self, proposals, usable, crops):
        """K rows (K x 4, source frame) from the ``usable`` proposals, padded per FALLBACK when there are fewer,
        and each row's proposal id: its index in ``proposals``; -1 for "whole_image" rows (one region); -2, -3,
        ... for "random" rows (each its own box)."""
        k = self.num_proposals
        if len(usable) >= k:
            chosen = usable[np.random.choice(len(usable), k, replace=False)]
            return proposals[chosen], chosen

        self.counters["fallback_images"] += 1
        if len(usable) == 0:
            self.counters["no_usable_proposals"] += 1
        mode = "whole_image" if self.fallback == "repeat" and len(usable) == 0 else self.fallback
        missing = k - len(usable)
        self.counters[f"fallback_{mode}_boxes"] += missing
        region = np.array(crops[0], dtype=np.float64)
        for crop in crops[1:]:
            region = np.concatenate([np.maximum(region[:2], crop[:2]), np.minimum(region[2:], crop[2:])])
        if mode == "repeat":
            padding_ids = usable[np.random.choice(len(usable), missing, replace=True)]
            padding = proposals[padding_ids]
        elif mode == "whole_image":
            padding, padding_ids = np.repeat(region[None], missing, axis=0), np.full(missing, -1)
        else:
            padding = np.array([self._random_box(region) for _ in range(missing)])
            padding_ids = -2 - np.arange(missing)
        boxes = np.concatenate([proposals[usable].reshape(-1, 4), padding.reshape(-1, 4)])
        ids = np.concatenate([usable, padding_ids]).astype(np.int64)
        order = np.random.permutation(k)
        return boxes[order], ids[order]

    @staticmethod
    def _random_box(region):
        region_w, region_h = max(int(region[2] - region[0]), 1), max(int(region[3] - region[1]), 1)
        x0, y0, w, h = sample_scaled_box(region_w, region_h, RANDOM_BOX_SCALE, RANDOM_BOX_RATIO)
        return [region[0] + x0, region[1] + y0, region[0] + x0 + w, region[1] + y0 + h]

    def _boxes_in_view(self, geometry, boxes, shape, jitter):
        """Source-frame ``boxes`` (jittered first if ``jitter``) through the view's transforms, clipped to it."""
        if jitter:
            boxes = self._jitter(boxes)
        boxes = geometry.apply_box(boxes)
        view_h, view_w = shape[:2]
        return torch.as_tensor(np.clip(boxes, 0, [view_w, view_h, view_w, view_h]), dtype=torch.float32)

    def _finish_pixels(self, pixels, flip, augment, boxes):
        """Flip, colour, then Cutout in ``boxes`` (the view's, after the flip): a 3 x S x S uint8 tensor."""
        pixels = augment(np.ascontiguousarray(flip.apply_image(pixels)))
        if self.cutout_prob > 0 and len(boxes):
            pixels = self._cutout(pixels, boxes)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def _cutout(self, pixels, boxes):
        """Official RandomCutoutInBbox (contrast/data/transform_ops.py): for each box, with CUTOUT_PROB, a square of
        CUTOUT_AREA x the box's area, centred at a random integer point of the box, set to the pixel mean."""
        pixels = np.array(pixels)  # a copy: the colour ops may return their input
        view_h, view_w = pixels.shape[:2]
        for x0, y0, x1, y1 in boxes.tolist():
            if np.random.rand() >= self.cutout_prob or x1 <= x0 or y1 <= y0:
                continue
            half = int(round(np.sqrt(np.random.uniform(*self.cutout_area) * (x1 - x0) * (y1 - y0)))) // 2
            cx = np.random.randint(int(x0), int(x1) + 1)
            cy = np.random.randint(int(y0), int(y1) + 1)
            pixels[max(cy - half, 0):min(cy + half, view_h - 1) + 1,
                   max(cx - half, 0):min(cx + half, view_w - 1) + 1] = self.cutout_fill
        return pixels

    def _jitter(self, boxes):
        """SoCo §3.2 box jitter, applied with BOX_JITTER_PROB: w += r_w w, h += r_h h, and x += r_x w, y += r_y h
        for the box centre (BOX_JITTER_ANCHOR "center") or its top-left corner ("corner", the official code)."""
        if self.jitter_prob == 0 or self.jitter_ratio == 0:
            return boxes
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        r = np.random.uniform(-self.jitter_ratio, self.jitter_ratio, size=(len(boxes), 4))
        r *= (np.random.rand(len(boxes)) < self.jitter_prob)[:, None]
        new_w, new_h = w * (1 + r[:, 2]), h * (1 + r[:, 3])
        if self.jitter_anchor == "corner":
            x0, y0 = boxes[:, 0] + r[:, 0] * w, boxes[:, 1] + r[:, 1] * h
            return np.stack([x0, y0, x0 + new_w, y0 + new_h], axis=1)
        cx, cy = boxes[:, 0] + w / 2 + r[:, 0] * w, boxes[:, 1] + h / 2 + r[:, 1] * h
        return np.stack([cx - new_w / 2, cy - new_h / 2, cx + new_w / 2, cy + new_h / 2], axis=1)
