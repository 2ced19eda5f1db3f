"""Meta-architectures, heads and losses. Importing this module registers them with Detectron2: SoCo, OAC, the
any-size FPN backbone (build_resnet_fpn_any_size_backbone) and Res5ROIHeadsExtraNorm."""
from . import any_size_fpn, oac, roi_heads, soco  # noqa: F401
