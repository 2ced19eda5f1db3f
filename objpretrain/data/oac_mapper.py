"""Object-aware cropping (OAC §4.1): two views of one image, cropped around an object proposal.

Crop modes (``INPUT.OAC.CROP_MODE``):

- ``"scene"``: two random resized crops of the whole image, scale (``SCENE_CROP_MIN``, ``SCENE_CROP_MAX``) (the
  MoCo-v2 baseline: (0.2, 1));
- ``"obj-obj"``: both views are random crops inside one randomly chosen proposal;
- ``"obj-obj+dilate"``: view 1 is a random crop inside the proposal, view 2 a random crop inside the proposal
  dilated by ``DILATION`` x the image size and clipped to the image.

Crops inside a proposal use the scale range (s_min, 1) with s_min = ``SCENE_CROP_MIN`` / average proposal size
(§5), computed once from the training set's proposals, or ``CROP_SCALE_MIN`` when set. Every view then gets
MoCo-v2's flip and colour augmentations. An image with no usable proposal gets two scene crops; such images are
logged and counted (``num_scene_fallbacks``).

For the pretext tasks the mapper also draws the rotation label of view 1 (the model rotates view 1 itself, in
a separate forward, so the contrastive loss sees it upright, §4.2.1) and, when the localization loss is on,
renders the whole image and the p x p patch label of view 1's crop (§4.2.2).

Speed (bench/mappers.py, docs/performance.md): the crops are drawn from the image size in the file header,
then the image is decoded once, at the smallest JPEG DCT scale (PIL draft: 1/2, 1/4, 1/8) that keeps every
rendered region at least ``CROP_SIZE`` pixels on each side, so each view is still a shrink of the same pixels;
crops are mapped to the decoded image's pixels and resized with ``image_io.resize_rgb`` (antialiased bilinear).
"""
import logging

import numpy as np
import torch
from detectron2.structures import BoxMode
from detectron2.utils.logger import log_every_n_seconds
from PIL import Image

from .augmentations import PhotometricAugmentation
from .boxes_oac import (
    average_box_fraction,
    crop_scale_min,
    dilate_box,
    localization_target,
    pixel_region,
    sample_crop_in_region,
    widen_small_box_official,
)
from .build import MAPPER_REGISTRY, PretrainMapper, get_pretrain_dataset_dicts
from .image_io import BadImageError, read_image_rgb, resize_rgb

__all__ = ["OACMapper", "CROP_MODES", "estimate_crop_scale_min", "oriented_image_size", "source_boxes"]

logger = logging.getLogger(__name__)

CROP_MODES = ("scene", "obj-obj", "obj-obj+dilate")

# Images whose size must be read from the file header to average proposal sizes; beyond this many dicts the
# average is taken over an evenly spaced subset (the estimate of a mean does not need 10^6 images).
_MAX_IMAGES_FOR_AVERAGE = 5000
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


@MAPPER_REGISTRY.register()
class OACMapper(PretrainMapper):
    """Maps a dataset dict to ``{"image_id", "file_name", "view1", "view2", "rotation_label"}`` plus
    ``"whole_image"`` and ``"loc_target"`` when ``MODEL.OAC.LAMBDA_LOC > 0`` (see docs/design.md)."""

    def __init__(self, cfg, is_train=True, dataset_dicts=None):
        # The values are checked once, before launch (objpretrain.config_validation), not here in every worker.
        oac = cfg.INPUT.OAC
        self.swap_views_prob = float(oac.SWAP_VIEWS_PROB)
        self.item_per_box = bool(oac.ITEM_PER_BOX)
        self.is_train = is_train
        self.crop_mode = oac.CROP_MODE
        self.dilation = float(oac.DILATION)
        self.dilation_mode = oac.DILATION_MODE
        self.min_box_side = float(oac.MIN_BOX_SIDE)
        self.max_proposals = int(oac.MAX_PROPOSALS)
        self.use_gt_boxes = bool(oac.USE_GT_BOXES)
        self.crop_size = int(oac.CROP_SIZE)
        self.crop_ratio = tuple(float(r) for r in oac.CROP_RATIO)
        self.scene_scale = (float(oac.SCENE_CROP_MIN), float(oac.SCENE_CROP_MAX))
        self.num_rotations = len(oac.ROTATIONS)
        self.loc_grid = int(oac.LOC_GRID)
        self.with_localization = cfg.MODEL.OAC.LAMBDA_LOC > 0
        self.hflip_prob = float(oac.HFLIP_PROB)
        self.skip_bad_images = cfg.OBJPRETRAIN.BAD_IMAGE_POLICY == "skip"
        self.photometric = PhotometricAugmentation(
            color_jitter=tuple(oac.COLOR_JITTER),
            color_jitter_prob=oac.COLOR_JITTER_PROB,
            grayscale_prob=oac.GRAYSCALE_PROB,
            blur_prob=oac.BLUR_PROB,
            solarize_prob=0.0,
        )

        if self.crop_mode == "scene":
            self.object_scale = self.scene_scale
        else:
            s_min = float(oac.CROP_SCALE_MIN)
            if s_min <= 0:
                if dataset_dicts is None:
                    dataset_dicts = get_pretrain_dataset_dicts(cfg)
                s_min = estimate_crop_scale_min(
                    dataset_dicts, oac.SCENE_CROP_MIN, self.max_proposals, self.use_gt_boxes
                )
            self.object_scale = (s_min, 1.0)
        dilated_min = float(oac.DILATED_CROP_SCALE_MIN)
        self.dilated_scale = (dilated_min, 1.0) if dilated_min > 0 else self.object_scale
        self.num_scene_fallbacks = 0
        self.num_bad_images = 0
        logger.info(
            "OAC mapper: crop mode %s, object crop scale %s, dilated crop scale %s, dilation %s (%s), "
            "boxes from %s, localization views %s",
            self.crop_mode, self.object_scale, self.dilated_scale, self.dilation, self.dilation_mode,
            "annotations" if self.use_gt_boxes else "proposal_boxes", "on" if self.with_localization else "off",
        )

    # ---------------------------------------------------------------- boxes and crops
    def dataset_items(self, dataset_dicts):
        """The items of an epoch (``build_pretrain_loader`` asks the mapper): the dicts, or with INPUT.OAC.ITEM_PER_BOX
        one shallow copy per box, each with its box in ``"oac_box"`` (XYXY_ABS); an image without boxes stays one
        item (its crops fall back to scene crops)."""
        if not self.item_per_box or self.crop_mode == "scene":
            return dataset_dicts
        items = []
        for d in dataset_dicts:
            boxes = source_boxes(d, self.max_proposals, self.use_gt_boxes)  # none without proposal_boxes
            items.extend([{**d, "oac_box": box} for box in boxes] or [d])
        logger.info("OAC: one item per box: %d items from %d images", len(items), len(dataset_dicts))
        return items

    def candidate_boxes(self, dataset_dict, height, width):
        """The boxes one is drawn from: XYXY_ABS float32 K x 4, clipped, at least 1 px wide and high (the item's own
        box alone with INPUT.OAC.ITEM_PER_BOX)."""
        if "oac_box" in dataset_dict:
            return self._valid_boxes(np.asarray(dataset_dict["oac_box"], dtype=np.float32).reshape(1, 4), height, width)
        if not self.use_gt_boxes and "proposal_boxes" not in dataset_dict:
            raise KeyError(
                f"{dataset_dict.get('file_name')}: no 'proposal_boxes' in the dataset dict, but INPUT.OAC."
                f"CROP_MODE={self.crop_mode!r} needs proposals; set DATASETS.PROPOSAL_FILES_TRAIN (or "
                f"INPUT.OAC.USE_GT_BOXES True, or CROP_MODE 'scene')"
            )
        return self._valid_boxes(source_boxes(dataset_dict, self.max_proposals, self.use_gt_boxes).astype(np.float32),
                                 height, width)

    @staticmethod
    def _valid_boxes(boxes, height, width):
        boxes = boxes[np.isfinite(boxes).all(axis=1)]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        return boxes[keep]

    def sample_crops(self, dataset_dict, height, width, rng):
        """Draws the two crop rectangles. Returns ``(crop1, crop2, region1, region2, box)``, where each crop
        lies inside its region (integer pixel rectangles) and ``box`` is the chosen proposal (``None`` for
        scene crops)."""
        whole = (0, 0, width, height)
        boxes = None if self.crop_mode == "scene" else self.candidate_boxes(dataset_dict, height, width)
        if boxes is not None and len(boxes) == 0:
            self.num_scene_fallbacks += 1
            log_every_n_seconds(
                logging.WARNING,
                f"OAC: {dataset_dict.get('file_name')} has no usable "
                f"{'ground-truth box' if self.use_gt_boxes else 'proposal'}; using scene crops "
                f"({self.num_scene_fallbacks} such images so far in this worker)",
                n=10,
                name=__name__,
            )
        if boxes is None or len(boxes) == 0:
            crop1 = sample_crop_in_region(whole, self.scene_scale, self.crop_ratio, rng)
            crop2 = sample_crop_in_region(whole, self.scene_scale, self.crop_ratio, rng)
            return crop1, crop2, whole, whole, None
        box = boxes[int(rng.integers(len(boxes)))]
        region1 = pixel_region(self._widen(box, height, width), height, width)
        if self.crop_mode == "obj-obj":
            region2, scale2 = region1, self.object_scale
        else:
            dilated = dilate_box(box, self.dilation, height, width, self.dilation_mode)
            region2 = pixel_region(self._widen(dilated, height, width), height, width)
            scale2 = self.dilated_scale
        crop1 = sample_crop_in_region(region1, self.object_scale, self.crop_ratio, rng)
        crop2 = sample_crop_in_region(region2, scale2, self.crop_ratio, rng)
        return crop1, crop2, region1, region2, box

    def _widen(self, box, height, width):
        """``box``, or with INPUT.OAC.MIN_BOX_SIDE > 0 the released code's widening of small boxes."""
        if self.min_box_side <= 0:
            return box
        return widen_small_box_official(box, self.min_box_side, height, width)

    # ---------------------------------------------------------------- rendering
    def _resize(self, image):
        """An H x W x 3 uint8 array resized to CROP_SIZE x CROP_SIZE (antialiased when shrinking, as
        torchvision's ``antialias=True``)."""
        return resize_rgb(image, self.crop_size, self.crop_size)

    def _to_view(self, image, flip):
        if flip:
            image = image[:, ::-1]
        image = self.photometric(np.ascontiguousarray(image))
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))

    def _render(self, image, orig_size, crop, rng):
        x0, y0, x1, y1 = _to_decoded_pixels(crop, image.shape[:2], orig_size)
        return self._to_view(self._resize(image[y0:y1, x0:x1]), rng.random() < self.hflip_prob)

    def _render_whole_image(self, image, orig_size, crop, rng):
        height, width = orig_size
        target = localization_target(crop, height, width, self.loc_grid)
        # The localization view is the whole image with all of view 1's augmentations but the crop (§4.2.2);
        # a flip mirrors the patch grid with it.
        flip = rng.random() < self.hflip_prob
        if flip:
            target = target.reshape(self.loc_grid, self.loc_grid)[:, ::-1].reshape(-1).copy()
        return self._to_view(self._resize(image), flip), torch.from_numpy(target)

    def _decode_min_scale(self, crops, height, width):
        """The smallest fraction of the full size at which every rendered region keeps CROP_SIZE pixels a side."""
        regions = list(crops) + ([(0, 0, width, height)] if self.with_localization else [])
        shortest = min(min(x1 - x0, y1 - y0) for x0, y0, x1, y1 in regions)
        return self.crop_size / max(shortest, 1)

    def _skip_or_raise(self, file_name, error):
        if not self.skip_bad_images:
            raise error
        self.num_bad_images += 1
        logger.warning("OAC: skipping %s (%s); %d unreadable images so far in this worker",
                       file_name, error.reason, self.num_bad_images)

    def __call__(self, dataset_dict):
        file_name = dataset_dict["file_name"]
        try:
            height, width = oriented_image_size(file_name)  # header only: the crops decide the decode scale
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
            self._skip_or_raise(file_name, BadImageError(file_name, f"cannot read the header ({error})"))
            return None
        expected = (dataset_dict.get("height"), dataset_dict.get("width"))
        if None not in expected and expected != (height, width):
            raise ValueError(
                f"{file_name}: the dataset dict says {expected[0]}x{expected[1]} (HxW) but the image decodes "
                f"(EXIF-oriented) as {height}x{width}; its boxes would be misplaced"
            )
        # Derived from NumPy's global RNG, which Detectron2 seeds per worker, so runs are reproducible.
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        crop1, crop2, _, _, _ = self.sample_crops(dataset_dict, height, width, rng)
        try:
            image, orig_size = read_image_rgb(
                file_name, min_scale=self._decode_min_scale((crop1, crop2), height, width)
            )
        except BadImageError as error:
            self._skip_or_raise(file_name, error)
            return None
        output = {
            "image_id": str(dataset_dict.get("image_id", "")),
            "file_name": file_name,
            "view1": self._render(image, orig_size, crop1, rng),
            "view2": self._render(image, orig_size, crop2, rng),
            "rotation_label": int(rng.integers(self.num_rotations)),
        }
        if self.swap_views_prob > 0 and rng.random() < self.swap_views_prob:
            output["view1"], output["view2"] = output["view2"], output["view1"]
        if self.with_localization:
            output["whole_image"], output["loc_target"] = self._render_whole_image(image, orig_size, crop1, rng)
        return output


def _to_decoded_pixels(crop, decoded_size, orig_size):
    """A crop in original-image pixels as the nearest whole-pixel rectangle (at least 1 px) of the decoded image."""
    if tuple(decoded_size) == tuple(orig_size):
        return crop
    scale_y, scale_x = decoded_size[0] / orig_size[0], decoded_size[1] / orig_size[1]
    x0 = min(int(round(crop[0] * scale_x)), decoded_size[1] - 1)
    y0 = min(int(round(crop[1] * scale_y)), decoded_size[0] - 1)
    x1 = min(max(int(round(crop[2] * scale_x)), x0 + 1), decoded_size[1])
    y1 = min(max(int(round(crop[3] * scale_y)), y0 + 1), decoded_size[0])
    return x0, y0, x1, y1


def estimate_crop_scale_min(dataset_dicts, scene_crop_min, max_proposals, use_gt_boxes=False):
    """OAC §5: s_min = ``scene_crop_min`` / (mean box area / image area) over the dataset's boxes (the top
    ``max_proposals`` proposals of each image, or its non-crowd ground-truth boxes)."""
    dicts = list(dataset_dicts)
    if len(dicts) > _MAX_IMAGES_FOR_AVERAGE:
        step = len(dicts) / _MAX_IMAGES_FOR_AVERAGE
        dicts = [dicts[int(i * step)] for i in range(_MAX_IMAGES_FOR_AVERAGE)]
    unreadable = []

    def boxes_and_sizes():
        for d in dicts:
            boxes = source_boxes(d, max_proposals, use_gt_boxes)
            if len(boxes) == 0:
                continue
            if "height" in d and "width" in d:
                height, width = d["height"], d["width"]
            else:
                try:
                    height, width = oriented_image_size(d["file_name"])
                except OSError as error:
                    unreadable.append(d["file_name"])
                    logger.warning("OAC s_min: cannot read the size of %s (%s); left out", d["file_name"], error)
                    continue
            yield boxes, height, width

    fraction = average_box_fraction(boxes_and_sizes())
    if fraction is None:
        raise ValueError(
            "INPUT.OAC.CROP_SCALE_MIN is 0 (derive s_min from the proposals) but the training set has no "
            f"{'ground-truth boxes' if use_gt_boxes else 'proposals'}; set DATASETS.PROPOSAL_FILES_TRAIN "
            "or a fixed INPUT.OAC.CROP_SCALE_MIN"
        )
    s_min = crop_scale_min(scene_crop_min, fraction)
    logger.info(
        "OAC s_min = %.3f / average box size %.4f = %.4f (from %d images%s)",
        scene_crop_min, fraction, s_min, len(dicts),
        f", {len(unreadable)} unreadable left out" if unreadable else "",
    )
    if s_min >= 1.0:
        # The paper's rule (§5) capped at 1: every object crop is the whole box, so view 1 never varies in
        # position or scale, only in aspect ratio.
        logger.warning(
            "OAC s_min: the average box covers %.1f %% of the image, under INPUT.OAC.SCENE_CROP_MIN %.2f, so s_min "
            "= %.2f is capped at 1 and every object crop is its whole box; set INPUT.OAC.CROP_SCALE_MIN (e.g. "
            "the released code's range, a value near 0: its RandomResizedCrop scale is (rescale_parameter, 1))",
            100 * fraction, scene_crop_min, scene_crop_min / fraction)
    return s_min


def source_boxes(dataset_dict, max_proposals, use_gt_boxes):
    """The boxes OAC crops around, XYXY_ABS float64 K x 4, unclipped: the non-crowd ground-truth boxes, or
    the ``max_proposals`` proposals with the highest objectness (file order when there are no logits)."""
    if use_gt_boxes:
        boxes = [
            BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
            for a in dataset_dict.get("annotations", [])
            if not a.get("iscrowd", 0)
        ]
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    boxes = np.asarray(dataset_dict.get("proposal_boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    mode = dataset_dict.get("proposal_bbox_mode", BoxMode.XYXY_ABS)
    if mode != BoxMode.XYXY_ABS:
        boxes = BoxMode.convert(boxes, mode, BoxMode.XYXY_ABS)
    logits = dataset_dict.get("proposal_objectness_logits")
    if logits is not None and len(logits) == len(boxes):
        boxes = boxes[np.argsort(-np.asarray(logits), kind="stable")]
    return boxes[:max_proposals]


def oriented_image_size(path):
    """(height, width) after EXIF orientation, from the file header only."""
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(_EXIF_ORIENTATION_TAG, 1) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return height, width
