"""Parameter names of a ResNet in torchvision's layout and in Detectron2's, and the map between them.

torchvision: ``conv1.weight``, ``bn1.running_mean``, ``layer1.0.conv1.weight``, ``layer1.0.bn1.weight``,
``layer1.0.downsample.0.weight`` (the shortcut conv), ``layer1.0.downsample.1.weight`` (its BN), ``fc.weight``.

Detectron2 (``detectron2.modeling.backbone.resnet.ResNet``, no prefix): ``stem.conv1.weight``,
``stem.conv1.norm.running_mean``, ``res2.0.conv1.weight``, ``res2.0.conv1.norm.weight``,
``res2.0.shortcut.weight``, ``res2.0.shortcut.norm.weight``.

The map is the one of Detectron2's tools/convert-torchvision-to-d2.py and MoCo's
detection/convert-pretrain-to-detectron2.py, written as two exact inverses so that a round trip gives back the
same names. The classifier ``fc`` has no Detectron2 counterpart.
"""
import re

__all__ = ["TORCHVISION_BACKBONE_ANCHOR", "d2_to_torchvision", "torchvision_to_d2"]

# A key every torchvision ResNet has; its prefix in a checkpoint is the prefix of the whole network.
TORCHVISION_BACKBONE_ANCHOR = "layer1.0.conv1.weight"

_TV_STEM = re.compile(r"^(conv1|bn1)\.(\w+)$")
_TV_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)$")
_D2_STEM = re.compile(r"^stem\.conv1\.(norm\.)?(\w+)$")
_D2_BLOCK = re.compile(r"^res([2-5])\.(\d+)\.(conv\d|shortcut)\.(norm\.)?(\w+)$")


def torchvision_to_d2(name):
    """Detectron2 name of a torchvision ResNet parameter, or None when it has none (``fc.*``, unknown)."""
    match = _TV_STEM.match(name)
    if match:
        module, field = match.groups()
        return f"stem.conv1.{field}" if module == "conv1" else f"stem.conv1.norm.{field}"
    match = _TV_BLOCK.match(name)
    if not match:
        return None
    layer, block, module, field = match.groups()
    stage = f"res{int(layer) + 1}.{block}"
    if module == "downsample.0":
        return f"{stage}.shortcut.{field}"
    if module == "downsample.1":
        return f"{stage}.shortcut.norm.{field}"
    if module.startswith("bn"):
        return f"{stage}.conv{module[2:]}.norm.{field}"
    return f"{stage}.{module}.{field}"


def d2_to_torchvision(name):
    """torchvision name of a Detectron2 ResNet parameter (no prefix), or None when it has none."""
    match = _D2_STEM.match(name)
    if match:
        norm, field = match.groups()
        return f"bn1.{field}" if norm else f"conv1.{field}"
    match = _D2_BLOCK.match(name)
    if not match:
        return None
    stage, block, module, norm, field = match.groups()
    layer = f"layer{int(stage) - 1}.{block}"
    if module == "shortcut":
        return f"{layer}.downsample.{1 if norm else 0}.{field}"
    if norm:
        return f"{layer}.bn{module[4:]}.{field}"
    return f"{layer}.{module}.{field}"
