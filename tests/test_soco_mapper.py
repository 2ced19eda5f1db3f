"""SoCo views, boxes, fallbacks and augmentations (objpretrain.data.soco_mapper, objpretrain.data.augmentations).

The geometry tests use a coordinate-encoding image: red encodes the original x and green the original y of
each pixel, so reading a view's pixels inside a box tells which original-image region the box covers.
"""
import logging

import numpy as np
import pytest
import torch
from detectron2.structures import BoxMode
from detectron2.utils.env import seed_all_rng
from PIL import Image

from objpretrain.config import ConfigError, get_pretrain_cfg
from objpretrain.config_validation import validate_config
from objpretrain.data.augmentations import PhotometricAugmentation, build_byol_augmentations
from objpretrain.data.build import MAPPER_REGISTRY, build_mapper
from objpretrain.data.image_io import BadImageError
from objpretrain.data.soco_mapper import SoCoMapper

ORIG_W, ORIG_H = 128, 96


def _cfg(**overrides):
    cfg = get_pretrain_cfg(None, ["MODEL.META_ARCHITECTURE", "SoCo"])
    for key, value in overrides.items():
        cfg.merge_from_list([f"INPUT.SOCO.{key}", value])
    return cfg


def _no_random_appearance(**overrides):
    """Every photometric op and the box jitter off, so pixels and boxes are pure geometry."""
    settings = dict(COLOR_JITTER_PROB=0.0, GRAYSCALE_PROB=0.0, BLUR_PROB=(0.0, 0.0), SOLARIZE_PROB=(0.0, 0.0),
                    BOX_JITTER_PROB=0.0, HFLIP_PROB=0.0)
    settings.update(overrides)
    return _cfg(**settings)


@pytest.fixture(scope="module")
def coordinate_image(tmp_path_factory):
    xs = (np.arange(ORIG_W) + 0.5) / ORIG_W
    ys = (np.arange(ORIG_H) + 0.5) / ORIG_H
    image = np.zeros((ORIG_H, ORIG_W, 3), np.uint8)
    image[..., 0] = np.round(255 * xs)[None, :]
    image[..., 1] = np.round(255 * ys)[:, None]
    image[..., 2] = 128
    path = str(tmp_path_factory.mktemp("soco") / "coords.png")
    Image.fromarray(image).save(path)
    return path


def _grid_proposals(side=14, step=16):
    """Small non-overlapping boxes tiling the image, in original pixels."""
    return np.array(
        [[x, y, x + side, y + side] for y in range(4, ORIG_H - side, step) for x in range(4, ORIG_W - side, step)],
        dtype=np.float32,
    )


def _record(path, proposals=None, mode=BoxMode.XYXY_ABS):
    record = {"file_name": path, "image_id": "coords", "height": ORIG_H, "width": ORIG_W}
    if proposals is not None:
        record["proposal_boxes"] = proposals
        record["proposal_bbox_mode"] = mode
    return record


def _decode_box(view, box):
    """The original-image box (x0, y0, x1, y1) that ``box`` covers in ``view``, read from the pixel colours.

    Reads two interior points of the box and extrapolates linearly to its edges; on a flipped view x0 > x1.
    """
    view = view.permute(1, 2, 0).numpy().astype(np.float64)
    x0, y0, x1, y1 = box.tolist()
    points = []
    for u in (0.2, 0.8):
        px = int(np.clip(np.floor(x0 + u * (x1 - x0)), 0, view.shape[1] - 1))
        py = int(np.clip(np.floor(y0 + u * (y1 - y0)), 0, view.shape[0] - 1))
        # The relative position of the pixel centre actually read, and the original coordinates it encodes.
        points.append(((px + 0.5 - x0) / (x1 - x0), (py + 0.5 - y0) / (y1 - y0),
                       view[py, px, 0] / 255 * ORIG_W, view[py, px, 1] / 255 * ORIG_H))
    (ua, va, xa, ya), (ub, vb, xb, yb) = points
    slope_x, slope_y = (xb - xa) / (ub - ua), (yb - ya) / (vb - va)
    return np.array([xa - ua * slope_x, ya - va * slope_y, xa + (1 - ua) * slope_x, ya + (1 - va) * slope_y])


def _matching_row(decoded, proposals, tolerance=2.5):
    errors = np.abs(proposals - decoded[None]).max(axis=1)
    best = int(errors.argmin())
    return best if errors[best] <= tolerance else None


@pytest.mark.parametrize("flip", [False, True])
def test_each_row_covers_the_same_proposal_content_in_every_view(coordinate_image, flip):
    # MIN_VISIBLE_FRACTION=1 keeps only proposals entirely inside the crops, so no box is clipped and every
    # box must cover exactly its proposal's original pixels.
    cfg = _no_random_appearance(V4_SIZE=192, MIN_VISIBLE_FRACTION=1.0, HFLIP_PROB=1.0 if flip else 0.0)
    mapper = SoCoMapper(cfg)
    proposals = _grid_proposals()
    seed_all_rng(0)
    for _ in range(5):
        out = mapper(_record(coordinate_image, proposals))
        assert out["view_names"] == ["v1", "v2", "v3", "v4"]
        rows_per_view = []
        for view, boxes in zip(out["views"], out["boxes"]):
            rows = []
            for box in boxes:
                decoded = _decode_box(view, box)
                # A flipped view shows the box mirrored: x decreases from its left edge to its right edge.
                assert (decoded[2] < decoded[0]) == flip
                decoded[[0, 2]] = np.sort(decoded[[0, 2]])
                rows.append(_matching_row(decoded, proposals))
            rows_per_view.append(rows)
        assert None not in rows_per_view[0], rows_per_view
        assert all(rows == rows_per_view[0] for rows in rows_per_view), rows_per_view
    assert mapper.counters["fallback_images"] == 0


def test_views_have_the_documented_shapes_dtypes_and_row_counts(coordinate_image):
    mapper = SoCoMapper(_cfg(V4_SIZE=192, NUM_PROPOSALS=3))
    out = mapper(_record(coordinate_image, _grid_proposals()))
    assert set(out) == {"image_id", "file_name", "views", "boxes", "box_ids", "view_names"}
    assert out["image_id"] == "coords" and out["file_name"] == coordinate_image
    assert [tuple(v.shape) for v in out["views"]] == [(3, 224, 224), (3, 224, 224), (3, 112, 112), (3, 192, 192)]
    assert all(v.dtype == torch.uint8 and v.is_contiguous() for v in out["views"])
    assert all(ids.dtype == torch.int64 and torch.equal(ids, out["box_ids"][0]) for ids in out["box_ids"])
    for view, boxes in zip(out["views"], out["boxes"]):
        assert boxes.dtype == torch.float32 and tuple(boxes.shape) == (3, 4)
        size = view.shape[-1]
        assert (boxes >= 0).all() and (boxes <= size).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()

    c4 = SoCoMapper(_cfg(V3_SIZE=0))(_record(coordinate_image, _grid_proposals()))
    assert c4["view_names"] == ["v1", "v2"] and len(c4["views"]) == len(c4["boxes"]) == 2


def test_v1_without_augmentation_is_the_resized_image_and_flip_mirrors_it(coordinate_image):
    plain = SoCoMapper(_no_random_appearance())(_record(coordinate_image, _grid_proposals()))["views"][0]
    expected = np.asarray(Image.open(coordinate_image).resize((224, 224), Image.BILINEAR))
    assert np.abs(plain.permute(1, 2, 0).numpy().astype(int) - expected).max() <= 1
    flipped = SoCoMapper(_no_random_appearance(HFLIP_PROB=1.0))(_record(coordinate_image, _grid_proposals()))
    assert torch.equal(flipped["views"][0], plain.flip(-1))


def test_xywh_proposals_are_converted(coordinate_image):
    proposals = _grid_proposals()
    xywh = BoxMode.convert(proposals.copy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    mapper = SoCoMapper(_no_random_appearance(V3_SIZE=0))
    out = mapper(_record(coordinate_image, xywh, mode=BoxMode.XYWH_ABS))
    for box in out["boxes"][0]:
        assert _matching_row(_decode_box(out["views"][0], box), proposals) is not None


def test_box_jitter_is_drawn_per_view_within_ratio():
    mapper = SoCoMapper(_cfg(BOX_JITTER_PROB=1.0, BOX_JITTER_RATIO=0.1))
    boxes = np.array([[10.0, 20.0, 110.0, 70.0]] * 200)
    seed_all_rng(0)
    jittered = mapper._jitter(boxes)
    w, h = jittered[:, 2] - jittered[:, 0], jittered[:, 3] - jittered[:, 1]
    assert np.all(np.abs(w / 100 - 1) <= 0.1 + 1e-9) and np.all(np.abs(h / 50 - 1) <= 0.1 + 1e-9)
    assert np.all(np.abs((jittered[:, 0] + jittered[:, 2]) / 2 - 60) <= 0.1 * 100 + 1e-9)
    assert np.all(np.abs((jittered[:, 1] + jittered[:, 3]) / 2 - 45) <= 0.1 * 50 + 1e-9)
    assert len(np.unique(w)) > 100  # independent draws per box
    assert not np.allclose(mapper._jitter(boxes), jittered)  # and per call, i.e. per view

    half = SoCoMapper(_cfg(BOX_JITTER_PROB=0.5))._jitter(boxes)
    unchanged = np.all(half == boxes, axis=1).mean()
    assert 0.35 < unchanged < 0.65
    assert np.array_equal(SoCoMapper(_cfg(BOX_JITTER_PROB=0.0))._jitter(boxes), boxes)


def test_jittered_views_differ_but_stay_on_their_proposal(coordinate_image):
    mapper = SoCoMapper(_no_random_appearance(BOX_JITTER_PROB=1.0, MIN_VISIBLE_FRACTION=1.0, V3_SIZE=0))
    proposals = _grid_proposals()
    seed_all_rng(1)
    out = mapper(_record(coordinate_image, proposals))
    decoded = [np.array([_decode_box(v, b) for b in boxes]) for v, boxes in zip(out["views"], out["boxes"])]
    assert not np.allclose(decoded[0], decoded[1], atol=1.0)  # jitter differs between views
    centers = [(d[:, :2] + d[:, 2:]) / 2 for d in decoded]
    assert np.abs(centers[0] - centers[1]).max() < 0.2 * 14 + 2.5  # both within 10% of the same 14-px proposal


def _fallback_cfg(mode, **overrides):
    return _no_random_appearance(FALLBACK=mode, V3_SIZE=0, MIN_VISIBLE_FRACTION=1.0, **overrides)


def test_repeat_fallback_pads_with_the_usable_proposal_and_counts(coordinate_image):
    mapper = SoCoMapper(_fallback_cfg("repeat", CROP_SCALE=(1.0, 1.0), CROP_RATIO=(1.0, 1.0)))
    proposal = np.array([[30.0, 20.0, 70.0, 60.0]], np.float32)
    out = mapper(_record(coordinate_image, proposal))
    for view, boxes in zip(out["views"], out["boxes"]):
        assert [_matching_row(_decode_box(view, b), proposal) for b in boxes] == [0, 0, 0, 0]
    assert mapper.counters["fallback_images"] == 1 and mapper.counters["fallback_repeat_boxes"] == 3


def test_whole_image_fallback_pads_with_the_visible_region(coordinate_image):
    mapper = SoCoMapper(_fallback_cfg("whole_image"))
    proposal = np.array([[0.0, 0.0, 5.0, 5.0], [40.0, 30.0, 60.0, 50.0]], np.float32)
    out = mapper(_record(coordinate_image, proposal))
    v2_boxes = out["boxes"][1].tolist()
    whole = [row for row in v2_boxes if row == [0.0, 0.0, 224.0, 224.0]]
    assert len(whole) >= 2  # the V2 crop is the whole of V2
    assert mapper.counters["fallback_whole_image_boxes"] == 4 - (len(v2_boxes) - len(whole))


def test_random_fallback_pads_with_proposal_sized_boxes_inside_the_crop(coordinate_image):
    mapper = SoCoMapper(_fallback_cfg("random", V4_SIZE=160))
    seed_all_rng(0)
    out = mapper(_record(coordinate_image, np.zeros((0, 4), np.float32)))
    for boxes, size in zip(out["boxes"], (224, 224, 160)):
        assert len({tuple(b) for b in boxes.tolist()}) == 4
        assert (boxes >= 0).all() and (boxes <= size).all()
    v2 = out["boxes"][1]
    relative_side = torch.sqrt((v2[:, 2] - v2[:, 0]) * (v2[:, 3] - v2[:, 1])) / 224
    assert (relative_side > 0.25).all() and (relative_side < 0.85).all()
    assert mapper.counters["fallback_random_boxes"] == 4 and mapper.counters["no_usable_proposals"] == 1


@pytest.mark.parametrize(
    "proposals, counter",
    [
        (np.zeros((0, 4), np.float32), "no_usable_proposals"),
        (None, "missing_proposals"),
        (np.array([[np.nan, 0, 10, 10], [5, 5, 5, 30], [50, 50, 40, 60]], np.float32), "invalid_proposals"),
    ],
    ids=["zero_proposals", "missing_entry", "invalid_boxes"],
)
def test_images_without_usable_proposals_fall_back_and_are_counted(coordinate_image, proposals, counter):
    mapper = SoCoMapper(_fallback_cfg("repeat"))
    out = mapper(_record(coordinate_image, proposals))
    assert all(tuple(b.shape) == (4, 4) and torch.isfinite(b).all() for b in out["boxes"])
    assert out["boxes"][1].tolist() == [[0.0, 0.0, 224.0, 224.0]] * 4  # repeat with nothing usable: whole image
    assert mapper.counters[counter] >= 1
    assert mapper.counters["fallback_images"] == 1 and mapper.counters["fallback_whole_image_boxes"] == 4


@pytest.mark.parametrize("shape", [(3, 5), (2, 6), (4,)])
def test_malformed_proposal_array_names_the_file(coordinate_image, shape):
    with pytest.raises(ValueError, match="coords.png"):
        SoCoMapper(_cfg())(_record(coordinate_image, np.zeros(shape, np.float32)))


def test_dataset_size_that_disagrees_with_the_image_is_counted_and_logged(coordinate_image, caplog):
    mapper = SoCoMapper(_cfg())
    record = dict(_record(coordinate_image, _grid_proposals()), height=ORIG_W, width=ORIG_H)
    with caplog.at_level(logging.WARNING, logger="objpretrain.data.soco_mapper"):
        assert mapper(record) is not None
    assert mapper.counters["size_mismatch"] == 1 and "coords.png decodes to 128x96" in caplog.text
    mapper(_record(coordinate_image, _grid_proposals()))
    assert mapper.counters["size_mismatch"] == 1


def test_unreadable_image_is_skipped_or_raised_per_policy(tmp_path, caplog):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cfg = _cfg()
    cfg.OBJPRETRAIN.BAD_IMAGE_POLICY = "skip"
    mapper = SoCoMapper(cfg)
    with caplog.at_level(logging.WARNING, logger="objpretrain.data.soco_mapper"):
        assert mapper(_record(str(bad), _grid_proposals())) is None
        assert mapper(_record(str(tmp_path / "missing.png"), _grid_proposals())) is None
    assert mapper.counters["bad_images"] == 2 and mapper.counters["images"] == 0
    assert "broken.jpg" in caplog.text and "missing.png" in caplog.text

    cfg.OBJPRETRAIN.BAD_IMAGE_POLICY = "raise"
    with pytest.raises(BadImageError, match="broken.jpg"):
        SoCoMapper(cfg)(_record(str(bad), _grid_proposals()))


def test_outputs_are_reproducible_given_the_seed(coordinate_image):
    mapper = SoCoMapper(_cfg(V4_SIZE=192))  # every augmentation on
    record = _record(coordinate_image, _grid_proposals())

    def run(seed):
        seed_all_rng(seed)
        return [mapper(record) for _ in range(3)]

    first, again, other = run(7), run(7), run(8)
    for a, b in zip(first, again):
        assert all(torch.equal(x, y) for x, y in zip(a["views"] + a["boxes"], b["views"] + b["boxes"]))
    assert any(not torch.equal(x, y) for a, b in zip(first, other) for x, y in zip(a["boxes"], b["boxes"]))


# ---- the official recipe's keys (docs/fidelity.md) ----

def _decoded_rows(out, index, boxes=None, proposals=None):
    """For each box of view ``index`` (or ``boxes`` in it), the row of ``proposals`` whose pixels it shows."""
    view = out["views"][index]
    boxes = out["boxes"][index] if boxes is None else boxes
    return [_matching_row(_decode_box(view, b), proposals) for b in boxes]


def test_a_view_with_its_own_proposals_is_its_own_crop_and_pairs_with_its_own_v1_boxes(coordinate_image):
    """OWN_PROPOSAL_VIEWS ("v3",), the official R50-FPN recipe: V3 is a crop of its own (not V2 downsampled), its K
    proposals are drawn for its crop, and V1 carries a second set of boxes, showing V3's proposals row by row."""
    cfg = _no_random_appearance(OWN_PROPOSAL_VIEWS=("v3",), MIN_VISIBLE_FRACTION=1.0, CROP_SCALE=(0.3, 0.6))
    mapper = SoCoMapper(cfg)
    proposals = _grid_proposals()
    seed_all_rng(0)
    differ = 0
    for _ in range(6):
        out = mapper(_record(coordinate_image, proposals))
        assert set(out["v1_boxes"]) == {"v3"} and tuple(out["v1_boxes"]["v3"].shape) == (4, 4)
        v2_rows, v3_rows = _decoded_rows(out, 1, proposals=proposals), _decoded_rows(out, 2, proposals=proposals)
        assert _decoded_rows(out, 0, proposals=proposals) == v2_rows  # boxes[0]: V1's boxes for V2
        assert _decoded_rows(out, 0, out["v1_boxes"]["v3"], proposals) == v3_rows
        assert None not in v3_rows and out["box_ids"][2].tolist() == v3_rows
        differ += set(v3_rows) != set(v2_rows)
        # V3's corners show other original pixels than V2's: an independent crop
        assert not np.allclose(_decode_box(out["views"][2], torch.tensor([0.0, 0, 112, 112])),
                               _decode_box(out["views"][1], torch.tensor([0.0, 0, 224, 224])), atol=3)
    assert differ >= 3  # the official V3's proposals are not all V2's
    paper = SoCoMapper(_no_random_appearance())(_record(coordinate_image, proposals))
    assert "v1_boxes" not in paper
    with pytest.raises(ConfigError, match="OWN_PROPOSAL_VIEWS"):
        validate_config(_cfg(OWN_PROPOSAL_VIEWS=("v4",)))  # V4 is off


def test_crops_of_the_original_keep_the_aspect_ratio_of_the_original(coordinate_image):
    """CROP_FROM "original" with CROP_SCALE and CROP_RATIO 1: a square crop of the 128 x 96 original (96 x 96 of its
    pixels); "v1": the whole of V1, i.e. the whole image squashed."""
    corners = torch.tensor([0.0, 0.0, 224.0, 224.0])
    settings = dict(CROP_SCALE=(1.0, 1.0), CROP_RATIO=(1.0, 1.0), V3_SIZE=0)
    from_v1 = SoCoMapper(_no_random_appearance(**settings))(_record(coordinate_image, _grid_proposals()))
    x0, y0, x1, y1 = _decode_box(from_v1["views"][1], corners)
    assert (x1 - x0, y1 - y0) == pytest.approx((ORIG_W, ORIG_H), abs=2)
    seed_all_rng(0)
    original = SoCoMapper(_no_random_appearance(CROP_FROM="original", MIN_VISIBLE_FRACTION=1.0, **settings))
    out = original(_record(coordinate_image, _grid_proposals()))
    x0, y0, x1, y1 = _decode_box(out["views"][1], corners)
    assert (x1 - x0, y1 - y0) == pytest.approx((ORIG_H, ORIG_H), abs=2)
    assert _decoded_rows(out, 0, proposals=_grid_proposals()) == _decoded_rows(out, 1, proposals=_grid_proposals())


def test_official_jitter_moves_only_v1_boxes_from_their_corner(coordinate_image):
    mapper = SoCoMapper(_cfg(BOX_JITTER_PROB=1.0, BOX_JITTER_ANCHOR="corner"))
    boxes = np.array([[10.0, 20.0, 110.0, 70.0]] * 200)
    seed_all_rng(0)
    jittered = mapper._jitter(boxes)
    seed_all_rng(0)
    r = np.random.uniform(-0.1, 0.1, size=(200, 4))  # the draws _jitter makes, in its order
    np.testing.assert_allclose(jittered[:, 0], 10 + r[:, 0] * 100)  # x1 += r w
    np.testing.assert_allclose(jittered[:, 1], 20 + r[:, 1] * 50)
    np.testing.assert_allclose(jittered[:, 2] - jittered[:, 0], 100 * (1 + r[:, 2]))
    np.testing.assert_allclose(jittered[:, 3] - jittered[:, 1], 50 * (1 + r[:, 3]))

    settings = dict(BOX_JITTER_PROB=1.0, MIN_VISIBLE_FRACTION=1.0, V3_SIZE=0)
    plain = SoCoMapper(_no_random_appearance(**{**settings, "BOX_JITTER_PROB": 0.0}))
    v1_only = SoCoMapper(_no_random_appearance(BOX_JITTER_VIEWS="v1", **settings))
    seed_all_rng(3)
    reference = plain(_record(coordinate_image, _grid_proposals()))
    seed_all_rng(3)
    out = v1_only(_record(coordinate_image, _grid_proposals()))
    # The same crop and the same K proposals (jitter draws come after both): V2's boxes are untouched, V1's moved.
    assert torch.equal(out["box_ids"][1], reference["box_ids"][1])
    assert torch.allclose(out["boxes"][1], reference["boxes"][1])
    assert not torch.allclose(out["boxes"][0], reference["boxes"][0], atol=0.5)


def test_any_overlap_keeps_a_box_only_partly_in_the_crop():
    """A box with 10 % of its area inside the crop: dropped by "visible_fraction" (0.5), kept by "any_overlap"."""
    proposals = np.array([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [200.0, 200.0, 210.0, 210.0]])
    crop = np.array([9.0, 0.0, 100.0, 100.0])
    assert SoCoMapper(_cfg())._usable(proposals, [crop]).tolist() == [1]
    assert SoCoMapper(_cfg(PROPOSAL_KEEP_RULE="any_overlap"))._usable(proposals, [crop]).tolist() == [0, 1]


def test_crop_tries_redraw_the_crops_while_too_few_proposals_survive(coordinate_image, monkeypatch):
    draws = []
    original = SoCoMapper._draw_views
    monkeypatch.setattr(SoCoMapper, "_draw_views", lambda self, *a: draws.append(1) or original(self, *a))
    mapper = SoCoMapper(_cfg(CROP_TRIES=5))
    mapper(_record(coordinate_image, np.zeros((0, 4), np.float32)))  # nothing ever survives: every draw
    assert len(draws) == 5
    draws.clear()
    mapper(_record(coordinate_image, np.array([[0.0, 0.0, ORIG_W, ORIG_H]] * 4, np.float32)))  # always enough
    assert len(draws) == 1
    draws.clear()
    SoCoMapper(_cfg())(_record(coordinate_image, np.zeros((0, 4), np.float32)))
    assert len(draws) == 1


def test_cutout_fills_squares_inside_the_boxes_of_every_view_but_v1(coordinate_image):
    settings = dict(V3_SIZE=0, MIN_VISIBLE_FRACTION=1.0)
    record = _record(coordinate_image, _grid_proposals())
    seed_all_rng(4)
    plain = SoCoMapper(_no_random_appearance(**settings))(record)
    seed_all_rng(4)
    out = SoCoMapper(_no_random_appearance(CUTOUT_PROB=1.0, CUTOUT_AREA=(0.3, 0.3), **settings))(record)
    assert torch.equal(out["views"][0], plain["views"][0])  # V1 untouched
    changed = (out["views"][1] != plain["views"][1]).any(dim=0)
    fill = torch.tensor([124, 116, 104], dtype=torch.uint8)[:, None]  # MODEL.PIXEL_MEAN, rounded
    assert changed.any() and (out["views"][1][:, changed] == fill).all()
    inside = torch.zeros_like(changed)
    for x0, y0, x1, y1 in out["boxes"][1].tolist():  # a square of 30 % of the box around a point of the box
        margin = 0.55 * ((x1 - x0) * (y1 - y0) * 0.3) ** 0.5 + 1
        inside[max(int(y0 - margin), 0):int(y1 + margin) + 1, max(int(x0 - margin), 0):int(x1 + margin) + 1] = True
    assert not (changed & ~inside).any()
    assert changed.sum() <= 4 * (0.3 * (out["boxes"][1][:, 2] - out["boxes"][1][:, 0]).max() ** 2 * 1.3 + 60)


@pytest.mark.parametrize(
    "key, value",
    [("FALLBACK", "pad"), ("MIN_VISIBLE_FRACTION", 0.0), ("CROP_SCALE", (0.0, 1.0)), ("NUM_PROPOSALS", 0),
     ("BLUR_PROB", (1.0,)), ("CROP_FROM", "image"), ("PROPOSAL_KEEP_RULE", "inside"), ("BOX_JITTER_VIEWS", "v2"),
     ("BOX_JITTER_ANCHOR", "edge"), ("CROP_TRIES", 0), ("CUTOUT_PROB", 2.0), ("OWN_PROPOSAL_VIEWS", ("v2",))],
)
def test_invalid_config_names_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        validate_config(_cfg(**{key: value}))


def test_registered_as_soco():
    assert MAPPER_REGISTRY.get("SoCoMapper") is SoCoMapper
    assert isinstance(build_mapper(_cfg()), SoCoMapper)


# ---- augmentations ----


def _textured_image(size=64):
    """Smooth colour regions plus noise, so every colour op changes it."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:size, 0:size] / size
    base = np.stack([xs, ys, 1 - xs * ys], axis=-1) * 200
    return np.clip(base + rng.normal(0, 25, size=base.shape), 0, 255).astype(np.uint8)


def _only(**enabled):
    settings = dict(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
    settings.update(enabled)
    return PhotometricAugmentation(**settings)


def test_every_photometric_op_is_off_at_probability_zero_and_on_at_one():
    image = _textured_image()
    seed_all_rng(0)
    assert np.array_equal(_only()(image), image)
    jittered = _only(color_jitter_prob=1.0)(image)
    gray = _only(grayscale_prob=1.0)(image)
    blurred = _only(blur_prob=1.0)(image)
    solarized = _only(solarize_prob=1.0, solarize_threshold=128)(image)
    for out in (jittered, gray, blurred, solarized):
        assert out.dtype == np.uint8 and out.shape == image.shape and not np.array_equal(out, image)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    assert np.array_equal(solarized, np.where(image >= 128, 255 - image, image))


def _torchvision(op, image, *args, **kwargs):
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return op(tensor, *args, **kwargs).permute(1, 2, 0).numpy()


@pytest.mark.parametrize(
    "name, factor",
    [("brightness", 0.6), ("brightness", 1.4), ("contrast", 0.6), ("contrast", 1.4), ("saturation", 0.2),
     ("saturation", 1.4), ("hue", -0.5), ("hue", -0.1), ("hue", 0.03), ("hue", 0.25)],
)
def test_colour_ops_compute_what_torchvision_computes(name, factor):
    import torchvision.transforms.v2.functional as TF

    from objpretrain.data import augmentations

    image = _textured_image()
    ours = getattr(augmentations, f"adjust_{name}")(image.astype(np.float32) / 255, factor)
    ours = (ours * 255 + 0.5).astype(np.uint8)
    reference = _torchvision(getattr(TF, f"adjust_{name}"), image, factor)
    assert np.abs(ours.astype(int) - reference).max() <= 2


def test_grayscale_and_blur_compute_what_torchvision_computes(monkeypatch):
    import torchvision.transforms.v2.functional as TF

    image = _textured_image(112)
    gray = _only(grayscale_prob=1.0)(image)
    assert np.abs(gray.astype(int) - _torchvision(TF.rgb_to_grayscale, image, num_output_channels=3)).max() <= 1
    monkeypatch.setattr(np.random, "uniform", lambda low, high: 1.5)  # sigma
    blurred = _only(blur_prob=1.0)(image)
    reference = _torchvision(TF.gaussian_blur, image, [11, 11], [1.5, 1.5])  # 10% of 112, odd
    assert np.abs(blurred.astype(int) - reference).max() <= 1


def test_byol_view_probabilities_come_from_the_config():
    first, second = build_byol_augmentations(_cfg().INPUT.SOCO)
    assert (first.blur_prob, first.solarize_prob) == (1.0, 0.0)
    assert (second.blur_prob, second.solarize_prob) == (0.1, 0.2)
    assert (first.brightness, first.contrast, first.saturation, first.hue) == (0.4, 0.4, 0.2, 0.1)
    assert first.color_jitter_prob == 0.8 and second.grayscale_prob == 0.2
    assert first.blur_sigma == second.blur_sigma == (0.1, 2.0)


def test_augmentation_takes_chw_tensors_too():
    image = _textured_image()
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    solarize = _only(solarize_prob=1.0)
    out = solarize(tensor)
    assert isinstance(out, torch.Tensor) and out.is_contiguous()
    assert np.array_equal(out.permute(1, 2, 0).numpy(), solarize(image))


def test_augmentation_rejects_non_uint8_input():
    with pytest.raises(ValueError, match="uint8"):
        _only()(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        _only()(torch.zeros(3, 8, 8))


def test_mapper_benchmark_runs_and_reports_the_speedup(repo_root, tmp_path):
    import json
    import runpy

    bench = runpy.run_path(f"{repo_root}/bench/mappers.py")
    report = tmp_path / "bench.json"
    args = ["--num-images", "2", "--repeats", "1", "--width", "320", "--height", "240", "--json", str(report)]
    assert bench["main"](args) == 0
    soco = json.loads(report.read_text())["soco"]
    assert soco["ours_ms_per_image"] > 0 and soco["speedup"] == pytest.approx(
        soco["reference_ms_per_image"] / soco["ours_ms_per_image"], rel=0.05)
