"""Meta-architectures, heads and losses. Importing this module registers them with Detectron2."""
from . import soco  # noqa: F401
from . import oac  # noqa: F401
from . import any_size_fpn  # noqa: F401  (build_resnet_fpn_any_size_backbone)
from . import roi_heads  # noqa: F401  (Res5ROIHeadsExtraNorm)
