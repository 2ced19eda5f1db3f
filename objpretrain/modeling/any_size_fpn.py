"""An FPN that takes any input size, for pretraining views whose sides are not multiples of 32 (SoCo's 112 px V3).

Detectron2's FPN upsamples each top-down level by exactly 2 and so asks for inputs padded to a multiple of its
coarsest stride (``size_divisibility`` 32): V3 at 112 px is padded to 128, a quarter of its pixels are padding,
BatchNorm statistics include them, and res5 of V3 differs from the unpadded result by about 50 % relative. The
official SoCo FPN upsamples each level to the size of the lateral it is added to. :class:`AnySizeFPN` does that
and reports ``size_divisibility`` 0, so ``ImageList.from_tensors`` pads nothing when a batch's views share a size.
Its modules and parameter names are Detectron2's FPN's, so conversion and fine-tuning are unchanged, and on sizes
divisible by 32 its outputs equal Detectron2's FPN's.
"""
import torch.nn.functional as F
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import build_resnet_backbone

__all__ = ["AnySizeFPN", "build_resnet_fpn_any_size_backbone"]


class AnySizeFPN(FPN):
    """Detectron2's FPN with each top-down level upsampled (nearest) to its lateral's size; no input padding."""

    @property
    def size_divisibility(self):
        return 0

    @property
    def padding_constraints(self):
        return {}

    def forward(self, x):
        bottom_up_features = self.bottom_up(x)
        prev_features = self.lateral_convs[0](bottom_up_features[self.in_features[-1]])
        results = [self.output_convs[0](prev_features)]
        for idx, (lateral_conv, output_conv) in enumerate(zip(self.lateral_convs, self.output_convs)):
            if idx == 0:
                continue
            lateral_features = lateral_conv(bottom_up_features[self.in_features[-idx - 1]])
            top_down_features = F.interpolate(prev_features, size=lateral_features.shape[-2:], mode="nearest")
            prev_features = lateral_features + top_down_features
            if self._fuse_type == "avg":
                prev_features = prev_features / 2
            results.insert(0, output_conv(prev_features))
        if self.top_block is not None:
            if self.top_block.in_feature in bottom_up_features:
                top_block_in_feature = bottom_up_features[self.top_block.in_feature]
            else:
                top_block_in_feature = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_block_in_feature))
        return dict(zip(self._out_features, results))


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_any_size_backbone(cfg, input_shape):
    """``build_resnet_fpn_backbone`` with :class:`AnySizeFPN` (same modules, names and config keys)."""
    return AnySizeFPN(
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
