"""Projection and prediction MLPs of BYOL-style models (SoCo §4.1, BYOL §3.3)."""
from detectron2.layers import NaiveSyncBatchNorm
from torch import nn

# The norms of an MLP head (get_norm1d; MODEL.SOCO.HEAD_NORM, MODEL.OAC.HEAD_NORM) and of its output
# (MODEL.SOCO.PROJECTOR_OUTPUT_NORM).
MLP_NORMS = ("BN", "SyncBN", "naiveSyncBN", "")
OUTPUT_NORMS = ("BN", "")


class NaiveSyncBatchNorm1d(NaiveSyncBatchNorm):
    """Detectron2's NaiveSyncBatchNorm for (N, C) features: batch statistics averaged over all processes with a
    differentiable all-reduce, which works on gloo (CPU) as on NCCL, where torch's SyncBatchNorm needs CUDA.
    Every process must hold the same number of rows (true of SoCo's K boxes per image and of the OAC heads)."""

    def forward(self, input):
        if input.dim() != 2:
            raise ValueError(f"NaiveSyncBatchNorm1d expects (N, C) features, got shape {tuple(input.shape)}")
        return super().forward(input[:, :, None, None])[:, :, 0, 0]


def get_norm1d(norm, num_features):
    """A norm layer for (N, C) features: "BN" (BatchNorm1d), "SyncBN" (torch's SyncBatchNorm, which behaves as
    BatchNorm1d in a single process and needs CUDA in several), "naiveSyncBN" (:class:`NaiveSyncBatchNorm1d`,
    any backend) or "" (none).

    Detectron2's ``get_norm`` returns 2-D norms (BatchNorm2d, NaiveSyncBatchNorm) that reject (N, C) inputs,
    hence this small counterpart for MLP heads.
    """
    if norm == "BN":
        return nn.BatchNorm1d(num_features)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(num_features)
    if norm == "naiveSyncBN":
        return NaiveSyncBatchNorm1d(num_features)
    if norm == "":
        return nn.Identity()
    raise ValueError(f"Unknown norm {norm!r} for an MLP head; expected one of {MLP_NORMS}")


class MLPHead(nn.Sequential):
    """Linear -> norm -> ReLU -> Linear: the projector g and predictor q of SoCo (§4.1) and BYOL.

    Input (N, in_dim), output (N, out_dim). ``output_norm="BN"`` appends SimSiam's output BatchNorm without
    affine parameters (Chen & He 2021, §4.4), which centres every output dimension over the batch.
    """

    def __init__(self, in_dim, hidden_dim, out_dim, norm="BN", output_norm=""):
        super().__init__()
        # The first Linear has no bias when a norm follows: the norm's shift makes it redundant.
        self.add_module("linear1", nn.Linear(in_dim, hidden_dim, bias=norm == ""))
        self.add_module("norm", get_norm1d(norm, hidden_dim))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("linear2", nn.Linear(hidden_dim, out_dim))
        if output_norm == "BN":
            # Per process even when ``norm`` is synchronized (Detectron2's NaiveSyncBatchNorm needs affine
            # parameters), so on several processes each centres its own batch.
            self.add_module("output_norm", nn.BatchNorm1d(out_dim, affine=False))
        elif output_norm != "":
            raise ValueError(f"Unknown output norm {output_norm!r} for an MLP head; expected one of {OUTPUT_NORMS}")
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
