"""Image-level meta-architectures for object-aware cropping (OAC §4): MoCo-v2, BYOL and DenseCL on a
Detectron2 ResNet, plus OAC's rotation (§4.2.1) and localization (§4.2.2) losses.

Inputs are the OAC mapper's dicts (docs/design.md, "OAC mapper"). Parameter names follow docs/design.md so
the checkpoint converter exports any of them: the transferable ResNet is ``online_network.backbone`` (stem to
res5), its momentum copy ``target_network.backbone``; projection heads, predictor, queues and pretext MLPs are
dropped by the converter.

Projection heads (§4.1, ``MODEL.OAC.SEPARATE_HEADS``): ``online_network.projector`` is a ``ModuleDict`` with
one head per view (``"view1"``: object crop, ``"view2"``: dilated-object or second scene crop) or a single
``"shared"`` head. A head is trained only through the queries it projects, so with separate heads MoCo and
DenseCL use the symmetrized loss (each view is once the query and once the key) with one key queue per view;
with a shared head they are MoCo-v2's one-sided loss (query view 1, key view 2) with one queue.

Shuffle-BN (MoCo §3.3, ``MODEL.OAC.SHUFFLE_BN``): under DDP the key encoder of MoCo-v2 and DenseCL sees a batch
shuffled across processes (:func:`shuffle_across_ranks`), and its outputs are put back in order, so a query and
its positive key are not normalized with the same process's batch statistics (which would let them share a
"signature" of that batch). On one process it cannot apply. Keys are gathered from all processes before they are
enqueued.
"""
import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.utils import comm
from torch import nn

from .heads import MLPHead
from .health import byol_collapse_loss, info_nce_collapse_loss
from .losses.byol import BYOLLoss
from .losses.dense_contrastive import DenseContrastiveLoss
from .losses.infonce import InfoNCELoss
from .losses.localization import ObjectLocalizationLoss
from .losses.rotation import RelativeRotationLoss, rotate_images
from .momentum_model import MomentumTargetModel, zero_init_residual_norms

__all__ = [
    "OACBYOL",
    "OACDenseCL",
    "OACMoCo",
    "DenseProjectionHead",
    "KeyQueue",
    "concat_all_gather",
    "query_key_directions",
    "shuffle_across_ranks",
]

VIEWS = ("view1", "view2")


@torch.no_grad()
def concat_all_gather(tensor):
    """``tensor`` from every process, concatenated along dim 0 in rank order (itself on one process)."""
    if comm.get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(comm.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


@torch.no_grad()
def shuffle_across_ranks(tensor):
    """MoCo's shuffle-BN (§3.3): every process's rows gathered (rank order), permuted by one random order that rank
    0 draws, and this rank's share of the permuted rows returned, with the function that puts an output of those
    rows back: ``unshuffle(f(shuffled))`` is this rank's ``f(tensor)`` computed in mixed batches. Every rank
    must hold the same number of rows."""
    world_size, rank = comm.get_world_size(), comm.get_rank()
    gathered = concat_all_gather(tensor)
    order = torch.randperm(gathered.shape[0], device=tensor.device)
    dist.broadcast(order, src=0)
    inverse = torch.argsort(order)

    def unshuffle(output):
        return concat_all_gather(output)[inverse.view(world_size, -1)[rank]]

    return gathered[order.view(world_size, -1)[rank]], unshuffle


class KeyQueue(nn.Module):
    """A FIFO of L2-normalized keys (MoCo's dictionary): buffers ``keys`` (size x dim, one key per row), ``ptr``
    (the row the next key goes to) and ``filled`` (how many rows hold real keys). Saved with the model, so a
    resumed run keeps its negatives.

    ``start="random"`` is the official MoCo code's: the rows start as random unit vectors and all of them are
    negatives from the first iteration. ``start="empty"`` uses only the rows written so far (``negatives()``
    grows from 0 to ``size``). Random rows are negatives that any embedding separates from its positive, so
    while they fill the queue InfoNCE rewards pulling every query towards its key and nothing pushes real images
    apart; at a small batch that phase lasts size / batch iterations and collapses the queries (docs/results.md).
    """

    STARTS = ("random", "empty")

    def __init__(self, size, dim, start="random"):
        super().__init__()
        if size < 1:
            raise ValueError(f"MODEL.OAC.QUEUE_SIZE must be >= 1, got {size}")
        if start not in self.STARTS:
            raise ValueError(f"MODEL.OAC.QUEUE_START must be one of {self.STARTS}, got {start!r}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.tensor(size if start == "random" else 0, dtype=torch.long))

    def negatives(self):
        """(filled, dim) copy of the rows that are negatives now (rows fill from 0, so they are the first)."""
        return self.keys[: int(self.filled)].clone()

    @torch.no_grad()
    def enqueue(self, keys):
        """Writes the keys of every process (rank order) over the oldest entries, wrapping around."""
        keys = concat_all_gather(keys.detach()).to(self.keys.dtype)
        size, count = self.keys.shape[0], keys.shape[0]
        ptr = int(self.ptr)
        if count > size:  # only the newest `size` keys survive, at the slots they would have reached
            ptr = (ptr + count - size) % size
            keys, count = keys[-size:], size
        index = (ptr + torch.arange(count, device=self.keys.device)) % size
        self.keys[index] = keys
        self.ptr.fill_((ptr + count) % size)
        self.filled.fill_(min(size, int(self.filled) + count))


class DenseProjectionHead(nn.Sequential):
    """DenseCL's dense projection head: 1x1 conv -> ReLU -> 1x1 conv, (N, C, H, W) -> (N, out_dim, H, W)."""

    def __init__(self, in_channels, hidden_dim, out_dim):
        super().__init__()
        self.add_module("conv1", nn.Conv2d(in_channels, hidden_dim, kernel_size=1))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv2", nn.Conv2d(hidden_dim, out_dim, kernel_size=1))


class _OACModel(MomentumTargetModel):
    """Backbone, per-view heads, momentum target, pretext losses; subclasses add the SSL loss.

    Subclasses implement ``ssl_losses(view1, view2)`` -> ``(loss dict, {view name: pooled online res5 features}``)
    and may extend ``_build_online_heads(cfg, feature_dim)`` (the modules added to ``online_network``).
    """

    dataset_mapper = "OACMapper"
    # online_network children that have no momentum copy.
    online_only = ()

    def __init__(self, cfg):
        # The values are checked before launch (objpretrain.config_validation), not here on every rank.
        super().__init__()
        oac = cfg.MODEL.OAC
        self.view_size = int(cfg.INPUT.OAC.CROP_SIZE)
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        if "res5" not in shapes:
            raise ValueError(
                f"OAC models pool the backbone's res5, but MODEL.RESNETS.OUT_FEATURES gives {list(shapes)}; "
                "set MODEL.RESNETS.OUT_FEATURES ['res5'] and MODEL.BACKBONE.NAME build_resnet_backbone"
            )
        self.feature_dim = shapes["res5"].channels
        self.head_names = VIEWS if oac.SEPARATE_HEADS else ("shared",)
        self.online_network = nn.Module()
        self.online_network.backbone = backbone
        self._build_online_heads(cfg, self.feature_dim)
        if len(self.head_names) == 2 and oac.SEPARATE_HEADS_INIT == "equal":
            self._copy_view1_heads_to_view2()
        if cfg.MODEL.RESNETS.ZERO_INIT_RESIDUAL:
            zero_init_residual_norms(self.online_network.backbone)
        self.target_network = nn.Module()
        for name, child in self.online_network.named_children():
            if name not in self.online_only:
                self.target_network.add_module(name, copy.deepcopy(child))
        for param in self.target_network.parameters():
            param.requires_grad_(False)
        self.momentum_base = float(oac.MOMENTUM)
        self.momentum_end = float(oac.MOMENTUM_END)

        self.rotation_angles = tuple(int(a) for a in cfg.INPUT.OAC.ROTATIONS)
        self.lambda_rot, self.lambda_loc = float(oac.LAMBDA_ROT), float(oac.LAMBDA_LOC)
        self.rotation_loss = (
            RelativeRotationLoss(self.feature_dim, oac.PRETEXT_HIDDEN_DIM, len(self.rotation_angles))
            if self.lambda_rot > 0 else None
        )
        self.localization_loss = (
            ObjectLocalizationLoss(self.feature_dim, oac.PRETEXT_HIDDEN_DIM, cfg.INPUT.OAC.LOC_GRID ** 2)
            if self.lambda_loc > 0 else None
        )
        self._register_pixel_normalization(cfg)

    def _build_online_heads(self, cfg, feature_dim):
        """The projection head of every view (MLP 2048 -> 128 in MoCo-v2; with MODEL.OAC.HEAD_NORM "BN", BYOL's)."""
        oac = cfg.MODEL.OAC
        self.online_network.projector = self._per_view_heads(
            lambda: MLPHead(feature_dim, oac.HEAD_HIDDEN_DIM, oac.HEAD_OUT_DIM, norm=oac.HEAD_NORM))

    def _per_view_heads(self, build_head):
        """One ``build_head()`` per projection-head key (``self.head_names``), in a ModuleDict."""
        return nn.ModuleDict({name: build_head() for name in self.head_names})

    def _copy_view1_heads_to_view2(self):
        """Starts every per-view head of view 2 as a copy of view 1's (they then train apart)."""
        for heads in self.online_network.children():
            if isinstance(heads, nn.ModuleDict) and set(heads.keys()) == set(VIEWS):
                heads["view2"].load_state_dict(heads["view1"].state_dict())

    def head_for(self, view):
        """The projection-head key of ``view`` ("view1"/"view2", or "shared")."""
        return view if len(self.head_names) == 2 else "shared"

    # ---------------------------------------------------------------- inputs and features
    def _images(self, batched_inputs, key):
        try:
            images = torch.stack([d[key] for d in batched_inputs])
        except KeyError as error:
            raise KeyError(
                f"OAC model input has no {key!r}; it comes from the OAC mapper (OBJPRETRAIN.MAPPER 'oac'), "
                "and 'whole_image'/'loc_target' only when MODEL.OAC.LAMBDA_LOC > 0"
            ) from error
        return self.normalize(images)

    @staticmethod
    def _pool(feature_map):
        return feature_map.mean(dim=(2, 3))

    def _res5(self, network, images):
        return network.backbone(images)["res5"]

    def image_features(self, images):
        """(N, C) pooled res5 of the online ResNet for normalized images (view retrieval, the linear probe)."""
        return self._pool(self._res5(self.online_network, images))

    # ---------------------------------------------------------------- forward
    def forward(self, batched_inputs):
        """Training and evaluation both return the loss dict (queues change only in training)."""
        view1 = self._images(batched_inputs, "view1")
        view2 = self._images(batched_inputs, "view2")
        losses, online_pooled = self.ssl_losses(view1, view2)
        if self.rotation_loss is not None:
            labels = [int(d["rotation_label"]) for d in batched_inputs]
            if not all(0 <= label < len(self.rotation_angles) for label in labels):
                raise ValueError(f"rotation_label outside the indices of INPUT.OAC.ROTATIONS: {labels}")
            labels = torch.as_tensor(labels, device=self.device)
            # A separate forward of the rotated object crop: the SSL loss keeps the upright view 1 (§4.2.1).
            rotated = self._pool(self._res5(self.online_network, rotate_images(view1, self.rotation_angles, labels)))
            scene = online_pooled.get("view2")
            if scene is None:
                scene = self._pool(self._res5(self.online_network, view2))
            losses["loss_rot"] = self.lambda_rot * self.rotation_loss(rotated, scene, labels)
        if self.localization_loss is not None:
            whole = self._pool(self._res5(self.online_network, self._images(batched_inputs, "whole_image")))
            targets = torch.stack([torch.as_tensor(d["loc_target"]) for d in batched_inputs]).to(self.device)
            losses["loss_loc"] = self.lambda_loc * self.localization_loss(online_pooled["view1"], whole, targets)
        return losses


def query_key_directions(separate_heads):
    """The (query view, key view) pairs of MoCo-style losses; see the module docstring for why separate heads
    need both directions."""
    return (("view1", "view2"), ("view2", "view1")) if separate_heads else (("view1", "view2"),)


class _QueuedOACModel(_OACModel):
    """The models with a key encoder (the target network) and queues of its keys, MoCo-v2 and DenseCL: per query-key
    direction (:func:`query_key_directions`), InfoNCE of the online query against the key and a queue of past keys
    of the key's view."""

    def __init__(self, cfg):
        super().__init__(cfg)
        oac = cfg.MODEL.OAC
        self.directions = query_key_directions(oac.SEPARATE_HEADS)
        self.key_views = tuple(key for _, key in self.directions)
        self.queues = self._key_queues(cfg)
        self.info_nce = InfoNCELoss(oac.TEMPERATURE)
        # Shuffle-BN is MoCo's, for its key encoder; BYOL has none.
        self.shuffle_bn = bool(oac.SHUFFLE_BN)

    def _key_queues(self, cfg):
        """A :class:`KeyQueue` of MODEL.OAC.QUEUE_SIZE keys per key view."""
        oac = cfg.MODEL.OAC
        return nn.ModuleDict(
            {view: KeyQueue(oac.QUEUE_SIZE, oac.HEAD_OUT_DIM, oac.QUEUE_START) for view in self.key_views})

    @torch.no_grad()
    def _key_embed(self, view, images):
        """``self._embed`` of the target (key) network, with shuffle-BN across processes when it applies."""
        if not (self.shuffle_bn and self.training and comm.get_world_size() > 1):
            return self._embed(self.target_network, view, images)
        shuffled, unshuffle = shuffle_across_ranks(images)
        return tuple(unshuffle(output) for output in self._embed(self.target_network, view, shuffled))


@META_ARCH_REGISTRY.register()
class OACMoCo(_QueuedOACModel):
    """MoCo-v2 (Chen et al. 2020) with OAC views: InfoNCE against a queue of momentum keys (OAC §4.2, Eq. 1).

    Losses: ``loss_moco`` (+ ``loss_rot``, ``loss_loc``).
    """

    def _embed(self, network, view, images):
        pooled = self._pool(self._res5(network, images))
        return pooled, F.normalize(network.projector[self.head_for(view)](pooled), dim=1)

    def ssl_losses(self, view1, view2):
        images = {"view1": view1, "view2": view2}
        online_pooled, queries = {}, {}
        for query_view, _ in self.directions:
            online_pooled[query_view], queries[query_view] = self._embed(self.online_network, query_view,
                                                                        images[query_view])
        keys = {key_view: self._key_embed(key_view, images[key_view])[1] for key_view in self.key_views}
        loss = sum(
            self.info_nce(queries[query_view], keys[key_view], self.queues[key_view].negatives())
            for query_view, key_view in self.directions
        ) / len(self.directions)
        if self.training:
            first_query, first_key = self.directions[0]
            self._record_health(
                embeddings={"projector": queries[first_query], "target_projector": keys[first_key]},
                collapse_losses={"loss_moco": info_nce_collapse_loss(int(self.queues[first_key].filled))},
            )
            for key_view in self.key_views:
                self.queues[key_view].enqueue(keys[key_view])
        return {"loss_moco": loss}, online_pooled


@META_ARCH_REGISTRY.register()
class OACBYOL(_OACModel):
    """BYOL (Grill et al. 2020) with OAC views: the symmetrized normalized-MSE between online predictions and
    target projections. Losses: ``loss_byol`` (+ ``loss_rot``, ``loss_loc``)."""

    online_only = ("predictor",)

    def _build_online_heads(self, cfg, feature_dim):
        super()._build_online_heads(cfg, feature_dim)
        oac = cfg.MODEL.OAC
        self.online_network.predictor = MLPHead(
            oac.HEAD_OUT_DIM, oac.PREDICTOR_HIDDEN_DIM, oac.HEAD_OUT_DIM, norm=oac.HEAD_NORM
        )

    def __init__(self, cfg):
        super().__init__(cfg)
        self.byol_loss = BYOLLoss()

    def parameter_groups(self):
        return {"predictor": list(self.online_network.predictor.parameters())}

    def ssl_losses(self, view1, view2):
        images = {"view1": view1, "view2": view2}
        online_pooled, projections, predictions, targets = {}, {}, {}, {}
        for view in VIEWS:
            online_pooled[view] = self._pool(self._res5(self.online_network, images[view]))
            projections[view] = self.online_network.projector[self.head_for(view)](online_pooled[view])
            predictions[view] = self.online_network.predictor(projections[view])
            with torch.no_grad():
                target_pooled = self._pool(self._res5(self.target_network, images[view]))
                targets[view] = self.target_network.projector[self.head_for(view)](target_pooled)
        loss = self.byol_loss(predictions["view1"], targets["view2"], predictions["view2"], targets["view1"])
        if self.training:
            self._record_health(
                embeddings={"projector": projections["view1"], "predictor": predictions["view1"],
                            "target_projector": targets["view2"]},
                collapse_losses={"loss_byol": byol_collapse_loss(targets["view2"], targets["view1"])},
            )
        return {"loss_byol": loss}, online_pooled


@META_ARCH_REGISTRY.register()
class OACDenseCL(_QueuedOACModel):
    """DenseCL (Wang et al. 2021) with OAC views: MoCo's global InfoNCE plus the dense contrastive loss on
    the res5 grid, each with its own queue. Losses: ``loss_global`` = (1 - w) * global, ``loss_dense`` =
    w * dense, w = ``MODEL.OAC.DENSE_LOSS_WEIGHT`` (+ ``loss_rot``, ``loss_loc``)."""

    def _build_online_heads(self, cfg, feature_dim):
        super()._build_online_heads(cfg, feature_dim)
        oac = cfg.MODEL.OAC
        self.online_network.dense_projector = self._per_view_heads(
            lambda: DenseProjectionHead(feature_dim, oac.HEAD_HIDDEN_DIM, oac.HEAD_OUT_DIM))

    def __init__(self, cfg):
        oac = cfg.MODEL.OAC
        super().__init__(cfg)
        self.dense_weight = float(oac.DENSE_LOSS_WEIGHT)
        self.dense_queues = self._key_queues(cfg)
        self.dense_contrastive = DenseContrastiveLoss(oac.TEMPERATURE)

    def _embed(self, network, view, images):
        """Pooled res5 (N, C), global embedding (N, D), dense embedding (N, D, S), res5 grid (N, C, S) and the
        pooled dense embedding (N, D) that goes to the dense queue; embeddings L2-normalized."""
        res5 = self._res5(network, images)
        pooled = self._pool(res5)
        head = self.head_for(view)
        global_embedding = F.normalize(network.projector[head](pooled), dim=1)
        dense = network.dense_projector[head](res5).flatten(2)
        pooled_dense = F.normalize(dense.mean(dim=2), dim=1)
        return pooled, global_embedding, F.normalize(dense, dim=1), res5.flatten(2), pooled_dense

    def ssl_losses(self, view1, view2):
        images = {"view1": view1, "view2": view2}
        online = {query_view: self._embed(self.online_network, query_view, images[query_view])
                  for query_view, _ in self.directions}
        target = {key_view: self._key_embed(key_view, images[key_view]) for key_view in self.key_views}
        global_loss, dense_loss = 0.0, 0.0
        for query_view, key_view in self.directions:
            _, q_global, q_dense, q_grid, _ = online[query_view]
            _, k_global, k_dense, k_grid, _ = target[key_view]
            global_loss = global_loss + self.info_nce(q_global, k_global, self.queues[key_view].negatives())
            dense_loss = dense_loss + self.dense_contrastive(
                q_dense, k_dense, q_grid, k_grid, self.dense_queues[key_view].negatives()
            )
        if self.training:
            first_query, first_key = self.directions[0]
            collapsed = info_nce_collapse_loss(int(self.queues[first_key].filled))
            self._record_health(
                embeddings={"projector": online[first_query][1], "target_projector": target[first_key][1]},
                collapse_losses={"loss_global": (1.0 - self.dense_weight) * collapsed,
                                 "loss_dense": self.dense_weight * collapsed},
            )
            for key_view in self.key_views:
                self.queues[key_view].enqueue(target[key_view][1])
                self.dense_queues[key_view].enqueue(target[key_view][4])
        count = len(self.directions)
        losses = {
            "loss_global": (1.0 - self.dense_weight) * global_loss / count,
            "loss_dense": self.dense_weight * dense_loss / count,
        }
        return losses, {view: online[view][0] for view in online}
