"""Every check of a config's values, in one place: :func:`validate_config`.

Preflight (``objpretrain.engine.preflight.check_runnable``) runs it before any process or loader worker starts, and
the trainers once more when they are built from Python. A problem raises :class:`~objpretrain.config.ConfigError`
with one line that names the key, its value and what is allowed, instead of a traceback from a mapper, a model or a
rank after launch. The mappers, models and hooks do not check the config again.

- :data:`CHOICES`: every key of a fixed set of values, with that set. The sets the code implements are imported
  from it (the mappers' modes, the heads' norms, the queue's starts, the proposal presets), so they are written once.
- :data:`FREE_FORM_KEYS`: the other string keys (names, paths), with where each is checked; tests/test_config_
  validation.py fails when an objpretrain string key is in neither, so a new choice key cannot be forgotten.
- The rules: value ranges and the rules across keys (the OAC views a pretext loss needs, the sizes the SoCo views
  need, SyncBN in several CPU processes, the model and its mapper, ...).

It sits above the data and modeling packages (it reads their constants and the model contract) and below the
engine, which calls it; the data and modeling packages do not import it.
"""
from detectron2.modeling import META_ARCH_REGISTRY

from .config import ConfigError
from .data.boxes_oac import DILATION_MODES
from .data.oac_mapper import CROP_MODES
from .data.proposals.presets import PRESETS
from .data.soco_mapper import FALLBACK_MODES
from .modeling.contract import PretrainingModel, dataset_mapper_name, pretraining_model_class
from .modeling.heads import MLP_NORMS, OUTPUT_NORMS
from .modeling.oac import KeyQueue

__all__ = ["CHOICES", "FREE_FORM_KEYS", "NONFINITE_LOSS_POLICIES", "validate_config"]

NONFINITE_LOSS_POLICIES = ("raise", "skip")

# key -> its allowed values (for a list key, of each element). Compared exactly, but SOLVER.OPTIMIZER in any case.
CHOICES = {
    "OBJPRETRAIN.BAD_IMAGE_POLICY": ("skip", "raise"),
    "OBJPRETRAIN.NONFINITE_LOSS_POLICY": NONFINITE_LOSS_POLICIES,
    "OBJPRETRAIN.PROPOSAL_PRESET": ("",) + tuple(PRESETS),
    "MODEL.SOCO.POOLER_TYPE": ("ROIAlign", "ROIAlignV2", "ROIPool"),
    "MODEL.SOCO.HEAD_NORM": MLP_NORMS,
    "MODEL.SOCO.PROJECTOR_OUTPUT_NORM": OUTPUT_NORMS,
    "MODEL.SOCO.REPEATED_BOX_WEIGHTING": ("rows", "pairs"),
    "MODEL.SOCO.VIEW_BATCHING": ("per_view", "per_size"),
    "INPUT.SOCO.FALLBACK": FALLBACK_MODES,
    "INPUT.SOCO.CROP_FROM": ("v1", "original"),
    "INPUT.SOCO.OWN_PROPOSAL_VIEWS": ("v3", "v4"),
    "INPUT.SOCO.PROPOSAL_KEEP_RULE": ("visible_fraction", "any_overlap"),
    "INPUT.SOCO.BOX_JITTER_VIEWS": ("all", "v1"),
    "INPUT.SOCO.BOX_JITTER_ANCHOR": ("center", "corner"),
    "INPUT.OAC.CROP_MODE": CROP_MODES,
    "INPUT.OAC.DILATION_MODE": DILATION_MODES,
    "MODEL.OAC.QUEUE_START": KeyQueue.STARTS,
    "MODEL.OAC.SEPARATE_HEADS_INIT": ("independent", "equal"),
    "MODEL.OAC.HEAD_NORM": MLP_NORMS,
    "SOLVER.OPTIMIZER": ("LARS", "SGD"),
    "SOLVER.LR_SCALING": ("linear", "sqrt"),
}
_ANY_CASE = {"SOLVER.OPTIMIZER"}

# objpretrain's string keys that are not choices, and where each is checked.
FREE_FORM_KEYS = {
    "OBJPRETRAIN.MAPPER": "empty or the model's mapper: the rule of the model and its mapper, below",
    "OBJPRETRAIN.HEALTH.RETRIEVAL_DATASET": "a dataset name: preflight checks it is registered",
    "MODEL.SOCO.IN_FEATURES": "backbone feature names: the model checks them against the backbone it built",
    "DATASETS.COCO_JSON_REGISTER": "name:json:image_root entries, parsed when they are registered",
    "DATASETS.IMAGE_FOLDER_REGISTER": "name:root entries, parsed when they are registered",
}

# The norm keys where SyncBN (torch's, CUDA only) may be set; each also takes "naiveSyncBN" (Detectron2's for the
# convolutional parts, objpretrain.modeling.heads.NaiveSyncBatchNorm1d for the MLP heads), which all-reduces its
# statistics and so also works on gloo.
NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM",
             "MODEL.SOCO.HEAD_NORM", "MODEL.OAC.HEAD_NORM")


def lookup(cfg, key):
    """The value of the dotted ``key`` in ``cfg`` (None when a part is missing)."""
    node = cfg
    for part in key.split("."):
        node = node.get(part) if hasattr(node, "get") else None
    return node


def _require(ok, key, value, requirement):
    if not ok:
        raise ConfigError(f"{key} is {value!r}; {requirement}")


def _check_choices(cfg):
    for key, allowed in CHOICES.items():
        value = lookup(cfg, key)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        compare = (lambda v: str(v).upper()) if key in _ANY_CASE else (lambda v: v)
        bad = [v for v in values if compare(v) not in allowed]
        if bad:
            what = "each of its values must be one of" if isinstance(value, (list, tuple)) else "allowed:"
            raise ConfigError(f"{key} is {value!r}; {what} {', '.join(repr(a) for a in allowed)}")


def _check_model(cfg, pretraining):
    """MODEL.META_ARCHITECTURE is registered; a pretraining model takes RGB views and its mapper."""
    name = cfg.MODEL.META_ARCHITECTURE
    registered = dict(META_ARCH_REGISTRY)
    _require(name in registered, "MODEL.META_ARCHITECTURE", name, f"registered: {', '.join(sorted(registered))}")
    model_class = registered[name]
    if not (isinstance(model_class, type) and issubclass(model_class, PretrainingModel)):
        if pretraining:
            pretraining_model_class(cfg)  # the ConfigError that lists the pretraining models
        return
    dataset_mapper_name(cfg)  # OBJPRETRAIN.MAPPER, when set, must name the model's mapper
    for key in ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"):
        _require(len(lookup(cfg, key)) == 3, key, list(lookup(cfg, key)),
                 "a pretraining model takes RGB views: give 3 values")


def _check_general(cfg):
    objpretrain = cfg.OBJPRETRAIN
    health = objpretrain.HEALTH
    _require(objpretrain.LOG_PERIOD >= 1, "OBJPRETRAIN.LOG_PERIOD", objpretrain.LOG_PERIOD, "must be >= 1")
    _require(health.PERIOD >= 0, "OBJPRETRAIN.HEALTH.PERIOD", health.PERIOD, "must be >= 0 (0: OBJPRETRAIN.LOG_PERIOD)")
    _require(health.PATIENCE >= 1, "OBJPRETRAIN.HEALTH.PATIENCE", health.PATIENCE, "must be >= 1")
    for key in ("RETRIEVAL_PERIOD", "RETRIEVAL_SIZE"):
        _require(health[key] >= 0, f"OBJPRETRAIN.HEALTH.{key}", health[key], "must be >= 0")
    _require(health.RETRIEVAL_IMAGES >= 2, "OBJPRETRAIN.HEALTH.RETRIEVAL_IMAGES", health.RETRIEVAL_IMAGES,
             "view retrieval needs at least 2 images")


def _check_probability(key, value):
    _require(0 <= value <= 1, key, value, "must be a probability, in [0, 1]")


def _check_range(key, value, upper=1.0):
    _require(len(value) == 2 and 0 < value[0] <= value[1] <= upper, key, tuple(value),
             f"must be (low, high) with 0 < low <= high <= {upper:g}")


def _check_soco_views(cfg):
    """The SoCo mapper's sizes, ranges and probabilities (SoCo §3.2)."""
    soco = cfg.INPUT.SOCO
    _require(soco.VIEW_SIZE > 0, "INPUT.SOCO.VIEW_SIZE", soco.VIEW_SIZE, "must be > 0")
    for key in ("V3_SIZE", "V4_SIZE"):
        _require(soco[key] >= 0, f"INPUT.SOCO.{key}", soco[key], "must be >= 0 (0: no such view)")
    for name in soco.OWN_PROPOSAL_VIEWS:
        _require(soco[f"{name.upper()}_SIZE"] > 0, "INPUT.SOCO.OWN_PROPOSAL_VIEWS", tuple(soco.OWN_PROPOSAL_VIEWS),
                 f"view {name!r} is off: set INPUT.SOCO.{name.upper()}_SIZE > 0")
    _check_range("INPUT.SOCO.CROP_SCALE", soco.CROP_SCALE)
    _check_range("INPUT.SOCO.CROP_RATIO", soco.CROP_RATIO, upper=float("inf"))
    _require(soco.NUM_PROPOSALS >= 1, "INPUT.SOCO.NUM_PROPOSALS", soco.NUM_PROPOSALS, "must be >= 1")
    _require(0 < soco.MIN_VISIBLE_FRACTION <= 1, "INPUT.SOCO.MIN_VISIBLE_FRACTION", soco.MIN_VISIBLE_FRACTION,
             "must be in (0, 1]")
    _check_probability("INPUT.SOCO.BOX_JITTER_PROB", soco.BOX_JITTER_PROB)
    _require(0 <= soco.BOX_JITTER_RATIO < 1, "INPUT.SOCO.BOX_JITTER_RATIO", soco.BOX_JITTER_RATIO, "must be in [0, 1)")
    _require(soco.CROP_TRIES >= 1, "INPUT.SOCO.CROP_TRIES", soco.CROP_TRIES, "must be >= 1")
    _check_probability("INPUT.SOCO.CUTOUT_PROB", soco.CUTOUT_PROB)
    _check_range("INPUT.SOCO.CUTOUT_AREA", soco.CUTOUT_AREA)
    for key in ("BLUR_PROB", "SOLARIZE_PROB"):
        value = tuple(soco[key])
        _require(len(value) == 2 and all(0 <= p <= 1 for p in value), f"INPUT.SOCO.{key}", value,
                 "must be the (first view, second view) probabilities")


def _check_oac_views(cfg):
    """The OAC mapper's sizes, ranges and the views the pretext losses need (OAC §4)."""
    oac, model = cfg.INPUT.OAC, cfg.MODEL.OAC
    _require(oac.CROP_SIZE > 0, "INPUT.OAC.CROP_SIZE", oac.CROP_SIZE, "must be > 0")
    _require(oac.MAX_PROPOSALS >= 1, "INPUT.OAC.MAX_PROPOSALS", oac.MAX_PROPOSALS, "must be >= 1")
    _require(bool(oac.ROTATIONS) and all(a % 90 == 0 for a in oac.ROTATIONS), "INPUT.OAC.ROTATIONS",
             list(oac.ROTATIONS), "must be multiples of 90 degrees (at least one)")
    _require(1 <= oac.LOC_GRID <= oac.CROP_SIZE, "INPUT.OAC.LOC_GRID", oac.LOC_GRID,
             f"must be in [1, INPUT.OAC.CROP_SIZE = {oac.CROP_SIZE}]")
    _require(oac.DILATION >= 0, "INPUT.OAC.DILATION", oac.DILATION, "must be >= 0")
    _require(oac.MIN_BOX_SIDE >= 0, "INPUT.OAC.MIN_BOX_SIDE", oac.MIN_BOX_SIDE, "must be >= 0 (0: no widening)")
    _require(0 <= oac.CROP_SCALE_MIN <= 1, "INPUT.OAC.CROP_SCALE_MIN", oac.CROP_SCALE_MIN,
             "must be in [0, 1] (0: from the proposals' average size)")
    _require(0 < oac.SCENE_CROP_MIN <= 1, "INPUT.OAC.SCENE_CROP_MIN", oac.SCENE_CROP_MIN, "must be in (0, 1]")
    _require(oac.SCENE_CROP_MIN <= oac.SCENE_CROP_MAX <= 1, "INPUT.OAC.SCENE_CROP_MAX", oac.SCENE_CROP_MAX,
             f"must be in [INPUT.OAC.SCENE_CROP_MIN = {oac.SCENE_CROP_MIN}, 1]")
    _require(0 <= oac.DILATED_CROP_SCALE_MIN <= 1, "INPUT.OAC.DILATED_CROP_SCALE_MIN", oac.DILATED_CROP_SCALE_MIN,
             "must be in [0, 1] (0: the object crop's)")
    _check_range("INPUT.OAC.CROP_RATIO", oac.CROP_RATIO, upper=float("inf"))
    _check_probability("INPUT.OAC.SWAP_VIEWS_PROB", oac.SWAP_VIEWS_PROB)
    if oac.SWAP_VIEWS_PROB > 0:
        for key in ("LAMBDA_ROT", "LAMBDA_LOC"):
            _require(model[key] <= 0, "INPUT.OAC.SWAP_VIEWS_PROB", oac.SWAP_VIEWS_PROB,
                     f"with MODEL.OAC.{key} {model[key]} the pretext loss needs view 1 to be the object crop: "
                     f"set SWAP_VIEWS_PROB 0 or MODEL.OAC.{key} 0")


def _check_oac_model(cfg):
    oac = cfg.MODEL.OAC
    _require(oac.QUEUE_SIZE >= 1, "MODEL.OAC.QUEUE_SIZE", oac.QUEUE_SIZE, "must be >= 1")
    _require(oac.TEMPERATURE > 0, "MODEL.OAC.TEMPERATURE", oac.TEMPERATURE, "must be > 0")
    _require(0 <= oac.DENSE_LOSS_WEIGHT <= 1, "MODEL.OAC.DENSE_LOSS_WEIGHT", oac.DENSE_LOSS_WEIGHT,
             "must be in [0, 1]")


def _check_solver(cfg, num_processes):
    solver = cfg.SOLVER
    _require(solver.LR_SCALE_BATCH_SIZE >= 0, "SOLVER.LR_SCALE_BATCH_SIZE", solver.LR_SCALE_BATCH_SIZE,
             "must be >= 0 (0: no lr scaling)")
    _require(solver.PREDICTOR_LR_FACTOR > 0, "SOLVER.PREDICTOR_LR_FACTOR", solver.PREDICTOR_LR_FACTOR, "must be > 0")
    _require(solver.EPOCHS >= 0, "SOLVER.EPOCHS", solver.EPOCHS, "must be >= 0 (0: SOLVER.MAX_ITER)")
    _require(solver.WARMUP_EPOCHS <= 0 or solver.EPOCHS > 0, "SOLVER.WARMUP_EPOCHS", solver.WARMUP_EPOCHS,
             "is set but SOLVER.EPOCHS is not; set both or neither")
    _require(solver.WARMUP_EPOCHS <= solver.EPOCHS or solver.EPOCHS <= 0, "SOLVER.WARMUP_EPOCHS",
             solver.WARMUP_EPOCHS, f"exceeds SOLVER.EPOCHS ({solver.EPOCHS})")
    _require(solver.IMS_PER_BATCH >= num_processes and solver.IMS_PER_BATCH % num_processes == 0,
             "SOLVER.IMS_PER_BATCH", solver.IMS_PER_BATCH, f"must be a multiple of the {num_processes} processes")


def _check_devices(cfg, num_processes):
    """SyncBN and AMP against MODEL.DEVICE and the number of processes."""
    device = str(cfg.MODEL.DEVICE)
    if num_processes > 1 and not device.startswith("cuda"):
        for key in NORM_KEYS:
            if key == "MODEL.ROI_MASK_HEAD.NORM" and not cfg.MODEL.MASK_ON:
                continue  # no mask head is built
            if lookup(cfg, key) == "SyncBN":
                raise ConfigError(f"{key} is 'SyncBN' (torch's SyncBatchNorm, GPU only) but {num_processes} processes "
                                  f"run on the CPU; add the override `{key}` `naiveSyncBN` (synchronized through "
                                  "gloo) or `BN`")
    if cfg.SOLVER.AMP.ENABLED and not device.startswith("cuda"):
        raise ConfigError("SOLVER.AMP.ENABLED is True but MODEL.DEVICE is not a GPU; add the override "
                          "`SOLVER.AMP.ENABLED False`")


def validate_config(cfg, num_processes=1, pretraining=False):
    """Raises :class:`ConfigError` for the first problem of ``cfg``'s values (module docstring); returns None when
    there is none. ``num_processes``: the processes of the run, all machines; ``pretraining``: the config is for
    ``PretrainTrainer``, so MODEL.META_ARCHITECTURE must be a pretraining model."""
    _check_choices(cfg)
    _check_model(cfg, pretraining)
    _check_general(cfg)
    _check_soco_views(cfg)
    _check_oac_views(cfg)
    _check_oac_model(cfg)
    _check_solver(cfg, num_processes)
    _check_devices(cfg, num_processes)
