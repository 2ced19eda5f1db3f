"""The shipped SoCo configs: they load, build, keep the paper's hyperparameters, and fit the finetune configs."""
import glob
import os

import pytest
import torch
from detectron2.modeling import build_model

from objpretrain.config import get_pretrain_cfg
from objpretrain.engine import resolve_schedule, scaled_base_lr
from test_soco_model import make_soco_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIGS = ["soco_r50_fpn.yaml", "soco_r50_fpn_400ep.yaml", "soco_star_r50_fpn.yaml", "soco_r50_c4.yaml"]
DEMO_CONFIGS = ["demo/soco_r18_fpn_demo.yaml", "demo/soco_r18_c4_demo.yaml", "learning/soco_r18_fpn.yaml"]
# configs/official/<name> -> (the paper's config it departs from, the keys where it does, with their values)
OFFICIAL_COMMON = {
    "MODEL.RESNETS.ZERO_INIT_RESIDUAL": True, "MODEL.SOCO.REPEATED_BOX_WEIGHTING": "pairs",
    "INPUT.SOCO.CROP_FROM": "original", "INPUT.SOCO.PROPOSAL_KEEP_RULE": "any_overlap", "INPUT.SOCO.CROP_TRIES": 5,
    "INPUT.SOCO.BOX_JITTER_VIEWS": "v1", "INPUT.SOCO.BOX_JITTER_ANCHOR": "corner",
    "SOLVER.WARMUP_FACTOR": 0.01, "OBJPRETRAIN.PROPOSAL_PRESET": "soco_official",
}
CUTOUT = {"INPUT.SOCO.CUTOUT_PROB": 0.5, "INPUT.SOCO.CUTOUT_AREA": (0.1, 0.3)}
OFFICIAL_CONFIGS = {
    "official/soco_r50_fpn_100ep.yaml": ("soco_r50_fpn.yaml", {**CUTOUT, "INPUT.SOCO.OWN_PROPOSAL_VIEWS": ("v3",)}),
    "official/soco_r50_fpn_400ep.yaml": ("soco_r50_fpn_400ep.yaml", {"INPUT.SOCO.OWN_PROPOSAL_VIEWS": ("v3",)}),
    "official/soco_star_r50_fpn_400ep.yaml": ("soco_star_r50_fpn.yaml", {"INPUT.SOCO.OWN_PROPOSAL_VIEWS": ("v4",)}),
    "official/soco_r50_c4_100ep.yaml": ("soco_r50_c4.yaml", {**CUTOUT, "INPUT.SOCO.CROP_SCALE": (0.6, 1.0),
                                                             "INPUT.SOCO.BOX_JITTER_PROB": 0.0}),
    "official/soco_r50_c4_400ep.yaml": ("soco_r50_c4.yaml", {**CUTOUT, "INPUT.SOCO.CROP_SCALE": (0.6, 1.0),
                                                             "INPUT.SOCO.BOX_JITTER_PROB": 0.0,
                                                             "SOLVER.EPOCHS": 400}),
}
LEARNING_CONFIGS = sorted(os.path.relpath(p, os.path.join(REPO, "configs"))
                          for p in glob.glob(os.path.join(REPO, "configs", "learning", "*.yaml")))


def load(name, *opts):
    return get_pretrain_cfg(os.path.join(REPO, "configs", name), list(opts))


def test_every_soco_config_is_tested_here():
    shipped = {os.path.relpath(p, os.path.join(REPO, "configs"))
               for p in glob.glob(os.path.join(REPO, "configs", "**", "soco*.yaml"), recursive=True)}
    assert shipped == set(PAPER_CONFIGS + DEMO_CONFIGS + list(OFFICIAL_CONFIGS))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["official/soco_r50_fpn_100ep.yaml", "official/soco_star_r50_fpn_400ep.yaml",
                                  "official/soco_r50_c4_100ep.yaml"])  # the 400-epoch ones: their epochs differ
def test_official_configs_build_and_train_a_step_on_their_mappers_views(name, tmp_path):
    """The official recipe end to end through mapper and model: own-proposal views with their V1 boxes, the pair
    weighting over box ids, Cutout. BatchNorm instead of SyncBN (one CPU process)."""
    import numpy as np
    from PIL import Image

    from objpretrain.data.build import build_mapper

    norms = ["MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN", "MODEL.ROI_BOX_HEAD.NORM", "BN",
             "MODEL.SOCO.HEAD_NORM", "BN", "MODEL.DEVICE", "cpu"]
    cfg = load(name, *norms)
    rng = np.random.default_rng(0)
    path = str(tmp_path / "image.jpg")
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path)
    corners = rng.uniform(0, 250, size=(12, 2))
    proposals = np.concatenate([corners, corners + rng.uniform(40, 150, size=(12, 2))], axis=1).clip(0, 300)
    mapper = build_mapper(cfg)
    batch = [mapper({"file_name": path, "image_id": str(i), "height": 300, "width": 400, "proposal_boxes": proposals})
             for i in range(2)]
    own = set(cfg.INPUT.SOCO.OWN_PROPOSAL_VIEWS)
    assert all(set(x.get("v1_boxes", {})) == own for x in batch)
    torch.manual_seed(0)
    model = build_model(cfg)
    losses = model(batch)
    assert sorted(losses) == sorted(f"loss_v1_{v}" for v in batch[0]["view_names"][1:])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", sorted(OFFICIAL_CONFIGS))
def test_every_official_soco_config_builds_its_model(name):
    """Each configs/official/soco* config builds (at ResNet-18, to stay fast); the slow test above trains three."""
    cfg = load(name, "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64")
    model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE and model.repeated_box_weighting == "pairs"


def _flat(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = tuple(value) if isinstance(value, list) else value
    return out


@pytest.mark.parametrize("name", sorted(OFFICIAL_CONFIGS))
def test_official_configs_differ_from_the_paper_configs_only_in_the_official_keys(name):
    """Every difference of configs/official/* from the paper's config is one of the official recipe's keys
    (docs/fidelity.md), with the value of the official script."""
    paper_name, specific = OFFICIAL_CONFIGS[name]
    official, paper = _flat(load(name)), _flat(load(paper_name))
    expected = {**OFFICIAL_COMMON, **specific}
    differences = {key for key in official if official[key] != paper[key] and key != "OUTPUT_DIR"}
    assert differences <= set(expected), differences - set(expected)
    assert {key: official[key] for key in expected} == expected


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_keep_the_paper_hyperparameters(name):
    cfg = load(name)
    m, s, soco_in = cfg.MODEL, cfg.SOLVER, cfg.INPUT.SOCO
    expectations = [
        # (value, expected, where it comes from)
        (s.OPTIMIZER, "LARS", "§4.1: LARS optimizer"),
        (s.LR_SCHEDULER_NAME, "WarmupCosineLR", "§4.1: cosine decay"),
        (s.RESCALE_INTERVAL, True, "§4.1: cosine decay after the warm-up"),
        (s.WARMUP_EPOCHS, 10, "§4.1: warm-up of 10 epochs"),
        (s.BASE_LR, 1.0, "§4.1: lr_base = 1.0"),
        (s.LR_SCALE_BATCH_SIZE, 256, "§4.1: lr = lr_base x BatchSize / 256"),
        (scaled_base_lr(cfg), 8.0, "§4.1: lr = 1.0 x 2048 / 256"),
        (s.WEIGHT_DECAY, 1e-5, "§4.1: weight decay 1e-5"),
        (s.IMS_PER_BATCH, 2048, "§4.1, Table 5(b): batch size 2048"),
        (m.SOCO.MOMENTUM_BASE, 0.99, "§4.1, Table 5(d): tau starts from 0.99"),
        (m.SOCO.MOMENTUM_END, 1.0, "§4.1: tau increased to 1"),
        (m.RESNETS.NORM, "SyncBN", "§4.1: synchronized batch normalization"),
        (m.SOCO.HEAD_NORM, "SyncBN", "§4.1: synchronized batch normalization"),
        (m.SOCO.PROJECTOR_HIDDEN_DIM, 4096, "§4.1: projector linear 4096"),
        (m.SOCO.PREDICTOR_HIDDEN_DIM, 4096, "§4.1: predictor linear 4096"),
        (m.SOCO.PROJECTOR_OUT_DIM, 256, "§4.1: output dimension 256"),
        (m.RESNETS.DEPTH, 50, "§4.1: ResNet-50"),
        (soco_in.VIEW_SIZE, 224, "§3.2: V1/V2 at 224"),
        (soco_in.NUM_PROPOSALS, 4, "§4.4, Table 5(c): K = 4"),
        (m.SOCO.POOLER_TYPE, "ROIAlignV2", "§3.3 Eq. 1: RoIAlign"),
        (m.BACKBONE.FREEZE_AT, 0, "§3.1: every layer is pretrained"),
    ]
    if name == "soco_r50_c4.yaml":
        expectations += [
            (m.META_ARCHITECTURE, "SoCoC4", "§4.1: SoCo-R50-C4"),
            (list(m.SOCO.IN_FEATURES), ["res4"], "§4.1: RoI operation on the 4th residual block"),
            (soco_in.V3_SIZE, 0, "§4.1: C4 has one feature map, no scale-aware V3"),
            (s.EPOCHS, 100, "§4.1: 100-epoch schedule"),
        ]
    else:
        expectations += [
            (m.META_ARCHITECTURE, "SoCo", "§4.1: SoCo-R50-FPN"),
            (list(m.SOCO.IN_FEATURES), ["p2", "p3", "p4", "p5"], "§3.3: RoIAlign on P2-P5, P6 unused"),
            (m.SOCO.SCALE_AWARE_ASSIGNMENT, True, "§3.3: scale-aware assignment"),
            (list(m.SOCO.SCALE_AWARE_THRESHOLDS), [48, 96, 192], "§3.3: areas 48², 96², 192²"),
            (m.SOCO.POOLER_RESOLUTION, 7, "§3.3: the Mask R-CNN box head's 7x7 RoIAlign"),
            ((m.ROI_BOX_HEAD.NAME, m.ROI_BOX_HEAD.NUM_CONV, m.ROI_BOX_HEAD.NUM_FC), ("FastRCNNConvFCHead", 4, 1),
             "§3.3: the R-CNN head of Mask R-CNN (4conv1fc)"),
            (m.FPN.NORM, "SyncBN", "§4.1: synchronized batch normalization"),
            (m.ROI_BOX_HEAD.NORM, "SyncBN", "§4.1: synchronized batch normalization"),
            (soco_in.V3_SIZE, 112, "§3.2, Table 5(a): V3 at 112x112"),
            (s.EPOCHS, {"soco_r50_fpn.yaml": 100}.get(name, 400), "§4.1 / Table 1: 100 or 400 epochs"),
            (soco_in.V4_SIZE, 192 if name == "soco_star_r50_fpn.yaml" else 0, "§4.3: SoCo* adds V4 at 192x192"),
        ]
    wrong = [f"{where}: got {value!r}, expected {expected!r}" for value, expected, where in expectations
             if value != expected]
    assert not wrong, f"{name}:\n" + "\n".join(wrong)
    assert resolve_schedule(cfg, num_images=1281167).SOLVER.WARMUP_ITERS == 6256  # 10 ImageNet epochs


def test_paper_fpn_variants_share_one_architecture():
    base = load("soco_r50_fpn.yaml").MODEL
    for name in ("soco_r50_fpn_400ep.yaml", "soco_star_r50_fpn.yaml"):
        assert load(name).MODEL == base, name


@pytest.mark.parametrize("name", DEMO_CONFIGS)
def test_demo_configs_build_and_run_a_step_on_cpu(name):
    cfg = load(name)
    torch.manual_seed(0)
    model = build_model(cfg)
    size = cfg.INPUT.SOCO.VIEW_SIZE
    sizes = [size, size] + [v for v in (cfg.INPUT.SOCO.V3_SIZE, cfg.INPUT.SOCO.V4_SIZE) if v]
    names = ["v1", "v2", "v3", "v4"][: len(sizes)] if cfg.INPUT.SOCO.V3_SIZE else ["v1", "v2"]
    losses = model(make_soco_batch(sizes=sizes, names=names))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", LEARNING_CONFIGS)
def test_learning_configs_build_train_a_step_and_keep_the_regime(name):
    """configs/learning/ (docs/results.md, "The CPU learning regime"): batch 32, sqrt lr scaling from 32, warm-up
    then a cosine over the rest, milder views, EMA 0.99, view retrieval every 50 iterations."""
    cfg = load(name)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.LR_SCALE_BATCH_SIZE, cfg.SOLVER.LR_SCALING) == (32, 32, "sqrt")
    assert cfg.SOLVER.WARMUP_ITERS == 20 and cfg.SOLVER.RESCALE_INTERVAL and cfg.SOLVER.OPTIMIZER == "SGD"
    assert cfg.OBJPRETRAIN.HEALTH.RETRIEVAL_PERIOD == 50
    views = cfg.INPUT.SOCO if cfg.MODEL.META_ARCHITECTURE == "SoCo" else cfg.INPUT.OAC
    assert tuple(views.COLOR_JITTER) == (0.2, 0.2, 0.2, 0.05) and views.GRAYSCALE_PROB == 0.0
    torch.manual_seed(0)
    model = build_model(cfg)
    if cfg.MODEL.META_ARCHITECTURE == "SoCo":
        size = cfg.INPUT.SOCO.VIEW_SIZE
        batch = make_soco_batch(sizes=[size, size, cfg.INPUT.SOCO.V3_SIZE], names=["v1", "v2", "v3"])
        assert cfg.MODEL.SOCO.MOMENTUM_BASE == 0.99
    else:
        size = cfg.INPUT.OAC.CROP_SIZE
        batch = [{"view1": torch.randint(0, 256, (3, size, size), dtype=torch.uint8),
                  "view2": torch.randint(0, 256, (3, size, size), dtype=torch.uint8)} for _ in range(4)]
        assert cfg.INPUT.OAC.SCENE_CROP_MIN == 0.5 and cfg.MODEL.OAC.MOMENTUM == 0.99
    losses = model(batch)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.health_record() is not None and model.health_record().collapse_losses.keys() <= losses.keys()


def _transferable_keys(soco_model, head):
    """The online network's state in Detectron2's names: backbone.*, roi_heads.<head>.*."""
    return {("roi_heads." + k if k.startswith(head + ".") else k): v.shape
            for k, v in soco_model.online_network.state_dict().items() if not k.startswith("projector.")}


@pytest.mark.slow
@pytest.mark.parametrize("soco_config,finetune_config,head", [
    ("soco_r50_fpn.yaml", "finetune/mask_rcnn_R_50_FPN_1x.yaml", "box_head"),
    ("soco_r50_c4.yaml", "finetune/mask_rcnn_R_50_C4_1x.yaml", "res5"),
])
def test_paper_models_build_and_every_pretrained_key_loads_into_the_finetune_detector(soco_config, finetune_config,
                                                                                       head):
    soco = build_model(load(soco_config, "MODEL.DEVICE", "cpu"))
    assert soco.online_network.backbone.output_shape()  # built with SyncBN, single process
    detector_state = build_model(load(finetune_config, "MODEL.DEVICE", "cpu")).state_dict()
    pretrained = _transferable_keys(soco, head)
    mismatched = [k for k, shape in pretrained.items() if k not in detector_state or detector_state[k].shape != shape]
    assert not mismatched, f"{soco_config} keys without a place in {finetune_config}: {mismatched[:5]}"
    uncovered = [k for k in detector_state if k.startswith(("backbone.", f"roi_heads.{head}.")) and k not in pretrained]
    # MoCo-style C4 finetuning adds a fresh norm after res5 (Res5ROIHeadsExtraNorm); nothing else may be new.
    assert all(k.startswith("roi_heads.res5.norm.") for k in uncovered), uncovered[:5]
