"""Object-aware cropping: box math (objpretrain.data.boxes_oac) and the OAC mapper (objpretrain.data.oac_mapper).

The mapper tests use a coordinate-encoding image (red = original x, green = original y) so a view's pixels
tell which part of the original image it shows.
"""
import numpy as np
import pytest
import torch
from detectron2.structures import BoxMode
from PIL import Image

from objpretrain.config import ConfigError, get_pretrain_cfg
from objpretrain.config_validation import validate_config
from objpretrain.data.boxes_oac import (
    average_box_fraction,
    crop_scale_min,
    dilate_box,
    localization_target,
    pixel_region,
    sample_crop_in_region,
    widen_small_box_official,
)
from objpretrain.data.build import build_mapper
from objpretrain.data.oac_mapper import OACMapper, estimate_crop_scale_min

W, H = 128, 96


@pytest.fixture(scope="module")
def coordinate_image(tmp_path_factory):
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = np.round(255 * (np.arange(W) + 0.5) / W)[None, :]
    image[..., 1] = np.round(255 * (np.arange(H) + 0.5) / H)[:, None]
    image[..., 2] = 128
    path = str(tmp_path_factory.mktemp("oac") / "coords.png")
    Image.fromarray(image).save(path)
    return path


def _cfg(**oac):
    cfg = get_pretrain_cfg(None, ["MODEL.META_ARCHITECTURE", "OACMoCo"])
    cfg.INPUT.OAC.CROP_SIZE = 32
    cfg.INPUT.OAC.CROP_SCALE_MIN = 0.5
    for key, value in oac.items():
        cfg.INPUT.OAC[key] = value
    return cfg


def _geometry_only(**oac):
    """No flips or colour changes, so views are pure geometry."""
    return _cfg(COLOR_JITTER_PROB=0.0, GRAYSCALE_PROB=0.0, BLUR_PROB=0.0, HFLIP_PROB=0.0, **oac)


# ------------------------------------------------------------------------------------------ box math
def test_dilate_box_grows_by_fraction_of_image_size_and_clips():
    # 200 x 100 image, delta 0.1: 20 px horizontally, 10 px vertically on each side.
    np.testing.assert_allclose(dilate_box([50, 40, 80, 60], 0.1, 100, 200), [30, 30, 100, 70])
    # Near the corner the dilated box is clipped to the image.
    np.testing.assert_allclose(dilate_box([5, 2, 190, 95], 0.2, 100, 200), [0, 0, 200, 100])
    np.testing.assert_allclose(dilate_box([50, 40, 80, 60], 0.0, 100, 200), [50, 40, 80, 60])
    with pytest.raises(ValueError, match="DILATION"):
        dilate_box([0, 0, 1, 1], -0.1, 10, 10)


def test_pixel_region_snaps_inside_and_never_empty():
    assert pixel_region([10.2, 5.7, 20.9, 30.0], 96, 128) == (11, 6, 20, 30)
    assert pixel_region([-5, -5, 500, 500], 96, 128) == (0, 0, 128, 96)
    # Sub-pixel box: snapped outwards to one pixel.
    x0, y0, x1, y1 = pixel_region([10.2, 5.1, 10.6, 5.4], 96, 128)
    assert (x1 - x0, y1 - y0) == (1, 1) and x0 == 10 and y0 == 5


@pytest.mark.parametrize("scale", [(0.2, 1.0), (0.9, 1.0), (1.0, 1.0)])
def test_every_crop_lies_inside_its_region_with_area_in_scale(scale):
    rng = np.random.default_rng(0)
    for _ in range(300):
        x0, y0 = rng.integers(0, 100, size=2)
        w, h = rng.integers(1, 60, size=2)
        region = (int(x0), int(y0), int(x0 + w), int(y0 + h))
        cx0, cy0, cx1, cy1 = sample_crop_in_region(region, scale, (3 / 4, 4 / 3), rng)
        assert region[0] <= cx0 < cx1 <= region[2] and region[1] <= cy0 < cy1 <= region[3]
    # A large region gives crops whose area fraction lies in the scale range (up to rounding).
    big = (10, 20, 210, 220)
    fractions = []
    for _ in range(200):
        cx0, cy0, cx1, cy1 = sample_crop_in_region(big, scale, (3 / 4, 4 / 3), rng)
        fractions.append((cx1 - cx0) * (cy1 - cy0) / 200 ** 2)
    assert min(fractions) >= scale[0] * 0.97 and max(fractions) <= 1.0


def test_crop_scale_min_formula():
    # s_min = 0.2 / average proposal size (OAC §5); COCO's ~39% objects give 0.2 / 0.39.
    assert crop_scale_min(0.2, 0.39) == pytest.approx(0.2 / 0.39)
    assert crop_scale_min(0.2, 0.1) == 1.0  # capped: crop small boxes whole
    with pytest.raises(ValueError):
        crop_scale_min(0.2, 0.0)
    # Average over all boxes of all images (clipped to the image), not per image.
    fraction = average_box_fraction([
        (np.array([[0, 0, 50, 100], [0, 0, 100, 100]]), 100, 100),  # 0.5, 1.0
        (np.array([[0, 0, 10, 10], [-10, -10, 10, 10]]), 20, 20),  # 0.25, clipped to 0.25
        (np.zeros((0, 4)), 10, 10),
    ])
    assert fraction == pytest.approx((0.5 + 1.0 + 0.25 + 0.25) / 4)


def test_estimate_crop_scale_min_from_dataset_dicts(coordinate_image):
    dicts = [
        # Top-2 by objectness: the 64x48 box (0.25 of the image) and the 128x96 one (1.0); the 32x24 one is 3rd.
        {"file_name": coordinate_image, "height": H, "width": W,
         "proposal_boxes": np.array([[0, 0, 32, 24], [0, 0, 64, 48], [0, 0, 128, 96]], np.float32),
         "proposal_objectness_logits": np.array([0.1, 0.9, 0.5], np.float32),
         "proposal_bbox_mode": BoxMode.XYXY_ABS},
        # No height/width: read from the file header. XYWH box of half the image.
        {"file_name": coordinate_image,
         "proposal_boxes": np.array([[0, 0, 64, 96]], np.float32), "proposal_bbox_mode": BoxMode.XYWH_ABS},
    ]
    s_min = estimate_crop_scale_min(dicts, 0.2, max_proposals=2)
    assert s_min == pytest.approx(0.2 / ((0.25 + 1.0 + 0.5) / 3))
    with pytest.raises(ValueError, match="CROP_SCALE_MIN"):
        estimate_crop_scale_min([{"file_name": coordinate_image, "height": H, "width": W}], 0.2, 10)


def test_capped_crop_scale_min_warns_with_the_box_fraction(coordinate_image, caplog):
    """Boxes of 6.25 % of the image on average: 0.2 / 0.0625 = 3.2 is capped at 1 (the object crop is the whole
    box); a warning gives the fraction and the key to set. Larger boxes do not warn."""
    small = [{"file_name": coordinate_image, "height": H, "width": W,
              "proposal_boxes": np.array([[0, 0, 32, 24]], np.float32), "proposal_bbox_mode": BoxMode.XYXY_ABS}]
    with caplog.at_level("WARNING", logger="objpretrain.data.oac_mapper"):
        assert estimate_crop_scale_min(small, 0.2, max_proposals=10) == 1.0
    assert "covers 6.2 % of the image" in caplog.text and "3.20 is capped at 1" in caplog.text
    assert "INPUT.OAC.CROP_SCALE_MIN" in caplog.text
    caplog.clear()
    large = [dict(small[0], proposal_boxes=np.array([[0, 0, 128, 96]], np.float32))]
    with caplog.at_level("WARNING", logger="objpretrain.data.oac_mapper"):
        assert estimate_crop_scale_min(large, 0.2, max_proposals=10) == pytest.approx(0.2)
    assert "capped" not in caplog.text


def test_localization_target_hand_example():
    # 100 x 100 image, 4 x 4 patches of 25 px. Crop x 30-60, y 10-26: columns 1 and 2 (25-50, 50-75),
    # rows 0 and 1 (0-25, 25-50).
    target = localization_target((30, 10, 60, 26), 100, 100, 4).reshape(4, 4)
    expected = np.zeros((4, 4), np.float32)
    expected[0:2, 1:3] = 1
    np.testing.assert_array_equal(target, expected)
    # An edge on a patch border does not mark the neighbour: x 25-50 is column 1 only.
    target = localization_target((25, 0, 50, 25), 100, 100, 4).reshape(4, 4)
    assert target.sum() == 1 and target[0, 1] == 1
    # Non-square image: 200 wide x 100 high, grid 2: crop on the right half, bottom half.
    np.testing.assert_array_equal(localization_target((120, 60, 180, 90), 100, 200, 2), [0, 0, 0, 1])


# ------------------------------------------------------------------------------------------ mapper
def _record(path, boxes, **extra):
    return {"file_name": path, "image_id": "coords", "height": H, "width": W,
            "proposal_boxes": np.asarray(boxes, np.float32), "proposal_bbox_mode": BoxMode.XYXY_ABS, **extra}


def test_mapper_is_registered_as_oac():
    mapper = build_mapper(_cfg(CROP_MODE="scene"))
    assert isinstance(mapper, OACMapper)


def test_official_dilation_scales_coordinates_about_the_origin():
    """INPUT.OAC.DILATION_MODE "official" (the released extract_bb): x0 - int(x0 * d), x1 + int(x1 * d), y alike,
    then clipped; a box at the origin does not grow to the top-left, and the growth differs from the paper's."""
    # 200 x 100 image, delta 0.1: x0 50 -> 45, y0 40 -> 36, x1 80 -> 88, y1 60 -> 66.
    np.testing.assert_allclose(dilate_box([50, 40, 80, 60], 0.1, 100, 200, "official"), [45, 36, 88, 66])
    np.testing.assert_allclose(dilate_box([0, 0, 30, 20], 0.2, 100, 200, "official"), [0, 0, 36, 24])
    np.testing.assert_allclose(dilate_box([150, 80, 190, 95], 0.2, 100, 200, "official"), [120, 64, 200, 100])
    with pytest.raises(ValueError, match="DILATION_MODE"):
        dilate_box([0, 0, 1, 1], 0.1, 10, 10, "image")
    with pytest.raises(ConfigError, match="DILATION_MODE"):
        validate_config(_cfg(DILATION_MODE="image"))


def test_official_minimum_box_side_widens_small_boxes_as_the_released_code():
    """INPUT.OAC.MIN_BOX_SIDE (the released extract_bb with 224) on a 500 x 400 image, per axis: low edge out by 112
    (or [0, 224] at the border), then high edge out by 112 (or low edge to high - 224 at the border)."""
    def widen(box):
        return widen_small_box_official(box, 224, 400, 500).tolist()

    assert widen([300, 200, 350, 260]) == [188, 88, 462, 372]
    assert widen([100, 100, 150, 150]) == [0, 0, 336, 336]  # at the low border: 1.5 x 224, as released
    assert widen([440, 350, 480, 390]) == [256, 166, 480, 390]  # at the high border: exactly 224
    assert widen([0, 0, 300, 300]) == [0, 0, 300, 300]  # wide enough: unchanged
    assert widen_small_box_official([1, 2, 3, 4], 0, 400, 500).tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="MIN_BOX_SIDE"):
        widen_small_box_official([1, 2, 3, 4], -1, 400, 500)
    with pytest.raises(ConfigError, match="MIN_BOX_SIDE"):
        validate_config(_cfg(MIN_BOX_SIDE=-1.0))


def test_mapper_crops_the_widened_box_and_its_widened_dilation(coordinate_image):
    mapper = OACMapper(_cfg(CROP_MODE="obj-obj+dilate", DILATION=0.1, MIN_BOX_SIDE=64.0))
    box = [60.0, 40.0, 80.0, 56.0]
    record = _record(coordinate_image, [box])
    _, _, region1, region2, _ = mapper.sample_crops(record, H, W, np.random.default_rng(0))
    assert region1 == pixel_region(widen_small_box_official(box, 64, H, W), H, W)
    assert region2 == pixel_region(widen_small_box_official(dilate_box(box, 0.1, H, W), 64, H, W), H, W)
    assert region1[2] - region1[0] >= 64 and region1[3] - region1[1] >= 64


@pytest.mark.parametrize("mode,dilation_mode", [("obj-obj", "paper"), ("obj-obj+dilate", "paper"),
                                                ("obj-obj+dilate", "official")])
def test_crops_lie_inside_the_box_and_the_dilated_box(mode, dilation_mode, coordinate_image):
    mapper = OACMapper(_cfg(CROP_MODE=mode, DILATION=0.1, DILATED_CROP_SCALE_MIN=0.2, DILATION_MODE=dilation_mode))
    boxes = [[10, 10, 40, 30], [60.5, 40.2, 120.7, 90.9], [0, 0, 5, 3]]
    record = _record(coordinate_image, boxes)
    rng = np.random.default_rng(1)
    chosen = set()
    for _ in range(200):
        crop1, crop2, region1, region2, box = mapper.sample_crops(record, H, W, rng)
        chosen.add(tuple(box))
        # View 1 inside the proposal (integer region inside the float box when the box is wider than 1 px).
        assert box[0] <= crop1[0] and crop1[2] <= box[2] and box[1] <= crop1[1] and crop1[3] <= box[3]
        if mode == "obj-obj":
            expected2 = box
        else:
            expected2 = dilate_box(box, 0.1, H, W, dilation_mode)
            assert region2 == pixel_region(expected2, H, W)
        assert expected2[0] <= crop2[0] and crop2[2] <= expected2[2]
        assert expected2[1] <= crop2[1] and crop2[3] <= expected2[3]
    assert len(chosen) == 3  # one proposal drawn at random each time


def test_view_pixels_come_from_inside_the_proposal(coordinate_image):
    mapper = OACMapper(_geometry_only(CROP_MODE="obj-obj+dilate"))
    box = np.array([64, 48, 112, 80], np.float32)
    for seed in range(5):
        np.random.seed(seed)
        out = mapper(_record(coordinate_image, [box]))
        red = out["view1"][0].float().numpy() / 255 * W  # original x of every view-1 pixel
        green = out["view1"][1].float().numpy() / 255 * H
        assert red.min() >= box[0] - 2 and red.max() <= box[2] + 2
        assert green.min() >= box[1] - 2 and green.max() <= box[3] + 2
        assert out["view1"].shape == out["view2"].shape == (3, 32, 32) and out["view1"].dtype == torch.uint8


def test_max_proposals_keeps_the_highest_objectness(coordinate_image):
    mapper = OACMapper(_cfg(CROP_MODE="obj-obj", MAX_PROPOSALS=2))
    boxes = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]
    record = _record(coordinate_image, boxes, proposal_objectness_logits=np.array([0.0, 2.0, 1.0]))
    kept = mapper.candidate_boxes(record, H, W)
    np.testing.assert_array_equal(kept, [[20, 20, 30, 30], [40, 40, 50, 50]])


def test_ground_truth_boxes_replace_proposals(coordinate_image):
    mapper = OACMapper(_cfg(CROP_MODE="obj-obj", USE_GT_BOXES=True))
    record = {"file_name": coordinate_image, "height": H, "width": W, "annotations": [
        {"bbox": [10, 20, 30, 40], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
        {"bbox": [0, 0, 50, 50], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 1},
    ]}
    np.testing.assert_array_equal(mapper.candidate_boxes(record, H, W), [[10, 20, 40, 60]])


def test_one_item_per_box_crops_each_item_around_its_own_box(coordinate_image):
    """INPUT.OAC.ITEM_PER_BOX (the released loader): an image with three boxes is three items, each always cropped
    inside its box; an image without boxes stays one item; off, the dicts are the items."""
    boxes = np.array([[0, 0, 40, 30], [64, 48, 112, 80], [10, 60, 50, 90]], np.float32)
    records = [_record(coordinate_image, boxes), _record(coordinate_image, np.zeros((0, 4)))]
    mapper = OACMapper(_geometry_only(CROP_MODE="obj-obj", ITEM_PER_BOX=True))
    items = mapper.dataset_items(records)
    assert len(items) == 4 and "oac_box" not in items[3] and "oac_box" not in records[0]
    for item, box in zip(items, boxes):
        np.testing.assert_array_equal(item["oac_box"], box)
        for seed in range(3):
            np.random.seed(seed)
            red = mapper(item)["view1"][0].float().numpy() / 255 * W  # original x of every view-1 pixel
            assert red.min() >= box[0] - 2 and red.max() <= box[2] + 2
    assert OACMapper(_cfg(CROP_MODE="obj-obj")).dataset_items(records) is records


def test_swapped_views_trade_the_object_and_the_dilated_crop(coordinate_image):
    """INPUT.OAC.SWAP_VIEWS_PROB 1: view 1 is the dilated crop, which reaches outside the box; refused with a pretext
    loss, which needs view 1 to be the object crop."""
    box = np.array([64, 48, 80, 64], np.float32)
    record = _record(coordinate_image, [box])
    outside = []
    for swap in (0.0, 1.0):
        mapper = OACMapper(_geometry_only(CROP_MODE="obj-obj+dilate", DILATION=0.3, SWAP_VIEWS_PROB=swap,
                                          DILATED_CROP_SCALE_MIN=1.0))
        np.random.seed(0)
        red = mapper(record)["view1"][0].float().numpy() / 255 * W
        outside.append(red.min() < box[0] - 4 or red.max() > box[2] + 4)
    assert outside == [False, True]
    cfg = _cfg(SWAP_VIEWS_PROB=0.5)
    cfg.MODEL.OAC.LAMBDA_ROT = 1.0
    with pytest.raises(ConfigError, match="SWAP_VIEWS_PROB is 0.5; with MODEL.OAC.LAMBDA_ROT 1.0 the pretext loss"):
        validate_config(cfg)


def test_image_without_proposals_falls_back_to_scene_crops_and_is_counted(coordinate_image):
    mapper = OACMapper(_cfg(CROP_MODE="obj-obj+dilate"))
    # Empty, and degenerate / non-finite boxes only.
    for boxes in (np.zeros((0, 4)), [[5, 5, 5.5, 40], [np.nan, 0, 10, 10]]):
        _, _, region1, region2, box = mapper.sample_crops(_record(coordinate_image, boxes), H, W,
                                                          np.random.default_rng(0))
        assert box is None and region1 == region2 == (0, 0, W, H)
        assert mapper(_record(coordinate_image, boxes)) is not None
    assert mapper.num_scene_fallbacks == 4
    with pytest.raises(KeyError, match="PROPOSAL_FILES_TRAIN"):
        mapper({"file_name": coordinate_image, "height": H, "width": W})


def test_scene_crops_keep_to_the_scale_range_and_its_upper_bound(coordinate_image):
    """INPUT.OAC.SCENE_CROP_MAX caps the area of scene crops (MoCo-v2's range is (SCENE_CROP_MIN, 1)), so 64-px
    crops of a quarter of a 128-px scene keep its objects at their own size."""
    record = _record(coordinate_image, [])

    def area_fractions(mapper):
        rng = np.random.default_rng(0)
        fractions = []
        for _ in range(200):
            crop1, crop2, *_ = mapper.sample_crops(record, H, W, rng)
            fractions += [(c[2] - c[0]) * (c[3] - c[1]) / (W * H) for c in (crop1, crop2)]
        return np.array(fractions)

    capped = area_fractions(OACMapper(_cfg(CROP_MODE="scene", SCENE_CROP_MIN=0.15, SCENE_CROP_MAX=0.35)))
    assert capped.min() > 0.13 and capped.max() < 0.37  # integer rounding of the sides
    assert capped.max() > 0.3 and capped.min() < 0.2  # the range is used, not one scale
    assert area_fractions(OACMapper(_cfg(CROP_MODE="scene", SCENE_CROP_MIN=0.15))).max() > 0.9  # default max 1


def test_bad_image_is_skipped_or_raised(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    mapper = OACMapper(_cfg(CROP_MODE="scene"))
    assert mapper({"file_name": str(broken), "image_id": "b"}) is None
    assert mapper.num_bad_images == 1
    cfg = _cfg(CROP_MODE="scene")
    cfg.OBJPRETRAIN.BAD_IMAGE_POLICY = "raise"
    with pytest.raises(Exception, match="broken.jpg"):
        OACMapper(cfg)({"file_name": str(broken), "image_id": "b"})


def test_size_mismatch_with_dataset_dict_is_an_error(coordinate_image):
    mapper = OACMapper(_cfg(CROP_MODE="scene"))
    with pytest.raises(ValueError, match="coords.png"):
        mapper({"file_name": coordinate_image, "height": H + 1, "width": W})


def test_localization_outputs_follow_view1_and_the_flip(coordinate_image):
    cfg = _geometry_only(CROP_MODE="obj-obj", LOC_GRID=4)
    cfg.MODEL.OAC.LAMBDA_LOC = 1.0
    mapper = OACMapper(cfg)
    box = [0, 0, 30, 22]  # inside the top-left patch (32 x 24 px)
    out = mapper(_record(coordinate_image, [box]))
    assert out["whole_image"].shape == (3, 32, 32)
    expected = np.zeros(16, np.float32)
    expected[0] = 1
    np.testing.assert_array_equal(out["loc_target"].numpy(), expected)
    # A flipped whole image has its object in the top-right patch.
    cfg.INPUT.OAC.HFLIP_PROB = 1.0
    flipped = OACMapper(cfg)(_record(coordinate_image, [box]))
    expected = np.zeros(16, np.float32)
    expected[3] = 1
    np.testing.assert_array_equal(flipped["loc_target"].numpy(), expected)
    assert flipped["whole_image"][0, 0, 0] > flipped["whole_image"][0, 0, -1]  # red (x) decreases left to right
    # Without the localization loss the mapper skips the whole-image view.
    assert "whole_image" not in OACMapper(_geometry_only(CROP_MODE="obj-obj"))(_record(coordinate_image, [box]))


def test_rotation_labels_index_the_angle_set(coordinate_image):
    mapper = OACMapper(_cfg(CROP_MODE="scene", ROTATIONS=[0, 90, 180, 270]))
    labels = {mapper(_record(coordinate_image, []))["rotation_label"] for _ in range(40)}
    assert labels == {0, 1, 2, 3}
    with pytest.raises(ConfigError, match="ROTATIONS"):
        validate_config(_cfg(CROP_MODE="scene", ROTATIONS=[0, 45]))


def test_invalid_crop_mode_is_rejected():
    with pytest.raises(ConfigError, match="CROP_MODE"):
        validate_config(_cfg(CROP_MODE="object"))
