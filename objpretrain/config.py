"""Config keys added by objpretrain, each with its default and the paper section it comes from.

Call ``add_objpretrain_config(cfg)`` on a Detectron2 ``get_cfg()`` before merging one of our YAML files,
as Detectron2's own projects do (``add_pointrend_config`` and friends). ``get_pretrain_cfg()`` does both.

Paper references: "SoCo" is Wei et al., "Aligning Pretraining for Detection via Object-Level Contrastive
Learning" (NeurIPS 2021); "OAC" is Mishra et al., "Object-aware Cropping for Self-Supervised Learning"
(TMLR 2022). Both are in ../shared/papers/ of the development workspace.
"""
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["ConfigError", "ConfigFileError", "add_objpretrain_config", "get_pretrain_cfg", "merge_config_file"]


class ConfigError(ValueError):
    """A problem with a config that the user fixes with an override or a command; the message is one line that names
    the key, its value and what would do (tools print it and exit with status 2, before any process starts)."""


class ConfigFileError(ValueError):
    """A config file (or a ``_BASE_`` it names) that cannot be merged; the one-line message names the file."""


def add_objpretrain_config(cfg):
    """Adds every objpretrain key to ``cfg`` in place (idempotent)."""
    if hasattr(cfg, "OBJPRETRAIN"):
        return cfg
    _add_general_config(cfg)
    _add_datasets_config(cfg)
    _add_pretraining_model_config(cfg)
    _add_soco_config(cfg)
    _add_oac_config(cfg)
    _add_solver_config(cfg)
    _add_finetune_config(cfg)
    return cfg


def get_pretrain_cfg(config_file=None, opts=None):
    """A Detectron2 config with objpretrain keys, optionally merged with a YAML file and KEY VALUE opts."""
    cfg = get_cfg()
    add_objpretrain_config(cfg)
    if config_file:
        merge_config_file(cfg, config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg


def merge_config_file(cfg, path):
    """``cfg.merge_from_file(path)`` with YAML's safe loader, and a ConfigFileError naming ``path`` for any problem.

    Detectron2's ``merge_from_file`` defaults to ``allow_unsafe=True``: a tag such as ``!!python/object/apply`` in a
    config, or in a ``_BASE_`` it names, would run code when the file is read. Safe loading refuses the tag. A
    ``_BASE_`` chain that comes back to a file recurses until Python's limit; that is reported as what it is.
    """
    try:
        cfg.merge_from_file(path, allow_unsafe=False)
    except RecursionError:
        raise ConfigFileError(f"config {path}: its _BASE_ chain never ends (a file is its own base, directly or "
                              "through others)") from None
    except Exception as error:  # yaml, unicode, yacs type/key errors, _BASE_ of the wrong type or missing
        message = " ".join(str(error).split())  # YAML errors span several lines; preflight prints one
        if isinstance(error, (AttributeError, TypeError)):  # fvcore's words for an empty file or a bad _BASE_
            message += " (a config file, and each _BASE_ it names, must be a YAML mapping; _BASE_ is a file name)"
        raise ConfigFileError(f"config {path}: {type(error).__name__}: {message}") from error


def _add_general_config(cfg):
    _C = cfg
    _C.OBJPRETRAIN = CN()
    # The pretraining dataset mapper. Each pretraining meta-architecture names the one it takes (SoCo: SoCoMapper,
    # SoCo §3.2; OAC models: OACMapper, OAC §4.1; objpretrain.modeling.contract); "" uses it. Configs written before
    # that may still name it, by its registered or its short name ("soco", "oac"): it must be the model's.
    _C.OBJPRETRAIN.MAPPER = ""
    # What to do with an image that fails to decode in the pretraining loader: "skip" logs and counts it
    # and draws another image; "raise" stops with the file name.
    _C.OBJPRETRAIN.BAD_IMAGE_POLICY = "skip"
    # The proposal preset (objpretrain.data.proposals.PRESETS) the config's recipe expects, e.g. "soco_official"
    # for configs/official/*: at start-up each DATASETS.PROPOSAL_FILES_TRAIN file's recorded recipe is compared
    # with it (one extra read of each file, on rank 0) and a difference is logged as a warning. "": no check.
    _C.OBJPRETRAIN.PROPOSAL_PRESET = ""
    # What to do when the loss is NaN/Inf: "raise" stops with the batch's image ids, "skip" drops the step.
    _C.OBJPRETRAIN.NONFINITE_LOSS_POLICY = "raise"
    # Iterations between console/JSON/TensorBoard metric writes; each written value is the median over
    # that period (1 writes every iteration's raw values).
    _C.OBJPRETRAIN.LOG_PERIOD = 20
    # Health monitors (objpretrain/engine/health.py, docs/pretraining.md): embedding spread, losses beside their
    # collapse values, backbone movement, online-target distance, view retrieval against the initial weights.
    _C.OBJPRETRAIN.HEALTH = CN()
    _C.OBJPRETRAIN.HEALTH.ENABLED = True
    # Iterations between measurements; 0 = OBJPRETRAIN.LOG_PERIOD.
    _C.OBJPRETRAIN.HEALTH.PERIOD = 0
    # An embedding whose mean cosine to the batch-mean direction is at least this is collapsed. A random
    # ResNet's embeddings sit at 0.90-0.96 on the study's scenes; a learning MoCo-v2 falls to 0.6-0.8.
    _C.OBJPRETRAIN.HEALTH.COLLAPSE_COSINE = 0.98
    # A ResNet stage whose weights changed by less than this (relative) in one period is not moving.
    _C.OBJPRETRAIN.HEALTH.MIN_MOVEMENT = 1e-4
    # Periods in a row a monitor must be unhealthy before the warning (and the stop).
    _C.OBJPRETRAIN.HEALTH.PATIENCE = 5
    # Stop the run (TrainingCollapsedError) when a monitor stays unhealthy for PATIENCE periods.
    _C.OBJPRETRAIN.HEALTH.STOP_ON_COLLAPSE = False
    # View retrieval every this many iterations (0: never); on RETRIEVAL_IMAGES images of RETRIEVAL_DATASET (a
    # registered dataset, ideally held out; "" = the first of DATASETS.TRAIN), at RETRIEVAL_SIZE px (0 = the
    # training view size), views drawn once from RETRIEVAL_SEED.
    _C.OBJPRETRAIN.HEALTH.RETRIEVAL_PERIOD = 0
    _C.OBJPRETRAIN.HEALTH.RETRIEVAL_DATASET = ""
    _C.OBJPRETRAIN.HEALTH.RETRIEVAL_IMAGES = 128
    _C.OBJPRETRAIN.HEALTH.RETRIEVAL_SIZE = 0
    _C.OBJPRETRAIN.HEALTH.RETRIEVAL_SEED = 0


def _add_datasets_config(cfg):
    _C = cfg
    # Datasets registered from the config (objpretrain.data.datasets.register_datasets_from_cfg), so that a run's
    # saved config.yaml registers them again. COCO-format sets, for fine-tuning and probes: "name:json_file:image_root".
    _C.DATASETS.COCO_JSON_REGISTER = []
    # Unlabelled image folders, for pretraining: "name:root" (image ids = relative paths without extension, the ids
    # tools/generate_proposals.py --images DIR writes).
    _C.DATASETS.IMAGE_FOLDER_REGISTER = []


def _add_pretraining_model_config(cfg):
    _C = cfg
    # ---- Every pretraining meta-architecture (SoCo and OAC) and its trainer ----
    # Zero-initialize gamma of the last norm in every residual branch of the pretrained ResNet (and SoCo-C4's res5
    # head), so each block starts as the identity (Goyal et al. 2017). The papers do not say; the official SoCo
    # ResNet does it (contrast/resnet.py, docs/fidelity.md); Detectron2's leaves gamma at 1.
    _C.MODEL.RESNETS.ZERO_INIT_RESIDUAL = False
    # Pretraining weights in channels-last layout when MODEL.DEVICE is a GPU (cuDNN's NHWC tensor-core kernels:
    # +9 % images/s under AMP on an H200; on a CPU it gained nothing, so it is never applied there;
    # docs/performance.md). Numbers are unchanged to fp32 rounding.
    _C.MODEL.CHANNELS_LAST = True


def _add_soco_config(cfg):
    _C = cfg
    # ---- Model (SoCo §3.3, §4.1) ----
    _C.MODEL.SOCO = CN()
    # Feature maps RoIAlign reads: P2-P5 for SoCo-R50-FPN (§3.3: "we do not use P6"), res4 for SoCo-R50-C4.
    _C.MODEL.SOCO.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    # RoIAlign output size and type: the Mask R-CNN box head's (§3.3, Eq. 1).
    _C.MODEL.SOCO.POOLER_RESOLUTION = 7
    _C.MODEL.SOCO.POOLER_TYPE = "ROIAlignV2"
    _C.MODEL.SOCO.POOLER_SAMPLING_RATIO = 0
    # Scale-aware assignment (§3.3): upper edges (in pixels, sqrt of box area) of the size bands that go to
    # P2, P3, P4; larger boxes go to P5. Bands 0-48², 48²-96², 96²-192², >192².
    _C.MODEL.SOCO.SCALE_AWARE_THRESHOLDS = [48, 96, 192]
    # Off: Detectron2's default FPN level rule (canonical box 224 on P4) instead, for the ablation of Table 5.
    _C.MODEL.SOCO.SCALE_AWARE_ASSIGNMENT = True
    # Projector g and predictor q (§4.1): Linear(4096) -> BN -> ReLU -> Linear(256).
    _C.MODEL.SOCO.PROJECTOR_HIDDEN_DIM = 4096
    _C.MODEL.SOCO.PROJECTOR_OUT_DIM = 256
    _C.MODEL.SOCO.PREDICTOR_HIDDEN_DIM = 4096
    # Norm inside projector and predictor: "BN", "SyncBN" (§4.1: "synchronized batch normalization is
    # enabled"; torch's, CUDA only), "naiveSyncBN" (the same statistics through an all-reduce, any backend) or ""
    # for none.
    _C.MODEL.SOCO.HEAD_NORM = "BN"
    # "" (the paper, §4.1, and the official code) or "BN": a BatchNorm without affine parameters after the
    # projector's last Linear (SimSiam's output BN). It centres the targets over the batch, so a predictor that
    # outputs the mean target no longer lowers the loss (docs/results.md: the predictor's early mean phase).
    _C.MODEL.SOCO.PROJECTOR_OUTPUT_NORM = ""
    # Target network EMA (§4.1, following BYOL): tau rises from BASE to END on a cosine schedule over training.
    # How the objects of one image are weighted in the loss when a proposal fills several of its K rows (an image
    # with fewer usable proposals, FALLBACK "repeat"): "rows", each row once and the mean over the batch's rows
    # (Eq. 5-6 as written); "pairs", every pair of rows with the same proposal in the two views, normalized per
    # image (the official correspondence matrix, regression_loss_bboxs_aware in contrast/models/SoCo_FPN.py:
    # [a, a, a, b] weighs a : b as 9 : 1, not 3 : 1).
    _C.MODEL.SOCO.REPEATED_BOX_WEIGHTING = "rows"
    # How the views go through the online and target networks: "per_view", one call per view, so BatchNorm
    # normalizes each view with its own batch statistics (the paper does not say; the official code does this:
    # encoder(im_1), encoder(im_2), ... in contrast/models/SoCo_FPN.py); "per_size", one call per view size (V1 with
    # V2 at 224 px, then V3, V4): fewer, larger kernels (bench/train_step.py --compare, docs/performance.md), with
    # BatchNorm statistics over each size group.
    _C.MODEL.SOCO.VIEW_BATCHING = "per_view"
    _C.MODEL.SOCO.MOMENTUM_BASE = 0.99
    _C.MODEL.SOCO.MOMENTUM_END = 1.0

    # ---- Views (SoCo §3.2) ----
    _C.INPUT.SOCO = CN()
    # V1: whole image resized to this square size.
    _C.INPUT.SOCO.VIEW_SIZE = 224
    # V2: random crop of V1 with this area-scale range, resized to VIEW_SIZE.
    _C.INPUT.SOCO.CROP_SCALE = (0.5, 1.0)
    # V2 (and V4) crop aspect-ratio range (log-uniform), as torchvision's RandomResizedCrop.
    _C.INPUT.SOCO.CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
    # V3: V2 downsampled to this size (§3.2 "e.g. 112x112"); 0 disables V3 (the C4 variant, §3.3).
    _C.INPUT.SOCO.V3_SIZE = 112
    # SoCo* (§4.3): an extra random crop of V1 resized to this size; 0 disables V4.
    _C.INPUT.SOCO.V4_SIZE = 0
    # K proposals sampled per image (§3.2, Table 5 default K=4).
    _C.INPUT.SOCO.NUM_PROPOSALS = 4
    # A proposal "survives" in the V2 crop when at least this fraction of its area lies inside the crop
    # (and inside the V4 crop when V4 is on); K survivors are sampled (§3.2: "proposals outside of V2 are
    # dropped").
    _C.INPUT.SOCO.MIN_VISIBLE_FRACTION = 0.5
    # Box jitter (§3.2): applied with this probability, r uniform in [-RATIO, RATIO] per coordinate,
    # drawn independently for each view so a proposal's box differs across views.
    _C.INPUT.SOCO.BOX_JITTER_PROB = 0.5
    _C.INPUT.SOCO.BOX_JITTER_RATIO = 0.1
    # Fewer than K usable proposals (none, or no proposal entry, included): "repeat" (resample the usable
    # ones; "whole_image" when there are none), "whole_image" (pad with the region visible in every view, the
    # V2 crop) or "random" (pad with random proposal-sized boxes inside it, as Table 5(c) "Random").
    # Counted in SoCoMapper.counters and logged by each loader worker.
    _C.INPUT.SOCO.FALLBACK = "repeat"
    # BYOL augmentations (§3.2 "we adopt the augmentation pipeline of BYOL"), probabilities per view:
    # view 1 / view 2 as in BYOL Table 6 (blur 1.0/0.1, solarize 0.0/0.2); V3 and V4 use view 2's.
    _C.INPUT.SOCO.COLOR_JITTER_PROB = 0.8
    _C.INPUT.SOCO.COLOR_JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    _C.INPUT.SOCO.GRAYSCALE_PROB = 0.2
    _C.INPUT.SOCO.BLUR_PROB = (1.0, 0.1)
    # Gaussian blur sigma range (BYOL; kernel 10% of the view side, 23 px at 224).
    _C.INPUT.SOCO.BLUR_SIGMA = (0.1, 2.0)
    _C.INPUT.SOCO.SOLARIZE_PROB = (0.0, 0.2)
    # Horizontal flip, drawn per view (BYOL); it moves the boxes too.
    _C.INPUT.SOCO.HFLIP_PROB = 0.5
    # ---- Where the official SoCo code (hologerry/SoCo) departs from the paper's text; docs/fidelity.md ----
    # What V2 (and V4, and every OWN_PROPOSAL_VIEWS view) is cropped from: "v1", the 224 px V1 (§3.2 "a random crop
    # ... on V1"), or "original", the decoded image, with CROP_SCALE and CROP_RATIO relative to it, as the
    # official RandomResizedCropParams (contrast/data/transform_ops.py) does.
    _C.INPUT.SOCO.CROP_FROM = "v1"
    # Views cropped on their own, each with its own K proposals and its own V1 boxes for the pair (V1, view):
    # none in the paper (V3 is V2 downsampled, §3.2). Official: ("v3",) for R50-FPN (V3 a 112 px crop of the
    # original, ImageFolderImageAsymBboxAwareMultiJitter1 in contrast/data/dataset.py) and ("v4",) for SoCo*
    # (the official's "image3", 192 px; its "image4" is V2 at 112 px, our V3).
    _C.INPUT.SOCO.OWN_PROPOSAL_VIEWS = ()
    # Which proposals survive the crops: "visible_fraction" (at least MIN_VISIBLE_FRACTION of the box inside every
    # crop of its views) or "any_overlap" (official get_overlap_props: any overlap with the crop; the box is then
    # clipped to the view).
    _C.INPUT.SOCO.PROPOSAL_KEEP_RULE = "visible_fraction"
    # Draws of the crops per image: 1 = one draw. Official 5 (--max_tries): the crops are drawn again while a view
    # pair has fewer than max(K // 2, 1) surviving proposals, that bar halving after each draw; the last draw is
    # kept, with FALLBACK padding.
    _C.INPUT.SOCO.CROP_TRIES = 1
    # Which views' boxes are jittered: "all" (each view independently) or "v1" (official jitter_props: only V1's
    # boxes, once per view pair).
    _C.INPUT.SOCO.BOX_JITTER_VIEWS = "all"
    # The point the jitter keeps: "center" (x and y of §3.2 read as the box centre) or "corner" (official: x1 +=
    # r w, y1 += r h, then the new width and height from that corner).
    _C.INPUT.SOCO.BOX_JITTER_ANCHOR = "center"
    # Cutout inside boxes (official 100-epoch FPN and C4 scripts only, RandomCutoutInBbox): in every view but V1,
    # each box, with this probability, gets a square of CUTOUT_AREA x its area, centred at a random point of the
    # box, filled with MODEL.PIXEL_MEAN (0 after normalization, as the official fills the normalized tensor). 0: off.
    _C.INPUT.SOCO.CUTOUT_PROB = 0.0
    _C.INPUT.SOCO.CUTOUT_AREA = (0.1, 0.3)


def _add_oac_config(cfg):
    _C = cfg
    # ---- Cropping (OAC §4.1, §5) ----
    _C.INPUT.OAC = CN()
    # "scene" (MoCo-v2 baseline), "obj-obj", or "obj-obj+dilate".
    _C.INPUT.OAC.CROP_MODE = "obj-obj+dilate"
    # Dilation delta, as a fraction of the image size (§4.1: 10% or 20%; 0.1 works well).
    _C.INPUT.OAC.DILATION = 0.1
    # How the box is dilated: "paper" (§4.1: every side moves out by DILATION x the image size) or "official" (the
    # released code scales each coordinate about the image origin, x0 - int(x0 * delta), x1 + int(x1 * delta);
    # objpretrain.data.boxes_oac.dilate_box). Both are clipped to the image.
    _C.INPUT.OAC.DILATION_MODE = "paper"
    # Boxes (and dilated boxes) narrower or lower than this many pixels are widened as the released code does before
    # cropping (it uses 224: objpretrain.data.boxes_oac.widen_small_box_official); 0, the paper (§4.1), does not.
    _C.INPUT.OAC.MIN_BOX_SIDE = 0.0
    # At most this many proposals per image, one picked at random per sample (§4.1, §5: 10 LOD proposals).
    _C.INPUT.OAC.MAX_PROPOSALS = 10
    # Random-crop lower scale bound inside a box. 0 means s_min = SCENE_CROP_MIN / average proposal size (§5).
    _C.INPUT.OAC.CROP_SCALE_MIN = 0.0
    _C.INPUT.OAC.SCENE_CROP_MIN = 0.2
    # Upper scale bound of scene crops (MoCo-v2's RandomResizedCrop: 1). Below 1, crops resized to CROP_SIZE can keep
    # the objects at the scale a detector sees them: 64-px crops of a quarter of a 128-px scene (about 0.25) show
    # the objects at their own size, where crops of 0.5-1 halve them (docs/results.md, "Controls for the missing gain").
    _C.INPUT.OAC.SCENE_CROP_MAX = 1.0
    # Crops of the dilated box: this lower scale bound; 0 means the object crop's s_min. The authors' code
    # crops the dilated box with MoCo-v2's scene range (0.2, 1) (§4.1 leaves it open).
    _C.INPUT.OAC.DILATED_CROP_SCALE_MIN = 0.2
    # Aspect-ratio range of every crop (log-uniform), as MoCo-v2's RandomResizedCrop.
    _C.INPUT.OAC.CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
    # Output crop size (MoCo-v2's 224).
    _C.INPUT.OAC.CROP_SIZE = 224
    # MoCo-v2 augmentations after cropping (§5 "we closely follow the standard protocol" of MoCo-v2):
    # colour jitter (0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale p=0.2, Gaussian blur sigma in [0.1, 2] p=0.5,
    # horizontal flip p=0.5. The whole image of the localization task gets the same ones (§4.2.2).
    _C.INPUT.OAC.COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    _C.INPUT.OAC.COLOR_JITTER_PROB = 0.8
    _C.INPUT.OAC.GRAYSCALE_PROB = 0.2
    _C.INPUT.OAC.BLUR_PROB = 0.5
    _C.INPUT.OAC.HFLIP_PROB = 0.5
    # Use ground-truth boxes of the dataset as "proposals" (OAC Table 4 ablation).
    _C.INPUT.OAC.USE_GT_BOXES = False
    # The items of an epoch: False, one per image with a random one of its boxes each time (§4.1); True, one per box
    # (of the MAX_PROPOSALS proposals, or of the ground-truth boxes), always cropped around that box, as the
    # released OpenImages loader (datasets/openimages_dataset_bing.py: an entry per annotated box), so an epoch
    # visits an image once per box and SOLVER.EPOCHS counts boxes.
    _C.INPUT.OAC.ITEM_PER_BOX = False
    # Probability that the two crops trade places (view 1 the dilated crop, view 2 the object crop): the released
    # loader returns them in random order (p 0.5), so each of the separate heads sees both kinds; 0 keeps view 1
    # the object crop (§4.1), which the pretext losses need.
    _C.INPUT.OAC.SWAP_VIEWS_PROB = 0.0
    # Rotation pretext task (§4.2.1): angles the object crop may be rotated by.
    _C.INPUT.OAC.ROTATIONS = [0, 90, 180, 270]
    # Localization pretext task (§4.2.2): the whole image is split into p x p patches.
    _C.INPUT.OAC.LOC_GRID = 4

    # ---- Models (OAC §4.2; MoCo-v2, BYOL, DenseCL) ----
    _C.MODEL.OAC = CN()
    # The SSL method is the meta-architecture: OACMoCo (MoCo-v2), OACBYOL or OACDenseCL (§5, Table 5).
    # MoCo-v2: queue length, InfoNCE temperature, key-encoder momentum; MLP head 2048 -> 128.
    _C.MODEL.OAC.QUEUE_SIZE = 65536
    # What the queue holds before it has seen QUEUE_SIZE keys. "random": random unit vectors, all of them
    # negatives from the first iteration (official MoCo, moco/builder.py; the papers do not say). "empty": only
    # the keys enqueued so far are negatives; random rows reward pulling queries together until real keys
    # replace them, which collapsed the queries at small batch (docs/results.md, configs/learning/).
    _C.MODEL.OAC.QUEUE_START = "random"
    _C.MODEL.OAC.TEMPERATURE = 0.2
    _C.MODEL.OAC.MOMENTUM = 0.999
    # Target momentum at the end of training (cosine schedule from MOMENTUM): MoCo keeps 0.999 throughout;
    # BYOL goes 0.99 -> 1.0 (BYOL §3.2).
    _C.MODEL.OAC.MOMENTUM_END = 0.999
    _C.MODEL.OAC.HEAD_HIDDEN_DIM = 2048
    _C.MODEL.OAC.HEAD_OUT_DIM = 128
    # Separate projection heads for the object view and the dilated view (§4.1). Each head must see its own
    # view on the query side to be trained, so MoCo and DenseCL then use the symmetrized loss (view 1 -> key
    # view 2 and view 2 -> key view 1, one key queue per head); with a shared head they are MoCo-v2's
    # one-sided loss with one queue.
    _C.MODEL.OAC.SEPARATE_HEADS = True
    # How separate heads start: "independent" (each its own random draw) or "equal" (view 2's head a copy of
    # view 1's). The paper does not say and the released code has one head (moco/builder.py). With independent
    # heads each query is matched against keys from another random head, so the two must first be aligned; at
    # small scale the queries collapsed (cosine to the mean 1.000) while they were (docs/results.md).
    _C.MODEL.OAC.SEPARATE_HEADS_INIT = "independent"
    # Norm in the MLP heads: "" for MoCo-v2's and DenseCL's (Linear-ReLU-Linear), "BN" for BYOL's (§3.3).
    _C.MODEL.OAC.HEAD_NORM = ""
    # MoCo's shuffle-BN (§3.3) for MoCo-v2 and DenseCL under DDP: the key encoder sees a batch shuffled across
    # processes. On in MoCo's and the OAC release's code (moco/builder.py, _batch_shuffle_ddp); pointless with
    # synchronized BN in the key encoder, and inactive on one process.
    _C.MODEL.OAC.SHUFFLE_BN = True
    # BYOL predictor hidden size (BYOL §3.3: 4096).
    _C.MODEL.OAC.PREDICTOR_HIDDEN_DIM = 4096
    # Loss weights: L = L_ssl + LAMBDA_ROT * L_rot + LAMBDA_LOC * L_loc (§4.2, Eq. 2 uses 1 and 1).
    _C.MODEL.OAC.LAMBDA_ROT = 0.0
    _C.MODEL.OAC.LAMBDA_LOC = 0.0
    # Hidden size of the rotation and localization MLPs.
    _C.MODEL.OAC.PRETEXT_HIDDEN_DIM = 512
    # DenseCL: weight of the dense loss against the global one (DenseCL uses 0.5).
    _C.MODEL.OAC.DENSE_LOSS_WEIGHT = 0.5


def _add_solver_config(cfg):
    _C = cfg
    # "LARS" (SoCo §4.1) or "SGD".
    _C.SOLVER.OPTIMIZER = "SGD"
    # LARS trust coefficient and eps (You et al. 2017); biases and norm parameters are excluded from weight
    # decay and from the trust-ratio adaptation, as in BYOL.
    _C.SOLVER.LARS_TRUST_COEFFICIENT = 0.001
    _C.SOLVER.LARS_EPS = 1e-8
    # Linear lr scaling (SoCo §4.1): lr = BASE_LR * IMS_PER_BATCH / LR_SCALE_BATCH_SIZE; 0 disables scaling.
    _C.SOLVER.LR_SCALE_BATCH_SIZE = 0
    # "linear" (the papers') or "sqrt": lr = BASE_LR * sqrt(IMS_PER_BATCH / LR_SCALE_BATCH_SIZE), the rule small-batch
    # SSL commonly uses (configs/learning/: from batch 32 on a CPU to 256+ on a GPU without an 8x lr jump).
    _C.SOLVER.LR_SCALING = "linear"
    # lr of the predictor q (BYOL, SoCo) as a multiple of the others'. 1 in the papers; a larger predictor lr
    # shortens the phase in which the predictor outputs the mean target (Tian et al. 2021, "Understanding
    # self-supervised learning dynamics without contrastive pairs", §6).
    _C.SOLVER.PREDICTOR_LR_FACTOR = 1.0
    # Pretraining length in epochs; when > 0 it overrides MAX_ITER (and WARMUP_EPOCHS overrides
    # WARMUP_ITERS) using the dataset size and IMS_PER_BATCH (SoCo §4.1: 100 or 400 epochs, 10 warm-up).
    _C.SOLVER.EPOCHS = 0
    _C.SOLVER.WARMUP_EPOCHS = 0


def _add_finetune_config(cfg):
    _C = cfg
    # Extra norm after res5 in the C4 head (MoCo / SoCo C4 finetune configs), used by Res5ROIHeadsExtraNorm.
    _C.MODEL.ROI_BOX_HEAD.RES5_EXTRA_NORM = True
