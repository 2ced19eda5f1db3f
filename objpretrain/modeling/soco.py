"""SoCo: object-level BYOL over selective-search proposals with a detector-shaped network (SoCo §3).

Both meta-architectures take the SoCo mapper's dicts (docs/design.md): per image a list of views (uint8 RGB
3xSxS; V1 first) and, per view, the same K proposals as XYXY boxes in that view's pixels. A view with its own
proposals (INPUT.SOCO.OWN_PROPOSAL_VIEWS, the official recipe) comes with V1's boxes for its pair in
``v1_boxes[name]``; V1 is encoded once with all its boxes. They return the losses of every view pair (V1, Vj),
j in {2, 3, 4}, each symmetrized: L + L~ of §3.3, Eq. 5-6, weighted per MODEL.SOCO.REPEATED_BOX_WEIGHTING.
"""
import copy
from abc import ABCMeta, abstractmethod

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import Res5ROIHeads, build_box_head
from detectron2.structures import Boxes, ImageList
from torch import nn

from .heads import MLPHead
from .health import byol_collapse_loss
from .losses import BYOLLoss
from .momentum_model import MomentumTargetModel, zero_init_residual_norms
from .scale_aware_pooler import ScaleAwareROIPooler

__all__ = ["SoCo", "SoCoC4", "FPNObjectEncoder", "C4ObjectEncoder", "build_object_pooler"]


def build_object_pooler(cfg, input_shapes):
    """RoIAlign over the feature maps ``input_shapes`` (ShapeSpecs, finest first), with SoCo's scale-aware
    level assignment (§3.3) when there are several maps and MODEL.SOCO.SCALE_AWARE_ASSIGNMENT is on, and
    Detectron2's FPN rule (224 px box on P4) otherwise."""
    soco = cfg.MODEL.SOCO
    scales = [1.0 / shape.stride for shape in input_shapes]
    if len(scales) > 1 and soco.SCALE_AWARE_ASSIGNMENT:
        return ScaleAwareROIPooler(
            soco.POOLER_RESOLUTION, scales, soco.POOLER_SAMPLING_RATIO, soco.POOLER_TYPE, soco.SCALE_AWARE_THRESHOLDS
        )
    return ROIPooler(soco.POOLER_RESOLUTION, scales, soco.POOLER_SAMPLING_RATIO, soco.POOLER_TYPE)


class _ObjectEncoder(nn.Module, metaclass=ABCMeta):
    """Backbone f^I, RoIAlign, head f^H and projector g: boxes of a batch of images -> (M, D) embeddings
    (SoCo Eq. 1-4). Subclasses build the head under the name Detectron2's detector uses for it."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        output_shapes = self.backbone.output_shape()
        self.in_features = list(cfg.MODEL.SOCO.IN_FEATURES)
        missing = [f for f in self.in_features if f not in output_shapes]
        if missing:
            raise ValueError(
                f"MODEL.SOCO.IN_FEATURES {self.in_features}: {missing} not produced by the backbone "
                f"{cfg.MODEL.BACKBONE.NAME} (it gives {sorted(output_shapes)})"
            )
        input_shapes = [output_shapes[f] for f in self.in_features]
        if len({shape.channels for shape in input_shapes}) != 1:
            raise ValueError(f"MODEL.SOCO.IN_FEATURES {self.in_features} have different channel counts")
        self.pooler = build_object_pooler(cfg, input_shapes)
        resolution = cfg.MODEL.SOCO.POOLER_RESOLUTION
        pooled_shape = ShapeSpec(channels=input_shapes[0].channels, height=resolution, width=resolution)
        head_dim = self._build_head(cfg, pooled_shape)
        soco = cfg.MODEL.SOCO
        self.projector = MLPHead(
            head_dim, soco.PROJECTOR_HIDDEN_DIM, soco.PROJECTOR_OUT_DIM, soco.HEAD_NORM, soco.PROJECTOR_OUTPUT_NORM
        )

    @abstractmethod
    def _build_head(self, cfg, pooled_shape):
        """Creates the head f^H as a child module; returns its output feature size."""

    @abstractmethod
    def _encode_rois(self, rois):
        """(M, C, R, R) pooled features -> (M, head_dim) object representations h."""

    def forward(self, images, box_lists):
        """images: (N, 3, H, W) normalized and padded; box_lists: N ``Boxes``. Returns (sum N_i, D)."""
        features = self.backbone(images)
        rois = self.pooler([features[f] for f in self.in_features], box_lists)
        return self.projector(self._encode_rois(rois))


class FPNObjectEncoder(_ObjectEncoder):
    """SoCo-R50-FPN (§3.3, §4.1): RoIAlign on P2-P5, then the Mask R-CNN box head (``build_box_head``)."""

    def _build_head(self, cfg, pooled_shape):
        self.box_head = build_box_head(cfg, pooled_shape)
        out = self.box_head.output_shape
        return out.channels * (out.height or 1) * (out.width or 1)

    def _encode_rois(self, rois):
        return torch.flatten(self.box_head(rois), start_dim=1)


class C4ObjectEncoder(_ObjectEncoder):
    """SoCo-R50-C4 (§4.1): RoIAlign on res4, then the whole res5 stage, average-pooled.

    res5 is built by ``Res5ROIHeads._build_res5_block`` so its parameters carry the names of Detectron2's
    ``roi_heads.res5`` and transfer as they are.
    """

    def _build_head(self, cfg, pooled_shape):
        self.res5, out_channels = Res5ROIHeads._build_res5_block(cfg)
        if pooled_shape.channels != out_channels // 2:
            raise ValueError(
                f"res5 expects {out_channels // 2} input channels (RESNETS.RES2_OUT_CHANNELS * 4) but "
                f"MODEL.SOCO.IN_FEATURES give {pooled_shape.channels}"
            )
        return out_channels

    def _encode_rois(self, rois):
        return self.res5(rois).mean(dim=(2, 3))


@META_ARCH_REGISTRY.register()
class SoCo(MomentumTargetModel):
    """SoCo with R50-FPN (or any FPN backbone): online network + predictor, momentum target network (§3.3).

    Parameter names: ``online_network.{backbone,box_head,projector}``, ``predictor``, ``target_network.*``
    (the checkpoint converter relies on them, docs/design.md).
    """

    encoder_class = FPNObjectEncoder
    dataset_mapper = "SoCoMapper"

    def __init__(self, cfg):
        # The values are checked before launch (objpretrain.config_validation), not here on every rank.
        super().__init__()
        soco = cfg.MODEL.SOCO
        self.view_size = int(cfg.INPUT.SOCO.VIEW_SIZE)
        self.online_network = self.encoder_class(cfg)
        self.predictor = MLPHead(
            soco.PROJECTOR_OUT_DIM, soco.PREDICTOR_HIDDEN_DIM, soco.PROJECTOR_OUT_DIM, soco.HEAD_NORM
        )
        if cfg.MODEL.RESNETS.ZERO_INIT_RESIDUAL:
            zero_init_residual_norms(self.online_network)
        # The target starts as a copy of the online network and only moves by EMA (§3.3, BYOL).
        self.target_network = copy.deepcopy(self.online_network).requires_grad_(False)
        self.momentum_base = soco.MOMENTUM_BASE
        self.momentum_end = soco.MOMENTUM_END
        self.loss = BYOLLoss()
        self.view_batching = soco.VIEW_BATCHING
        self.repeated_box_weighting = soco.REPEATED_BOX_WEIGHTING
        self._register_pixel_normalization(cfg)

    def forward(self, batched_inputs):
        """
        Args:
            batched_inputs: list of SoCo mapper dicts ("views", "boxes", "view_names", "image_id"; "box_ids" for
                REPEATED_BOX_WEIGHTING "pairs"; "v1_boxes" when views have their own proposals).

        Returns:
            dict "loss_v1_<view>" -> scalar, for every view other than V1: the symmetrized BYOL loss between
            V1 and that view, averaged over the batch's objects. Their sum is L^SoCo (§3.3).
        """
        view_names = self._check_inputs(batched_inputs)
        # Views with their own proposals pair with their own block of V1 rows (INPUT.SOCO.OWN_PROPOSAL_VIEWS).
        own_views = [name for name in view_names if name in batched_inputs[0].get("v1_boxes", {})]
        online_projections, online_predictions, target_projections = {}, {}, {}
        for group in self._view_groups(batched_inputs, view_names):
            images, box_lists, rows = self._prepare_views(batched_inputs, group, own_views)
            projections = self.online_network(images, box_lists)
            predictions = self.predictor(projections)
            with torch.no_grad():
                targets = self.target_network(images, box_lists)
            for index, (start, stop) in zip(group, rows):  # the group's rows are view after view
                name = view_names[index]
                online_projections[name] = projections[start:stop]
                online_predictions[name] = predictions[start:stop]
                target_projections[name] = targets[start:stop]
        pairs = [name for name in view_names if name != "v1"]
        v1_rows = self._v1_rows(batched_inputs, len(own_views))
        block = {name: (1 + own_views.index(name) if name in own_views else 0) for name in pairs}
        if self.training:
            self._record_health(
                embeddings={"projector": online_projections["v1"], "predictor": online_predictions["v1"],
                            "target_projector": target_projections["v1"]},
                collapse_losses={f"loss_v1_{name}": byol_collapse_loss(
                    target_projections[name], target_projections["v1"][v1_rows[block[name]]]) for name in pairs},
            )
        return {
            f"loss_v1_{name}": self.loss(
                online_predictions["v1"][v1_rows[block[name]]], target_projections[name],
                online_predictions[name], target_projections["v1"][v1_rows[block[name]]],
                self._correspondence(batched_inputs, view_names.index(name)),
            )
            for name in pairs
        }

    def image_features(self, images):
        """(N, C) pooled res5 of the online bottom-up ResNet for normalized images (view retrieval)."""
        return self.online_network.backbone.bottom_up(images)["res5"].mean(dim=(2, 3))

    def parameter_groups(self):
        return {"predictor": list(self.predictor.parameters())}

    def _view_groups(self, batched_inputs, view_names):
        """Lists of view indices that go through the networks in one call: each view alone ("per_view"), or the
        views of one size together ("per_size"), in order of first appearance."""
        if self.view_batching == "per_view":
            return [[index] for index in range(len(view_names))]
        groups = {}
        for index in range(len(view_names)):
            groups.setdefault(tuple(int(s) for s in batched_inputs[0]["views"][index].shape[-2:]), []).append(index)
        return list(groups.values())

    def _prepare_view(self, batched_inputs, index, own_views=()):
        """One view's normalized, padded images and per-image ``Boxes`` (see :meth:`_prepare_views`)."""
        images, box_lists, _ = self._prepare_views(batched_inputs, [index], own_views)
        return images, box_lists

    def _prepare_views(self, batched_inputs, indices, own_views=()):
        """The views ``indices``' normalized images, one batch view after view; their per-image ``Boxes`` (V1's:
        its boxes then, block after block, its boxes for each of ``own_views``); and the (start, stop) rows of each
        view in the embeddings."""
        views, box_lists, rows = [], [], []
        for index in indices:
            start = sum(len(b) for b in box_lists)
            for x in batched_inputs:
                views.append(self.normalize(x["views"][index]))
                extra = [x["v1_boxes"][name] for name in own_views] if index == 0 else []  # V1 is first
                box_lists.append(Boxes(torch.cat([x["boxes"][index]] + extra).to(
                    self.device, non_blocking=True).float()))
            rows.append((start, sum(len(b) for b in box_lists)))
        backbone = self.online_network.backbone
        images = ImageList.from_tensors(
            views, backbone.size_divisibility, padding_constraints=backbone.padding_constraints
        )
        return images.tensor, box_lists, rows

    def _v1_rows(self, batched_inputs, num_own_views):
        """Per block of V1 rows (0: the one shared with V2, then one per own-proposal view) the indices of its rows
        in V1's embeddings, where each image holds (1 + num_own_views) blocks of its K rows."""
        blocks = [[] for _ in range(1 + num_own_views)]
        start = 0
        for x in batched_inputs:
            k = int(x["boxes"][0].shape[0])
            for b, rows in enumerate(blocks):
                rows.append(torch.arange(start + b * k, start + (b + 1) * k, device=self.device))
            start += k * len(blocks)
        return [torch.cat(rows) for rows in blocks]

    def _correspondence(self, batched_inputs, index):
        """(N, K, K) bool, rows i and j of an image's pair (V1, view ``index``) showing the same proposal, for
        REPEATED_BOX_WEIGHTING "pairs"; None ("rows": each row with its own counterpart, the mean over rows)."""
        if self.repeated_box_weighting == "rows":
            return None
        if any("box_ids" not in x for x in batched_inputs):
            raise ValueError('MODEL.SOCO.REPEATED_BOX_WEIGHTING "pairs" needs the mapper\'s "box_ids"')
        ids = torch.stack([x["box_ids"][index] for x in batched_inputs]).to(self.device)
        return ids[:, :, None] == ids[:, None, :]

    @staticmethod
    def _check_inputs(batched_inputs):
        """The views every image has (the same for the whole batch, V1 among them); raises naming the image."""
        if not batched_inputs:
            raise ValueError("SoCo got an empty batch")
        view_names = list(batched_inputs[0]["view_names"])
        if not view_names or view_names[0] != "v1" or len(view_names) < 2:
            raise ValueError(f"SoCo needs V1 first and at least one other view, got {view_names}")
        for x in batched_inputs:
            image = x.get("image_id", x.get("file_name", "?"))
            if list(x["view_names"]) != view_names:
                raise ValueError(f"Image {image} has views {x['view_names']}, the batch has {view_names}")
            if len(x["views"]) != len(view_names) or len(x["boxes"]) != len(view_names):
                raise ValueError(
                    f"Image {image}: {len(x['views'])} views and {len(x['boxes'])} box sets for {view_names}"
                )
            counts = {tuple(int(s) for s in b.shape) for b in x["boxes"]}  # ints also when traced (fvcore)
            if len(counts) != 1 or len(next(iter(counts))) != 2 or next(iter(counts))[1] != 4:
                raise ValueError(
                    f"Image {image}: box sets of shapes {sorted(counts)}, need the same K x 4 in every view"
                )
            if next(iter(counts))[0] == 0:
                raise ValueError(f"Image {image} has no proposals; the mapper should have skipped it")
            own = sorted(x.get("v1_boxes", {}))
            if own != sorted(batched_inputs[0].get("v1_boxes", {})) or not set(own) <= set(view_names[1:]):
                raise ValueError(f"Image {image}: V1 boxes for views {own}, the batch's views are {view_names} and "
                                 f"its first image has them for {sorted(batched_inputs[0].get('v1_boxes', {}))}")
            if {tuple(int(s) for s in x["v1_boxes"][name].shape) for name in own} - counts:
                raise ValueError(f"Image {image}: its V1 boxes for {own} are not K x 4 like its views' boxes")
        return view_names


@META_ARCH_REGISTRY.register()
class SoCoC4(SoCo):
    """SoCo with R50-C4 (§4.1): ``online_network.{backbone,res5,projector}``, for Detectron2's Res5ROIHeads."""

    encoder_class = C4ObjectEncoder

    def image_features(self, images):
        """(N, C) pooled res5 (the head's, applied to the whole res4 map) of the online network."""
        return self.online_network.res5(self.online_network.backbone(images)["res4"]).mean(dim=(2, 3))
