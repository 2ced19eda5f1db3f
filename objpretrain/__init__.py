"""objpretrain: object-level self-supervised pretraining of detectors (SoCo, object-aware cropping).

Importing the package registers every component with Detectron2's registries (meta-architectures, ROI heads,
datasets), so tools and user code only need ``import objpretrain``.
"""
import warnings

# Two dependencies script functions with torch.jit.script at import time, which torch 2.14 deprecates with a
# FutureWarning on every start of every tool: fvcore/nn/focal_loss.py (imported by detectron2.layers) and
# detectron2/modeling/box_regression.py. Not ours to fix and not actionable for users: silenced for those two
# imports only. Tools import objpretrain before Detectron2, so these imports come first.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    import detectron2.modeling.box_regression  # noqa: F401
    import fvcore.nn  # noqa: F401

# Registration: datasets and mappers (data), META_ARCH_REGISTRY, ROI_HEADS_REGISTRY, ... (modeling).
from . import config, data, modeling  # noqa: F401
from .config import add_objpretrain_config, get_pretrain_cfg  # noqa: F401

__version__ = "0.1.0"
