"""Projection and prediction MLPs of BYOL-style models (SoCo §4.1, BYOL §3.3)."""
from torch import nn


def get_norm1d(norm, num_features):
    """A norm layer for (N, C) features: "BN" (BatchNorm1d), "SyncBN" (torch's SyncBatchNorm, which behaves as
    BatchNorm1d in a single process) or "" (none).

    Detectron2's ``get_norm`` returns 2-D norms (BatchNorm2d, NaiveSyncBatchNorm) that reject (N, C) inputs,
    hence this small counterpart for MLP heads.
    """
    if norm == "BN":
        return nn.BatchNorm1d(num_features)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(num_features)
    if norm == "":
        return nn.Identity()
    raise ValueError(f"Unknown norm {norm!r} for an MLP head; expected 'BN', 'SyncBN' or ''")


class MLPHead(nn.Sequential):
    """Linear -> norm -> ReLU -> Linear: the projector g and predictor q of SoCo (§4.1) and BYOL.

    Input (N, in_dim), output (N, out_dim).
    """

    def __init__(self, in_dim, hidden_dim, out_dim, norm="BN"):
        super().__init__()
        # The first Linear has no bias when a norm follows: the norm's shift makes it redundant.
        self.add_module("linear1", nn.Linear(in_dim, hidden_dim, bias=norm == ""))
        self.add_module("norm", get_norm1d(norm, hidden_dim))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("linear2", nn.Linear(hidden_dim, out_dim))
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
