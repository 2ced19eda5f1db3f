"""Conversion of pretraining checkpoints into Detectron2 (and torchvision) checkpoints for transfer.

Inputs (detected from the parameter names, docs/design.md "Model parameter names"):

* our pretraining checkpoints (``DetectionCheckpointer`` .pth, ``{"model": state_dict, ...}``): SoCo (FPN)
  ``online_network.{backbone.bottom_up, backbone.fpn_*, box_head}``, SoCo-C4 ``online_network.{backbone,
  res5}``, image-level models (OAC with MoCo-v2 / BYOL / DenseCL) ``online_network.backbone`` (a whole ResNet);
  ``--encoder target`` takes ``target_network.*`` instead;
* torchvision-layout ResNets as released by MoCo (``module.encoder_q.`` prefix), BYOL and DenseCL ports, or
  torchvision itself (``conv1.weight``, ``layer1.0.conv1.weight``, ...);
* Detectron2-named ResNets and detectors (``.pkl`` or ``.pth``).

Targets:

* ``d2-fpn``: ``backbone.bottom_up.*``, ``backbone.fpn_*``, ``roi_heads.box_head.*``. An image-level model
  gives the bottom-up ResNet only; FPN and box head are then newly initialized at finetuning (OAC §5).
* ``d2-c4``: ``backbone.*`` (stem to res4) and ``roi_heads.res5.*``.
* ``d2-backbone``: the bare ResNet (``stem.*``, ``res2.*`` ... ``res5.*``) with ``matching_heuristics`` on,
  which Detectron2 loads into FPN and C4 detectors alike (as its convert-torchvision-to-d2.py output).
* ``torchvision``: a torchvision ResNet state dict (no ``fc``), e.g. for linear evaluation.

Projector, predictor, queues, pretext heads and the other encoder are dropped and reported. Anything that
would give a silently wrong detector (a truncated ResNet, disagreeing shapes, non-finite values, a
checkpoint whose layout does not fit the target) raises ``CheckpointError`` with the file and the reason.
"""
import fnmatch
import logging
import os
import pickle
import re
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from tabulate import tabulate

from ..utils.atomic_io import atomic_write
from ..utils.safe_pickle import UnsafePickleError, load_pickle, load_torch_file
from .torchvision_names import TORCHVISION_BACKBONE_ANCHOR, d2_to_torchvision, torchvision_to_d2
from .weight_scale import restore_initializer_scale, summarize_factors

__all__ = [
    "DROPPABLE_PARTS",
    "TARGETS",
    "CheckpointError",
    "Conversion",
    "ParsedCheckpoint",
    "check_against_model",
    "convert_checkpoint",
    "convert_state_dict",
    "format_report",
    "load_state_dict",
    "parse_state_dict",
    "save_conversion",
]

logger = logging.getLogger(__name__)

TARGETS = ("d2-fpn", "d2-c4", "d2-backbone", "torchvision")
# Pretrained parts of an FPN model that --drop leaves out of a d2-fpn conversion (SoCo Table 4's alignment ablation:
# backbone only = --to d2-backbone, backbone + FPN = --to d2-fpn --drop box_head); the detector initializes them anew.
# "stem" is the ResNet's first conv and its norm: the module-re-initialization control of docs/results.md
# ("Controls for the missing gain"), for a stem pretrained on views at another scale than the detector's images.
DROPPABLE_PARTS = ("fpn", "box_head", "stem")
ENCODERS = ("online", "target")
RESNET_STAGES = ("res2", "res3", "res4", "res5")
# Blocks per stage of the standard depths, by convs per block (Detectron2's ResNet: 2 basic, 3 bottleneck).
_RESNET_DEPTHS = {2: {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34},
                  3: {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}}
# res2-res4 blocks of R18 / R34 C4 models, whose res5 is Res5ROIHeads' 3 bottleneck blocks.
_BASIC_C4_DEPTHS = {(2, 2, 2): 18, (3, 4, 6): 34}

# Bare Detectron2 ResNet parameter names (deformable offsets and anything else fall outside and are reported).
_RESNET_NAME = re.compile(r"^(stem\.conv1|res[2-5]\.\d+\.(conv\d+|shortcut))\.(norm\.)?\w+$")
_FPN_NAME = re.compile(r"^(fpn_(lateral|output)\d+|top_block)\.")
# Words that mark the network of a multi-network torchvision-layout checkpoint (MoCo: encoder_q / encoder_k).
_ENCODER_WORDS = {"online": ("encoder_q", "online", "student", "query"),
                  "target": ("encoder_k", "target", "momentum", "teacher", "key")}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the file and the reason."""


_FULL_UNPICKLE_HINT = ("; if you trust its source, pass --unsafe-full-unpickle (tools/convert_ckpt.py, "
                       "tools/linear_eval.py)")


@dataclass
class ParsedCheckpoint:
    """The transferable parts of a checkpoint, each a dict: name within the part -> (source name, tensor).

    ``layout`` says where res5 was trained: ``"fpn"`` (bottom-up stage of an FPN), ``"c4"`` (RoI head on res4
    features) or ``"plain"`` (a whole ResNet without detection structure: image-level and torchvision models).
    """

    kind: str
    layout: str
    resnet: dict = field(default_factory=dict)  # bare Detectron2 ResNet names
    fpn: dict = field(default_factory=dict)  # names under a detector's ``backbone.``
    box_head: dict = field(default_factory=dict)  # names under ``roi_heads.box_head.``
    dropped: list = field(default_factory=list)  # (source name, shape, reason)


@dataclass
class Conversion:
    """A converted state dict and where every tensor came from (or went)."""

    target: str
    kind: str
    state_dict: "OrderedDict[str, torch.Tensor]"
    sources: dict  # output name -> source name
    dropped: list  # (source name, shape, reason)
    new_modules: list = field(default_factory=list)  # (module name, why it is newly initialized)
    matching_heuristics: bool = False
    # (weight name, factor) of restore_initializer_scale; None when the weight scale was kept (or not a d2 target)
    rescaled: list = None


# ---------------------------------------------------------------------------------------------------- loading


def load_state_dict(path, unsafe_full_unpickle=False):
    """name -> tensor of the checkpoint at ``path`` (.pth / .pt / .pth.tar via torch.load, .pkl via unpickling).

    Unwraps ``{"model": ...}`` (Detectron2), ``{"state_dict": ...}`` (MoCo, mmcv) and similar containers.
    Raises CheckpointError naming the file when it is missing, truncated, corrupt or holds no state dict.
    No code runs from the file (objpretrain/utils/safe_pickle.py): one that holds Python objects (a released MoCo
    checkpoint's argparse Namespace) raises UnsafePickleError, unless ``unsafe_full_unpickle`` reads it with
    the full unpickler (the tools' --unsafe-full-unpickle, for a file from a source the user trusts).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    load = load_pickle if path.endswith(".pkl") else load_torch_file
    try:
        data = load(path, unsafe_full_unpickle=unsafe_full_unpickle, allow_hint=_FULL_UNPICKLE_HINT)
    except UnsafePickleError:
        raise
    except Exception as e:  # torch.load and pickle raise many types on truncated or foreign files
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint, the file is truncated, corrupt or not a checkpoint "
            f"({type(e).__name__}: {e})"
        ) from e
    state_dict = _find_state_dict(data)
    if state_dict is None:
        keys = sorted(data)[:10] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: holds no state dict (name -> tensor); top level: {keys}")
    tensors = OrderedDict()
    for name, value in state_dict.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.array(value))  # a copy: writable, contiguous, 0-d kept 0-d
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} of the state dict is a {type(value).__name__}, not a tensor")
        tensors[name] = value.detach().cpu()
    return tensors


def _is_state_dict(obj):
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in obj.values())
    )


def _find_state_dict(data):
    if _is_state_dict(data):
        return data
    if isinstance(data, dict):
        for key in ("model", "state_dict", "model_state", "network"):
            if key in data:
                found = _find_state_dict(data[key])
                if found is not None:
                    return found
    return None


# ---------------------------------------------------------------------------------------------------- parsing


def parse_state_dict(state_dict, encoder="online"):
    """Splits a state dict into ResNet, FPN, box head and dropped tensors (see ParsedCheckpoint)."""
    if encoder not in ENCODERS:
        raise CheckpointError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
    if state_dict and all(name.startswith("module.") for name in state_dict):  # (Distributed)DataParallel
        state_dict = OrderedDict((name[len("module."):], t) for name, t in state_dict.items())
    names = list(state_dict)
    if any(n.startswith(("online_network.", "target_network.")) for n in names):
        return _parse_objpretrain(state_dict, encoder)
    if any(n == "stem.conv1.weight" or n.endswith(".stem.conv1.weight") for n in names):
        return _parse_detectron2(state_dict, encoder)
    if any(n.endswith(TORCHVISION_BACKBONE_ANCHOR) for n in names):
        return _parse_torchvision(state_dict, encoder)
    if any(n.startswith("res2_0_branch2a") or n == "conv1_w" for n in names):
        raise CheckpointError(
            "Caffe2/Detectron (MSRA) names such as 'res2_0_branch2a_w': Detectron2 loads these files directly "
            "(MODEL.WEIGHTS), there is nothing to convert"
        )
    raise CheckpointError(
        "unrecognized parameter names: neither an objpretrain model (online_network.*), a Detectron2 ResNet "
        f"(stem.conv1.weight) nor a torchvision ResNet (layer1.0.conv1.weight); first names: {names[:5]}"
    )


def _parse_objpretrain(state_dict, encoder):
    chosen = f"{encoder}_network."
    if not any(n.startswith(chosen) for n in state_dict):
        present = sorted({n.split(".")[0] for n in state_dict})
        raise CheckpointError(
            f"--encoder {encoder}: the checkpoint has no {chosen[:-1]} (top-level modules: {present})")
    parts = {"resnet": {}, "fpn": {}, "box_head": {}}
    dropped, has_c4_head = [], False
    for name, tensor in state_dict.items():
        if not name.startswith(chosen):
            module = name.split(".")[0]
            reason = "the other encoder (--encoder picks one)" if module.endswith("_network") else (
                f"pretraining-only module '{module}'")
            dropped.append((name, tuple(tensor.shape), reason))
            continue
        rest = name[len(chosen):]
        if rest.startswith("backbone.bottom_up."):
            part, key = "resnet", rest[len("backbone.bottom_up."):]
        elif rest.startswith("backbone.") and _FPN_NAME.match(rest[len("backbone."):]):
            part, key = "fpn", rest[len("backbone."):]
        elif rest.startswith("backbone."):
            part, key = "resnet", rest[len("backbone."):]
        elif rest.startswith("box_head."):
            part, key = "box_head", rest[len("box_head."):]
        elif rest.startswith("res5."):
            part, key, has_c4_head = "resnet", rest, True
        else:
            dropped.append((name, tuple(tensor.shape), f"pretraining-only module '{rest.split('.')[0]}'"))
            continue
        if part == "resnet" and not _RESNET_NAME.match(key):
            dropped.append((name, tuple(tensor.shape), "not a ResNet parameter"))
            continue
        if key in parts[part]:
            raise CheckpointError(f"{name} and {parts[part][key][0]} both map to {key}")
        parts[part][key] = (name, tensor)
    bottom_up = any(n.startswith(chosen + "backbone.bottom_up.") for n in state_dict)
    if bottom_up and has_c4_head:
        raise CheckpointError(f"{chosen[:-1]} has both an FPN backbone and a C4 res5 head; which one is res5?")
    if bottom_up:
        layout = "fpn"
        kind = "SoCo (FPN backbone and box head)" if parts["box_head"] else "FPN pretraining model (no box head)"
    elif has_c4_head:
        layout, kind = "c4", "SoCo-C4 (res4 backbone and res5 head)"
    else:
        layout, kind = "plain", "image-level model (ResNet backbone)"
    return ParsedCheckpoint(f"{kind}, {chosen[:-1]}", layout, dropped=dropped, **parts)


def _parse_detectron2(state_dict, encoder):
    names = set(state_dict)
    if "backbone.bottom_up.stem.conv1.weight" in names:
        layout, resnet_prefixes, kind = "fpn", ("backbone.bottom_up.",), "Detectron2 FPN detector"
    elif "backbone.stem.conv1.weight" in names:
        has_res5_head = any(n.startswith("roi_heads.res5.") for n in names)
        layout = "c4" if has_res5_head else "plain"
        resnet_prefixes = ("backbone.", "roi_heads.") if has_res5_head else ("backbone.",)
        kind = "Detectron2 C4 detector" if has_res5_head else "Detectron2 ResNet backbone"
    elif "stem.conv1.weight" in names:
        layout, resnet_prefixes, kind = "plain", ("",), "Detectron2 ResNet"
    else:
        prefix = next(n for n in names if n.endswith(".stem.conv1.weight"))[: -len("stem.conv1.weight")]
        raise CheckpointError(f"Detectron2 ResNet names under an unknown prefix {prefix!r}")
    if encoder != "online":
        raise CheckpointError(f"--encoder {encoder}: a {kind} checkpoint holds a single network")
    parsed = ParsedCheckpoint(kind, layout)
    for name, tensor in state_dict.items():
        resnet_key = next((name[len(p):] for p in resnet_prefixes if name.startswith(p)), None)
        if layout == "fpn" and name.startswith("backbone.") and _FPN_NAME.match(name[len("backbone."):]):
            parsed.fpn[name[len("backbone."):]] = (name, tensor)
        elif layout == "fpn" and name.startswith("roi_heads.box_head."):
            parsed.box_head[name[len("roi_heads.box_head."):]] = (name, tensor)
        elif resnet_key is not None and _RESNET_NAME.match(resnet_key):
            parsed.resnet[resnet_key] = (name, tensor)
        else:
            parsed.dropped.append((name, tuple(tensor.shape), "detector module not transferred"))
    return parsed


def _parse_torchvision(state_dict, encoder):
    prefixes = sorted({n[: -len(TORCHVISION_BACKBONE_ANCHOR)] for n in state_dict
                       if n.endswith(TORCHVISION_BACKBONE_ANCHOR)})
    prefix = _choose_encoder_prefix(prefixes, encoder)
    kind = f"torchvision ResNet (prefix {prefix!r})" if prefix else "torchvision ResNet"
    parsed = ParsedCheckpoint(kind, "plain")
    for name, tensor in state_dict.items():
        if not name.startswith(prefix):
            other = any(name.startswith(p) for p in prefixes)
            reason = "the other encoder (--encoder picks one)" if other else "not part of the ResNet"
            parsed.dropped.append((name, tuple(tensor.shape), reason))
            continue
        key = torchvision_to_d2(name[len(prefix):])
        if key is None:
            parsed.dropped.append((name, tuple(tensor.shape), "classifier / projection head (no Detectron2 name)"))
        else:
            parsed.resnet[key] = (name, tensor)
    return parsed


def _choose_encoder_prefix(prefixes, encoder):
    def is_target(prefix):
        return any(word in prefix for word in _ENCODER_WORDS["target"])

    if len(prefixes) == 1:
        if encoder == "target" and not is_target(prefixes[0]):
            raise CheckpointError(f"--encoder target: the checkpoint holds a single ResNet ({prefixes[0]!r})")
        return prefixes[0]
    matching = [p for p in prefixes if any(word in p for word in _ENCODER_WORDS[encoder])]
    if encoder == "online":
        matching = [p for p in matching if not is_target(p)] or [p for p in prefixes if not is_target(p)]
    if len(matching) != 1:
        raise CheckpointError(f"--encoder {encoder}: cannot tell which of the ResNets {prefixes} to convert")
    return matching[0]


# ---------------------------------------------------------------------------------------------------- checks


def _modules(tensors):
    """module name -> {field: shape}, field being "weight", "bias", "norm.weight", ... (num_batches_tracked
    left out: not every norm has it and it carries no weights)."""
    modules = defaultdict(dict)
    for name, tensor in tensors.items():
        if name.endswith("num_batches_tracked"):
            continue
        module, _, leaf = name.rpartition(".")
        if module.endswith(".norm"):
            module, leaf = module[: -len(".norm")], "norm." + leaf
        modules[module][leaf] = tuple(tensor.shape)
    return modules


def _check_layer(name, fields, norm_fields, problems):
    """A conv or fc: a weight, and either the norm's full set of fields or a bias; lengths match."""
    weight = fields.get("weight")
    if weight is None:
        problems.append(f"{name}.weight is missing")
        return
    has_norm = any(f.startswith("norm.") for f in fields)
    if has_norm and norm_fields is not None:
        missing = sorted(norm_fields - set(fields))
        if missing:
            problems.append(f"{name}: norm tensors {missing} are missing")
    for leaf, shape in fields.items():
        if leaf != "weight" and shape != (weight[0],):
            problems.append(f"{name}.{leaf} has shape {shape}, expected ({weight[0]},) for weight {weight}")


def validate_resnet(resnet):
    """Structural checks of a bare Detectron2 ResNet: every stage and block present, every conv with its
    norm, and channels that chain from block to block. Returns a list of problems (empty when sound)."""
    modules = _modules(resnet)
    problems = []
    if "stem.conv1" not in modules:
        return ["stem.conv1 is missing"]
    stem = modules["stem.conv1"]
    norm_fields = {f for f in stem if f.startswith("norm.")} or None
    _check_layer("stem.conv1", stem, norm_fields, problems)
    out_channels = stem.get("weight", (0,))[0]
    block_counts, stage_convs = [], []
    for stage in RESNET_STAGES:
        blocks = sorted({int(m.split(".")[1]) for m in modules if m.startswith(stage + ".")})
        if not blocks:
            problems.append(f"stage {stage} is missing")
            continue
        if blocks != list(range(len(blocks))):
            problems.append(f"{stage}: blocks {sorted(set(range(max(blocks) + 1)) - set(blocks))} are missing")
            continue
        block_counts.append(len(blocks))
        convs_of_block0 = None
        for block in blocks:
            prefix = f"{stage}.{block}."
            convs = sorted((m for m in modules if m.startswith(prefix) and m[len(prefix):].startswith("conv")),
                           key=lambda m: int(m[len(prefix) + 4:]))
            conv_names = [c[len(prefix):] for c in convs]
            if conv_names != [f"conv{i + 1}" for i in range(len(conv_names))] or not conv_names:
                problems.append(f"{stage}.{block}: convs {conv_names} are not conv1..convN")
                continue
            if convs_of_block0 is None:
                convs_of_block0 = conv_names
                stage_convs.append(len(conv_names))
            elif conv_names != convs_of_block0:
                problems.append(f"{stage}.{block}: convs {conv_names}, block 0 has {convs_of_block0}")
                continue
            for conv in convs:
                _check_layer(conv, modules[conv], norm_fields, problems)
            in_channels, block_out = out_channels, modules[convs[-1]].get("weight", (0,))[0]
            shortcut = modules.get(prefix + "shortcut")
            if shortcut is not None:
                _check_layer(prefix + "shortcut", shortcut, norm_fields, problems)
                if "weight" in shortcut and shortcut["weight"][:2] != (block_out, in_channels):
                    problems.append(f"{prefix}shortcut.weight {shortcut['weight']} does not map {in_channels} to "
                                    f"{block_out} channels")
            elif block_out != in_channels:
                problems.append(f"{stage}.{block}: {in_channels} -> {block_out} channels without a shortcut "
                                "(shortcut tensors missing?)")
            previous = in_channels
            for conv in convs:
                weight = modules[conv].get("weight")
                if weight is not None and (len(weight) != 4 or previous % weight[1] != 0):
                    problems.append(f"{conv}.weight {weight} does not take the {previous} channels before it")
                previous = weight[0] if weight is not None else previous
            out_channels = block_out
    if len(block_counts) == len(RESNET_STAGES) and not problems:
        problems += _check_depth(tuple(block_counts), tuple(stage_convs))
    return problems


def _check_depth(block_counts, stage_convs):
    """Problems with the blocks per stage and convs per block of a complete ResNet: a standard depth, or the
    basic-block C4 layout (R18/R34 res2-res4 with Detectron2's 3-bottleneck res5, see is_basic_c4_layout)."""
    if len(set(stage_convs)) > 1:
        if is_basic_c4_layout(block_counts, stage_convs):
            return []
        return [f"convs per block {stage_convs} for res2-res5 mix basic (2) and bottleneck (3) blocks; only the "
                "basic-block C4 layout (2, 2, 2, 3) with 3 res5 blocks is known"]
    depths = _RESNET_DEPTHS.get(stage_convs[0], {})
    if block_counts in depths:
        return []
    known = ", ".join(f"R{d}: {counts}" for counts, d in depths.items())
    return [f"blocks per stage {block_counts} match no ResNet depth ({known}); blocks at the end of a stage "
            "are missing"]


def is_basic_c4_layout(block_counts, stage_convs):
    """True for an R18/R34 C4 model: basic-block res2-res4 and a res5 of 3 bottleneck blocks, which is what
    Detectron2's Res5ROIHeads builds for every depth (it always makes res5 from BottleneckBlocks)."""
    return (tuple(stage_convs) == (2, 2, 2, 3) and block_counts[3] == 3
            and tuple(block_counts[:3]) in _BASIC_C4_DEPTHS)


def resnet_layout(resnet):
    """Convs per block of res2-res5 (2 = basic, 3 = bottleneck) and blocks per stage of a validated ResNet."""
    modules = _modules(resnet)
    counts, convs = [], []
    for stage in RESNET_STAGES:
        blocks = {int(m.split(".")[1]) for m in modules if m.startswith(stage + ".")}
        counts.append(len(blocks))
        convs.append(sum(1 for m in modules if m.startswith(f"{stage}.0.conv")))
    return tuple(counts), tuple(convs)


def _stage_out_channels(resnet, stage):
    modules = _modules(resnet)
    last = max(int(m.split(".")[1]) for m in modules if m.startswith(stage + "."))
    convs = [m for m in modules if m.startswith(f"{stage}.{last}.conv")]
    return modules[max(convs, key=lambda m: int(m.rsplit("conv", 1)[1]))]["weight"][0]


def validate_fpn(fpn, resnet):
    """Every FPN level has its lateral and output conv; laterals take their ResNet stage's channels."""
    modules = _modules(fpn)
    problems = []
    laterals = {int(m[len("fpn_lateral"):]) for m in modules if m.startswith("fpn_lateral")}
    outputs = {int(m[len("fpn_output"):]) for m in modules if m.startswith("fpn_output")}
    if laterals != outputs:
        problems.append(f"FPN levels differ: lateral convs for {sorted(laterals)}, output convs for {sorted(outputs)}")
    norm_fields = {f for fields in modules.values() for f in fields if f.startswith("norm.")} or None
    for name, fields in modules.items():
        _check_layer(name, fields, norm_fields, problems)
    for level in sorted(laterals):
        weight = modules[f"fpn_lateral{level}"].get("weight")
        stage = f"res{level}"
        if weight is not None and stage in RESNET_STAGES and weight[1] != _stage_out_channels(resnet, stage):
            problems.append(f"fpn_lateral{level}.weight {weight} does not take {stage}'s "
                            f"{_stage_out_channels(resnet, stage)} channels")
    return problems


def validate_box_head(box_head):
    """conv1..convN then fc1..fcM, each with its bias or norm, channels chaining."""
    modules = _modules(box_head)
    problems = []
    norm_fields = {f for fields in modules.values() for f in fields if f.startswith("norm.")} or None
    for kind in ("conv", "fc"):
        indices = sorted(int(m[len(kind):]) for m in modules if re.fullmatch(kind + r"\d+", m))
        if indices != list(range(1, len(indices) + 1)):
            problems.append(f"box head {kind} layers {indices} are not 1..N")
    for name, fields in modules.items():
        _check_layer(name, fields, norm_fields, problems)
    layers = sorted((m for m in modules if m.startswith("conv")), key=lambda m: int(m[4:])) + sorted(
        (m for m in modules if m.startswith("fc")), key=lambda m: int(m[2:]))
    for before, after in zip(layers, layers[1:]):
        out_channels = modules[before].get("weight", (0,))[0]
        in_features = modules[after].get("weight", (0, 0))[1]
        chained = in_features % out_channels == 0 if after.startswith("fc") and before.startswith("conv") else (
            in_features == out_channels)
        if not chained:
            problems.append(f"box head {after}.weight takes {in_features} inputs, {before} gives {out_channels}")
    return problems


def _check_finite(tensors):
    return [f"{source} has non-finite values" for source, tensor in tensors.values()
            if tensor.is_floating_point() and not torch.isfinite(tensor).all()]


# ---------------------------------------------------------------------------------------------------- convert


def convert_state_dict(state_dict, target, encoder="online", drop=(), keep_weight_scale=False):
    """A Conversion of ``state_dict`` to ``target`` (one of TARGETS); raises CheckpointError when a tensor
    is missing, a shape disagrees or the checkpoint's layout does not fit the target.

    ``drop``: parts of :data:`DROPPABLE_PARTS` left out of a d2-fpn conversion. Unless ``keep_weight_scale``, every
    conv of a d2-* result that a BatchNorm follows gets its initializer's norm back (weight_scale.py: the same
    function, the fine-tuning learning rate of a fresh layer).
    """
    if target not in TARGETS:
        raise CheckpointError(f"--to must be one of {TARGETS}, got {target!r}")
    unknown = sorted(set(drop) - set(DROPPABLE_PARTS))
    if unknown:
        raise CheckpointError(f"--drop takes {DROPPABLE_PARTS}, got {unknown}")
    if drop and target != "d2-fpn":
        raise CheckpointError(f"--drop {','.join(drop)} applies to --to d2-fpn only (--to {target} keeps the ResNet)")
    parsed = parse_state_dict(state_dict, encoder)
    if not parsed.resnet:
        raise CheckpointError(f"{parsed.kind}: no ResNet tensors found")
    problems = validate_resnet({k: t for k, (_, t) in parsed.resnet.items()})
    if parsed.fpn and not problems:  # the FPN checks read the ResNet's channels
        problems += validate_fpn({k: t for k, (_, t) in parsed.fpn.items()},
                                 {k: t for k, (_, t) in parsed.resnet.items()})
    if parsed.box_head:
        problems += validate_box_head({k: t for k, (_, t) in parsed.box_head.items()})
    problems += _check_finite({**parsed.resnet, **parsed.fpn, **parsed.box_head})
    if problems:
        raise CheckpointError(f"{parsed.kind}: " + "; ".join(problems))
    block_counts, stage_convs = resnet_layout({k: t for k, (_, t) in parsed.resnet.items()})
    if is_basic_c4_layout(block_counts, stage_convs) and target != "d2-c4":
        depth = _BASIC_C4_DEPTHS[block_counts[:3]]
        raise CheckpointError(
            f"{parsed.kind}: an R{depth}-C4 model (basic-block res2-res4, and res5 of 3 bottleneck blocks as "
            f"Detectron2's Res5ROIHeads builds it), which no R{depth} {target} model has: its res5 is basic "
            "blocks. Convert it with --to d2-c4 for Faster / Mask R-CNN R18/R34-C4"
        )

    outputs, dropped, new_modules = [], list(parsed.dropped), []
    unused = {"FPN": parsed.fpn, "box head": parsed.box_head}
    if target == "d2-fpn":
        if parsed.layout == "c4":
            raise CheckpointError(
                f"{parsed.kind}: its res5 is a C4 RoI head on res4 features and it has no FPN, so it does not "
                "fit an FPN detector; convert it with --to d2-c4 (or --to d2-backbone for the ResNet alone)"
            )
        stem = {k: v for k, v in parsed.resnet.items() if k.startswith("stem.")}
        outputs += [("backbone.bottom_up." + k, v) for k, v in parsed.resnet.items()
                    if "stem" not in drop or k not in stem]
        if "fpn" not in drop:
            outputs += [("backbone." + k, v) for k, v in parsed.fpn.items()]
        if "box_head" not in drop:
            outputs += [("roi_heads.box_head." + k, v) for k, v in parsed.box_head.items()]
        for part, module, tensors in (("stem", "backbone.bottom_up.stem", stem),
                                      ("fpn", "backbone.fpn_*", parsed.fpn),
                                      ("box_head", "roi_heads.box_head", parsed.box_head)):
            if part in drop:
                new_modules.append((module, f"newly initialized: --drop {part}"))
            elif not tensors:
                new_modules.append((module, f"newly initialized: the checkpoint has no {part.replace('_', ' ')}"))
        unused = {name: tensors for part, name, tensors in (("stem", "stem", stem), ("fpn", "FPN", parsed.fpn),
                                                             ("box_head", "box head", parsed.box_head)) if part in drop}
    elif target == "d2-c4":
        if parsed.layout == "fpn":
            raise CheckpointError(
                f"{parsed.kind}: its res5 was trained inside an FPN backbone and its FPN and box head have no "
                "place in a C4 detector; convert it with --to d2-fpn (or --to d2-backbone for the ResNet alone)"
            )
        outputs += [(("roi_heads." if k.startswith("res5.") else "backbone.") + k, v) for k, v in parsed.resnet.items()]
        new_modules.append(("roi_heads.res5.norm", "newly initialized with Res5ROIHeadsExtraNorm"))
    elif target == "d2-backbone":
        outputs += list(parsed.resnet.items())
    else:
        outputs += [(d2_to_torchvision(k), v) for k, v in parsed.resnet.items()]
    for part, tensors in unused.items():
        reason = f"--drop leaves out the {part}" if drop else f"--to {target} keeps the ResNet, not the {part}"
        dropped += [(source, tuple(t.shape), reason) for source, t in tensors.values()]
    converted = OrderedDict((name, tensor.clone()) for name, (_, tensor) in outputs)
    rescaled = None if keep_weight_scale or not target.startswith("d2-") else restore_initializer_scale(converted)
    return Conversion(
        target=target,
        kind=parsed.kind,
        state_dict=converted,
        sources={name: source for name, (source, _) in outputs},
        dropped=dropped,
        new_modules=new_modules,
        matching_heuristics=target == "d2-backbone",
        rescaled=rescaled,
    )


def check_against_model(conversion, model_state_dict):
    """Compares a d2-fpn / d2-c4 conversion with a detector's state dict.

    Raises CheckpointError for a converted tensor the model lacks or of another shape, and for a tensor the
    model has in a converted module (ResNet, FPN, box head, res5) that the conversion lacks. Returns the
    model's other tensors (RPN, box predictor, mask head, ...): the ones finetuning initializes anew.
    """
    if conversion.target not in ("d2-fpn", "d2-c4"):
        raise CheckpointError(f"checking against a detector needs --to d2-fpn or d2-c4, not {conversion.target}")
    converted_scopes = sorted({_scope(name) for name in conversion.state_dict})
    problems = []
    for name, tensor in conversion.state_dict.items():
        if name not in model_state_dict:
            problems.append(f"{name} (from {conversion.sources[name]}) is not in the model")
        elif tuple(model_state_dict[name].shape) != tuple(tensor.shape):
            problems.append(f"{name}: checkpoint {tuple(tensor.shape)}, model {tuple(model_state_dict[name].shape)}")
    new = []
    for name in model_state_dict:
        if name in conversion.state_dict:
            continue
        if (_scope(name) in converted_scopes and not name.startswith("roi_heads.res5.norm.")
                and not name.endswith("num_batches_tracked")):
            problems.append(f"{name} is in the model but not in the checkpoint")
        else:
            new.append(name)
    if problems:
        raise CheckpointError("the conversion does not fit the detector: " + "; ".join(problems))
    return new


def _scope(name):
    """The transferred module a Detectron2 name belongs to: ResNet, FPN, box head or C4 res5."""
    for scope in ("backbone.bottom_up.stem.", "backbone.bottom_up.", "roi_heads.box_head.", "roi_heads.res5."):
        if name.startswith(scope):
            return scope
    if name.startswith("backbone.fpn_") or name.startswith("backbone.top_block."):
        return "backbone.fpn"
    return name.split(".")[0] + "." if name.startswith("backbone.") else name


# ---------------------------------------------------------------------------------------------------- saving


def save_conversion(conversion, path):
    """Writes a Detectron2 .pkl (d2-* targets) or a torchvision .pth state dict, atomically."""
    if conversion.target.startswith("d2-"):
        if not path.endswith(".pkl"):
            raise CheckpointError(f"{path}: Detectron2 checkpoints must end in .pkl (DetectionCheckpointer picks "
                                  "the loader by extension)")
        payload = {
            "model": {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in conversion.state_dict.items()},
            "__author__": "objpretrain",
            "matching_heuristics": conversion.matching_heuristics,
        }

        def write(f):
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    else:
        def write(f):
            torch.save(OrderedDict(conversion.state_dict), f)

    atomic_write(path, write)


def convert_checkpoint(input_path, output_path, target, encoder="online", model_state_dict=None, drop=(),
                       keep_weight_scale=False, unsafe_full_unpickle=False):
    """Loads (``unsafe_full_unpickle`` as in :func:`load_state_dict`), converts (see :func:`convert_state_dict` for
    ``drop`` and ``keep_weight_scale``), optionally checks against a detector's state dict, and saves; returns
    ``(conversion, new)`` with ``new`` the detector tensors finetuning initializes (None without a model). Every
    CheckpointError names ``input_path``."""
    state_dict = load_state_dict(input_path, unsafe_full_unpickle)
    try:
        conversion = convert_state_dict(state_dict, target, encoder, drop, keep_weight_scale)
        new = check_against_model(conversion, model_state_dict) if model_state_dict is not None else None
    except CheckpointError as e:
        raise CheckpointError(f"{input_path}: {e}") from None
    save_conversion(conversion, output_path)
    return conversion, new


# ---------------------------------------------------------------------------------------------------- report


def _group(name):
    """Module path up to the stage or head: backbone.bottom_up.res2, roi_heads.box_head, layer1, ..."""
    parts = []
    for part in name.split("."):
        if part.isdigit() or part.startswith(("conv", "bn", "fc", "shortcut", "norm", "downsample", "linear")):
            break
        if part.startswith("fpn_"):
            parts.append("fpn_*")
            break
        parts.append(part)
    return ".".join(parts) or name.split(".")[0]


def format_report(conversion, new=None, verbose=False):
    """Tables of converted, dropped and newly initialized tensors, grouped by module unless verbose."""
    rows = defaultdict(lambda: [0, 0, None])

    def add(status, target, source, shape):
        key = (status, target if verbose else _group(target), source if verbose else _group(source))
        rows[key][0] += 1
        rows[key][1] += int(np.prod(shape)) if shape else 1
        rows[key][2] = shape if verbose else None

    for name, tensor in conversion.state_dict.items():
        add("converted", name, conversion.sources[name], tuple(tensor.shape))
    for source, shape, reason in conversion.dropped:
        # The unused encoder is one row: its modules are those already listed as converted.
        other_encoder = "other encoder" in reason and not verbose
        add(f"dropped: {reason}", "-", source.split(".")[0] + ".*" if other_encoder else source, shape)
    table = [[status, target, source, count, elements] + ([shape] if verbose else [])
             for (status, target, source), (count, elements, shape) in rows.items()]
    table += [[f"new: {why}", name, "-", "-", "-"] + (["-"] if verbose else []) for name, why in conversion.new_modules]
    if new:
        groups = defaultdict(int)
        for name in new:
            if not any(fnmatch.fnmatch(name, module + ".*") for module, _ in conversion.new_modules):
                groups[name if verbose else ".".join(name.split(".")[:2])] += 1
        table += [["new: not in the checkpoint", g, "-", n, "-"] + (["-"] if verbose else [])
                  for g, n in groups.items()]
    headers = ["status", "target", "source", "tensors", "elements"] + (["shape"] if verbose else [])
    converted = sum(int(t.numel()) for t in conversion.state_dict.values())
    summary = (f"{conversion.kind} -> {conversion.target}: {len(conversion.state_dict)} tensors converted "
               f"({converted:,} elements), {len(conversion.dropped)} dropped")
    if conversion.target.startswith("d2-"):
        summary += "\n" + (summarize_factors(conversion.rescaled) if conversion.rescaled is not None else
                           "weight scale: kept as pretrained (--keep-weight-scale)")
    return summary + "\n" + tabulate(table, headers=headers, tablefmt="github")
