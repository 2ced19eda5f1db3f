"""Res5ROIHeadsExtraNorm: the C4 RoI head with a norm layer after res5 (MoCo §4.2, detection/train_net.py).

With SyncBN everywhere (SoCo §4.2 "synchronized batch normalization is used across all layers, including the
newly initialized ones"), the res5 features that reach the box predictor end in a residual sum and ReLU and
are not normalized; self-supervised features have a different scale from supervised ones, and MoCo adds this
norm so the newly initialized predictor sees normalized inputs. The norm is new at finetuning (it is
``roi_heads.res5.norm``, absent from pretraining checkpoints).
"""
from detectron2.layers import get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

__all__ = ["Res5ROIHeadsExtraNorm"]


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """``Res5ROIHeads`` whose res5 ends with ``get_norm(MODEL.RESNETS.NORM)`` when
    MODEL.ROI_BOX_HEAD.RES5_EXTRA_NORM is on."""

    @classmethod
    def _build_res5_block(cls, cfg):
        res5, out_channels = super()._build_res5_block(cfg)
        if cfg.MODEL.ROI_BOX_HEAD.RES5_EXTRA_NORM:
            res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return res5, out_channels
