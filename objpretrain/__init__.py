"""objpretrain: object-level self-supervised pretraining of detectors (SoCo, object-aware cropping).

Importing the package registers every component with Detectron2's registries (meta-architectures, ROI heads,
datasets), so tools and user code only need ``import objpretrain``.
"""
import warnings

# Detectron2 0.7 calls torch.jit.script at import time; torch 2.14 deprecates it. Not actionable for users.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from . import config  # noqa: F401
from . import data  # noqa: F401  (dataset registration)
from . import modeling  # noqa: F401  (META_ARCH_REGISTRY, ROI_HEADS_REGISTRY, ...)
from .config import add_objpretrain_config, get_pretrain_cfg  # noqa: F401

__version__ = "0.1.0"
