"""What every pretraining meta-architecture with a momentum target shares: RGB normalization buffers, the
device, and the (online, target) pairs the engine's MomentumTargetHook moves (docs/design.md)."""
import torch
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from torch import nn

from .contract import PretrainingModel


def zero_init_residual_norms(module):
    """Sets gamma of the last norm of every residual branch (conv2 of a basic block, conv3 of a bottleneck) to 0,
    so that each block starts as the identity (Goyal et al. 2017, §5.1); returns how many were set. Detectron2's
    ResNet leaves them at 1 (resnet.py: "this somehow hurts performance when training GN models"); the official
    SoCo ResNet zeroes them ("zero gamma for batch norm", hologerry/SoCo contrast/resnet.py)."""
    count = 0
    for block in module.modules():
        last = {BasicBlock: "conv2", BottleneckBlock: "conv3"}.get(type(block))
        norm = getattr(getattr(block, last, None), "norm", None) if last else None
        if norm is not None and getattr(norm, "weight", None) is not None:
            nn.init.zeros_(norm.weight)
            count += 1
    return count


class MomentumTargetModel(PretrainingModel):
    """A :class:`~objpretrain.modeling.contract.PretrainingModel` holding ``online_network`` and its momentum copy
    ``target_network``; subclasses set both, and ``momentum_base`` / ``momentum_end``, in their ``__init__``. Its
    momentum pairs are the children of ``target_network`` with the ``online_network`` children of the same name
    (the target may lack online-only modules, such as BYOL's predictor)."""

    def _register_pixel_normalization(self, cfg):
        if len(cfg.MODEL.PIXEL_MEAN) != len(cfg.MODEL.PIXEL_STD):
            raise ValueError("MODEL.PIXEL_MEAN and MODEL.PIXEL_STD must have the same length")
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)

    @property
    def device(self):
        return self.pixel_mean.device

    def normalize(self, images):
        """uint8 (or float) 0-255 images, N x C x H x W -> normalized float on the model's device."""
        return (images.to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std

    def momentum_pairs(self):
        return {name: (getattr(self.online_network, name), target)
                for name, target in self.target_network.named_children()}
