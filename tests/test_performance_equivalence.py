"""The fast mappers produce what the straightforward pipelines of bench/mappers.py produce (docs/performance.md).

The fast paths (reduced-size JPEG decoding, PyTorch's uint8 resize, OpenCV colour ops) must not change the
training data. With the photometric ops off, each view must equal the reference's pixels to within a small
tolerance (the differences are JPEG DCT-scaled decoding against full decoding plus a resample, and, for OAC,
crop corners rounded to the decoded image's pixels: at most half a decoded pixel); with the ops on, the
distributions of per-view channel statistics must agree (a two-sample z-test per statistic).
"""
import runpy

import numpy as np
import pytest
import torch
from detectron2.utils.env import seed_all_rng

import objpretrain.data.oac_mapper as oac_mapper_module
from objpretrain.data.build import build_mapper

# Mean absolute difference, in grey levels, allowed between a fast view and the reference's (no photometric
# ops). Measured: SoCo 0.2-0.6, OAC 0.5-1.5 (JPEG draft decoding at 1/2 scale in both).
SOCO_MEAN_ABS_TOLERANCE = 1.0
OAC_MEAN_ABS_TOLERANCE = 2.0
# Two-sample z-score allowed for each statistic (4 standard errors: no false alarm in practice, while a
# missing colour jitter or grayscale gives z well above it, as test_statistics_test_detects_a_missing_op checks).
MAX_Z_SCORE = 4.0
STATISTIC_SAMPLES = 192


@pytest.fixture(scope="module")
def bench(repo_root):
    return runpy.run_path(f"{repo_root}/bench/mappers.py")


@pytest.fixture(scope="module")
def photos(bench, tmp_path_factory):
    """Two 1024 x 768 JPEG photographs (decoded at 1/2 scale by both fast mappers) with 40 random proposals."""
    return bench["make_photos"](str(tmp_path_factory.mktemp("photos")), 2, 1024, 768)


def _soco_cfg(bench, photometric):
    cfg = bench["soco_cfg"]()
    cfg.merge_from_list(["INPUT.SOCO.VIEW_SIZE", 96, "INPUT.SOCO.V3_SIZE", 48])
    if not photometric:
        cfg.merge_from_list([
            "INPUT.SOCO.COLOR_JITTER_PROB", 0.0, "INPUT.SOCO.GRAYSCALE_PROB", 0.0,
            "INPUT.SOCO.BLUR_PROB", (0.0, 0.0), "INPUT.SOCO.SOLARIZE_PROB", (0.0, 0.0),
            "INPUT.SOCO.BOX_JITTER_PROB", 0.0, "INPUT.SOCO.HFLIP_PROB", 0.0,
            # V2 = V1, so the two pipelines' independent crop draws cannot differ; V3 is V2 downsampled.
            "INPUT.SOCO.CROP_SCALE", (1.0, 1.0), "INPUT.SOCO.CROP_RATIO", (1.0, 1.0),
            "INPUT.SOCO.NUM_PROPOSALS", 40,  # all of them, so both pick the same set
        ])
    return cfg


def _oac_cfg(bench, photometric):
    cfg = bench["oac_cfg"]()
    cfg.INPUT.OAC.CROP_SIZE = 64
    if not photometric:
        cfg.INPUT.OAC.COLOR_JITTER_PROB = cfg.INPUT.OAC.GRAYSCALE_PROB = cfg.INPUT.OAC.BLUR_PROB = 0.0
        cfg.INPUT.OAC.HFLIP_PROB = 0.0
    return cfg


def _sorted_rows(boxes):
    boxes = torch.as_tensor(boxes).numpy()
    return boxes[np.lexsort(boxes.T[::-1])]


def test_soco_views_and_boxes_equal_the_reference_without_photometric_ops(bench, photos):
    cfg = _soco_cfg(bench, photometric=False)
    fast, reference = build_mapper(cfg), bench["NaiveSoCoReference"](cfg)
    for record in photos:
        ours, theirs = fast(record), reference(record)
        assert len(ours["views"]) == len(theirs["views"]) == 3
        for view, expected in zip(ours["views"], theirs["views"]):
            assert view.shape == expected.shape
            difference = (view.int() - torch.as_tensor(expected).int()).abs().float()
            assert difference.mean() <= SOCO_MEAN_ABS_TOLERANCE
        for boxes, expected in zip(ours["boxes"], theirs["boxes"]):
            np.testing.assert_allclose(_sorted_rows(boxes), _sorted_rows(expected), atol=1e-3)


def test_oac_views_equal_the_reference_crops_without_photometric_ops(bench, photos, monkeypatch):
    decoded_shapes = []
    read = oac_mapper_module.read_image_rgb

    def recording_read(*args, **kwargs):
        image, size = read(*args, **kwargs)
        decoded_shapes.append(image.shape[:2])
        return image, size

    monkeypatch.setattr(oac_mapper_module, "read_image_rgb", recording_read)
    cfg = _oac_cfg(bench, photometric=False)
    fast, reference = build_mapper(cfg), bench["NaiveOACReference"](cfg)
    for seed, record in enumerate(photos * 2):
        seed_all_rng(seed)
        ours = fast(record)
        seed_all_rng(seed)
        theirs = reference(record)
        assert ours["rotation_label"] == theirs["rotation_label"]
        for key in ("view1", "view2"):
            difference = (ours[key].int() - theirs[key].int()).abs().float()
            assert difference.mean() <= OAC_MEAN_ABS_TOLERANCE, (seed, key, difference.mean())
    assert (768 // 2, 1024 // 2) in decoded_shapes  # the reduced-size decode was exercised


def _view_statistics(mapper, record, views_of, samples, seed):
    """Per sample, view and channel: pixel mean, pixel std and mean |channel - grey| (colourfulness).
    Returns a samples x views x 3 x 3 tensor."""
    seed_all_rng(seed)
    torch.manual_seed(seed)
    rows = []
    for _ in range(samples):
        per_view = []
        for view in views_of(mapper(record)):
            view = view.float()
            colourfulness = (view - view.mean(0, keepdim=True)).abs().mean((1, 2))
            per_view.append(torch.stack([view.mean((1, 2)), view.std((1, 2)), colourfulness]))
        rows.append(torch.stack(per_view))
    return torch.stack(rows)


def _max_z_score(ours, theirs):
    """Largest two-sample z-score over views, statistics and channels, for the mean and the spread (std over
    samples) of each per-sample statistic."""
    n = len(ours)
    mean_z = (ours.mean(0) - theirs.mean(0)).abs() / ((ours.var(0) + theirs.var(0)) / n).sqrt().clamp_min(1e-6)
    # Standard error of a sample std: std / sqrt(2 (n - 1)) (normal approximation).
    spread_se = ((ours.std(0) ** 2 + theirs.std(0) ** 2) / (2 * (n - 1))).sqrt().clamp_min(1e-6)
    spread_z = (ours.std(0) - theirs.std(0)).abs() / spread_se
    return float(torch.maximum(mean_z, spread_z).max())


PIPELINES = {
    "soco": (_soco_cfg, "NaiveSoCoReference", lambda out: out["views"], "SOCO"),
    "oac": (_oac_cfg, "NaiveOACReference", lambda out: [out["view1"], out["view2"]], "OAC"),
}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_photometric_statistics_match_the_reference(bench, photos, name):
    make_cfg, reference_name, views_of, _ = PIPELINES[name]
    cfg = make_cfg(bench, photometric=True)
    ours = _view_statistics(build_mapper(cfg), photos[0], views_of, STATISTIC_SAMPLES, seed=0)
    theirs = _view_statistics(bench[reference_name](cfg), photos[0], views_of, STATISTIC_SAMPLES, seed=1)
    assert _max_z_score(ours, theirs) <= MAX_Z_SCORE


def test_statistics_test_detects_a_missing_op(bench, photos):
    """The z-test above has the power to see a pipeline that lost its colour jitter or its grayscale."""
    cfg = _oac_cfg(bench, photometric=True)
    theirs = _view_statistics(bench["NaiveOACReference"](cfg), photos[0], PIPELINES["oac"][2],
                              STATISTIC_SAMPLES, seed=1)
    for key in ("COLOR_JITTER_PROB", "GRAYSCALE_PROB"):
        broken = cfg.clone()
        broken.INPUT.OAC[key] = 0.0
        ours = _view_statistics(build_mapper(broken), photos[0], PIPELINES["oac"][2], STATISTIC_SAMPLES, seed=0)
        assert _max_z_score(ours, theirs) > MAX_Z_SCORE, key
