"""InfoNCE with a queue of negative keys (MoCo, He et al. 2019, Eq. 1; OAC §4.2, Eq. 1)."""
import torch
import torch.nn.functional as F
from torch import nn


def info_nce_logits(query, positive_key, negative_keys, temperature):
    """Logits of the (1 + K)-way classification that InfoNCE solves.

    Args:
        query: (N, D) L2-normalized queries q.
        positive_key: (N, D) L2-normalized positive keys k+; no gradient flows into them.
        negative_keys: (K, D) L2-normalized negative keys k- (the queue), shared by all queries.
        temperature: tau.

    Returns:
        (N, 1 + K) logits; column 0 is q . k+ / tau, the rest q . k- / tau.
    """
    if query.shape != positive_key.shape:
        raise ValueError(f"query {tuple(query.shape)} and positive key {tuple(positive_key.shape)} differ in shape")
    if negative_keys.shape[1] != query.shape[1]:
        raise ValueError(f"negative keys have dimension {negative_keys.shape[1]}, queries {query.shape[1]}")
    positive = (query * positive_key.detach()).sum(dim=1, keepdim=True)
    negative = query @ negative_keys.detach().t()
    return torch.cat([positive, negative], dim=1) / temperature


class InfoNCELoss(nn.Module):
    """``-log exp(q.k+/tau) / (exp(q.k+/tau) + sum_k- exp(q.k-/tau))``, averaged over queries.

    ``forward(query (N, D), positive_key (N, D), negative_keys (K, D))`` -> scalar; inputs L2-normalized.
    """

    def __init__(self, temperature):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"InfoNCE temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, query, positive_key, negative_keys):
        logits = info_nce_logits(query.float(), positive_key.float(), negative_keys.float(), self.temperature)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, labels)
