"""validate_config (objpretrain.config_validation): every choice key, the ranges and the rules across keys, each a
one-line ConfigError naming the key, its value and what is allowed; every shipped config passes."""
import glob
import os

import pytest
from detectron2.config import get_cfg

from objpretrain.config import ConfigError, get_pretrain_cfg
from objpretrain.config_validation import CHOICES, FREE_FORM_KEYS, lookup, validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOCO_DEMO = os.path.join(REPO, "configs", "demo", "soco_r18_fpn_demo.yaml")
OAC_DEMO = os.path.join(REPO, "configs", "demo", "oac_moco_r18_demo.yaml")
CONFIGS = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"),
                                                               recursive=True))


def _leaves(node, prefix=""):
    for key, value in node.items():
        if hasattr(value, "items"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_the_table_covers_every_string_key_objpretrain_adds():
    """A new objpretrain key holding a string (or strings) must be a choice key of CHOICES or a free-form key."""
    detectron2_keys = {key for key, _ in _leaves(get_cfg())}
    strings = {key for key, value in _leaves(get_pretrain_cfg()) if key not in detectron2_keys and (
        isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)))}
    assert strings == (set(CHOICES) | set(FREE_FORM_KEYS)) - detectron2_keys
    assert not set(CHOICES) & set(FREE_FORM_KEYS)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_shipped_config_passes(config):
    cfg = get_pretrain_cfg(os.path.join(REPO, config))
    validate_config(cfg, pretraining=cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN")


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_a_wrong_value_of_every_choice_key_is_one_line_naming_key_value_and_choices(key):
    cfg = get_pretrain_cfg(SOCO_DEMO)
    validate_config(cfg, pretraining=True)  # valid before the change
    wrong = ("not_a_choice",) if isinstance(lookup(cfg, key), (list, tuple)) else "not_a_choice"
    cfg.merge_from_list([key, wrong])
    with pytest.raises(ConfigError) as error:
        validate_config(cfg, pretraining=True)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{key} is {wrong!r}; ")
    assert all(repr(allowed) in message for allowed in CHOICES[key])


# (config, overrides, num_processes, the start of the message)
RULES = [
    (SOCO_DEMO, ["OBJPRETRAIN.MAPPER", "oac"], 1,
     "OBJPRETRAIN.MAPPER is 'oac' but MODEL.META_ARCHITECTURE 'SoCo' takes the SoCoMapper; drop"),
    (OAC_DEMO, ["OBJPRETRAIN.MAPPER", "SoCoMapper"], 1, "OBJPRETRAIN.MAPPER is 'SoCoMapper' but"),
    (SOCO_DEMO, ["MODEL.META_ARCHITECTURE", "SoCco"], 1, "MODEL.META_ARCHITECTURE is 'SoCco'; registered: "),
    (SOCO_DEMO, ["MODEL.META_ARCHITECTURE", "GeneralizedRCNN"], 1,
     "MODEL.META_ARCHITECTURE 'GeneralizedRCNN' is not a pretraining model; the pretraining models are"),
    (SOCO_DEMO, ["MODEL.PIXEL_MEAN", "[100.0]", "MODEL.PIXEL_STD", "[50.0]"], 1, "MODEL.PIXEL_MEAN is [100.0]; a "
     "pretraining model takes RGB views"),
    (SOCO_DEMO, ["INPUT.SOCO.OWN_PROPOSAL_VIEWS", "('v4',)"], 1, "INPUT.SOCO.OWN_PROPOSAL_VIEWS is ('v4',); view 'v4' "
     "is off: set INPUT.SOCO.V4_SIZE > 0"),
    (SOCO_DEMO, ["INPUT.SOCO.VIEW_SIZE", "0"], 1, "INPUT.SOCO.VIEW_SIZE is 0; must be > 0"),
    (SOCO_DEMO, ["INPUT.SOCO.CROP_SCALE", "(0.0, 1.0)"], 1, "INPUT.SOCO.CROP_SCALE is (0.0, 1.0); must be (low, high)"),
    (SOCO_DEMO, ["INPUT.SOCO.BLUR_PROB", "(1.0,)"], 1, "INPUT.SOCO.BLUR_PROB is (1.0,); must be the (first view, "),
    (SOCO_DEMO, ["INPUT.SOCO.NUM_PROPOSALS", "0"], 1, "INPUT.SOCO.NUM_PROPOSALS is 0; must be >= 1"),
    (OAC_DEMO, ["INPUT.OAC.SWAP_VIEWS_PROB", "0.5", "MODEL.OAC.LAMBDA_ROT", "0.0", "MODEL.OAC.LAMBDA_LOC", "1.0"], 1,
     "INPUT.OAC.SWAP_VIEWS_PROB is 0.5; with MODEL.OAC.LAMBDA_LOC 1.0 the pretext loss needs view 1"),
    (OAC_DEMO, ["INPUT.OAC.ROTATIONS", "[0, 45]"], 1, "INPUT.OAC.ROTATIONS is [0, 45]; must be multiples of 90"),
    (OAC_DEMO, ["INPUT.OAC.LOC_GRID", "1000"], 1, "INPUT.OAC.LOC_GRID is 1000; must be in [1, INPUT.OAC.CROP_SIZE"),
    (OAC_DEMO, ["INPUT.OAC.CROP_SCALE_MIN", "1.5"], 1, "INPUT.OAC.CROP_SCALE_MIN is 1.5; must be in [0, 1]"),
    (OAC_DEMO, ["INPUT.OAC.SCENE_CROP_MIN", "0.5", "INPUT.OAC.SCENE_CROP_MAX", "0.3"], 1,
     "INPUT.OAC.SCENE_CROP_MAX is 0.3; must be in [INPUT.OAC.SCENE_CROP_MIN = 0.5, 1]"),
    (OAC_DEMO, ["MODEL.OAC.DENSE_LOSS_WEIGHT", "2.0"], 1, "MODEL.OAC.DENSE_LOSS_WEIGHT is 2.0; must be in [0, 1]"),
    (OAC_DEMO, ["MODEL.OAC.QUEUE_SIZE", "0"], 1, "MODEL.OAC.QUEUE_SIZE is 0; must be >= 1"),
    (SOCO_DEMO, ["SOLVER.PREDICTOR_LR_FACTOR", "0.0"], 1, "SOLVER.PREDICTOR_LR_FACTOR is 0.0; must be > 0"),
    (SOCO_DEMO, ["SOLVER.LR_SCALE_BATCH_SIZE", "-1"], 1, "SOLVER.LR_SCALE_BATCH_SIZE is -1; must be >= 0"),
    (SOCO_DEMO, ["SOLVER.EPOCHS", "2", "SOLVER.WARMUP_EPOCHS", "3"], 1, "SOLVER.WARMUP_EPOCHS is 3; exceeds"),
    (SOCO_DEMO, ["SOLVER.IMS_PER_BATCH", "6"], 4, "SOLVER.IMS_PER_BATCH is 6; must be a multiple of the 4 processes"),
    (SOCO_DEMO, ["OBJPRETRAIN.HEALTH.PATIENCE", "0"], 1, "OBJPRETRAIN.HEALTH.PATIENCE is 0; must be >= 1"),
    (SOCO_DEMO, ["OBJPRETRAIN.LOG_PERIOD", "0"], 1, "OBJPRETRAIN.LOG_PERIOD is 0; must be >= 1"),
    (SOCO_DEMO, ["MODEL.SOCO.HEAD_NORM", "SyncBN"], 2, "MODEL.SOCO.HEAD_NORM is 'SyncBN' (torch's SyncBatchNorm, GPU "
     "only) but 2 processes run on the CPU"),
    (SOCO_DEMO, ["SOLVER.AMP.ENABLED", "True"], 1, "SOLVER.AMP.ENABLED is True but MODEL.DEVICE is not a GPU"),
]


@pytest.mark.parametrize("config, overrides, num_processes, expected", RULES, ids=[" ".join(r[1][::2]) for r in RULES])
def test_ranges_and_rules_across_keys_are_one_line(config, overrides, num_processes, expected):
    validate_config(get_pretrain_cfg(config, ["MODEL.DEVICE", "cpu"]), pretraining=True)
    cfg = get_pretrain_cfg(config, ["MODEL.DEVICE", "cpu", *overrides])
    with pytest.raises(ConfigError) as error:
        validate_config(cfg, num_processes=num_processes, pretraining=True)
    assert "\n" not in str(error.value) and str(error.value).startswith(expected), str(error.value)


def test_a_mapper_name_that_agrees_with_the_model_passes():
    for name in ("", "soco", "SoCoMapper", "SOCO"):
        validate_config(get_pretrain_cfg(SOCO_DEMO, ["OBJPRETRAIN.MAPPER", name]), pretraining=True)
    validate_config(get_pretrain_cfg(OAC_DEMO, ["OBJPRETRAIN.MAPPER", "oac"]), pretraining=True)
