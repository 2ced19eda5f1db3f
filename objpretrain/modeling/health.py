"""What a pretraining model reports of its last training step so that collapse can be seen (docs/pretraining.md,
"Health monitors"), and the statistics computed from it.

Every meta-architecture records a :class:`HealthRecord` in each training forward (``PretrainingModel.
_record_health``): detached references to its embeddings (no copy, no computation on the hot path) and, per loss,
the value that loss takes when the network has collapsed. ``objpretrain.engine.health.HealthMonitorHook`` reads it
once per period through ``PretrainingModel.health_record()`` (objpretrain.modeling.contract).
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["HealthRecord", "byol_collapse_loss", "effective_rank", "embedding_spread", "info_nce_collapse_loss"]


@dataclass
class HealthRecord:
    """``embeddings``: name ("projector", "predictor", ...) -> (N, D) tensor of the step, detached;
    ``collapse_losses``: loss name (as in the model's loss dict) -> the value of that loss for a collapsed model."""

    embeddings: dict = field(default_factory=dict)
    collapse_losses: dict = field(default_factory=dict)

    def __post_init__(self):
        # Detached: the record must not keep the step's graph alive (nor stop a deepcopy of the model).
        self.embeddings = {name: value.detach() for name, value in self.embeddings.items()}


@torch.no_grad()
def embedding_spread(embeddings):
    """(N, D) embeddings -> (spread, cosine_to_mean) of their L2-normalized rows.

    ``spread``: the per-dimension std over the batch, averaged over dimensions, times sqrt(D) (SimSiam §4.1):
    about 1 for rows spread uniformly on the sphere, 0 when every row is the same. ``cosine_to_mean``: the mean
    cosine between each row and the batch-mean direction: 1 when collapsed.
    """
    z = F.normalize(embeddings.detach().float().flatten(1), dim=1)
    spread = float(z.std(dim=0).mean() * math.sqrt(z.shape[1])) if z.shape[0] > 1 else 0.0
    cosine = float((z @ F.normalize(z.mean(dim=0), dim=0)).mean())
    return spread, cosine


@torch.no_grad()
def effective_rank(features):
    """RankMe (Garrido et al., ICML 2023) of (N, D) ``features``: exp of the entropy of their normalized singular
    values, between 1 (every row on one line) and min(N, D). Dimensional collapse (Jing et al., ICLR 2022) leaves
    rows spread on the sphere (:func:`embedding_spread` sees nothing) but in a few directions, which RankMe shows; a
    random network's features already fill many directions, so it is read against the initial weights'."""
    singular = torch.linalg.svdvals(features.detach().double().flatten(1))
    p = singular / singular.sum().clamp(min=1e-30) + 1e-12
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def byol_collapse_loss(*targets):
    """The symmetrized BYOL loss (``objpretrain.modeling.losses.BYOLLoss``, one term per target) that a
    collapsed predictor scores: its best constant output is the mean target direction t̄, which scores
    ``2 - 2 * mean_i cos(t̄, t_i)`` against each (N, D) target batch ``t``. The terms are summed, as the loss sums
    its two directions. A loss at this value means the predictor ignores its input. Returns a 0-d tensor on the
    targets' device (no host synchronization in the training step; the monitor reads it once a period)."""
    total = 0.0
    for target in targets:
        t = F.normalize(target.detach().float(), dim=1)
        total = total + 2 - 2 * (t @ F.normalize(t.mean(dim=0), dim=0)).mean()
    return total


def info_nce_collapse_loss(num_negatives):
    """InfoNCE with ``num_negatives`` queue keys for a collapsed encoder (every logit equal): ln(K + 1)."""
    return math.log(num_negatives + 1)
