"""DenseCL's dense contrastive loss (Wang et al. 2021, Eq. 2-3), used by OAC's DenseCL variant (§5, Table 5)."""
import torch
import torch.nn.functional as F
from torch import nn

from .infonce import info_nce_logits


def match_dense_positions(query_backbone, key_backbone):
    """For every query position, the key position whose backbone feature is most similar (cosine).

    Args:
        query_backbone: (N, C, S) backbone features of the query view at S = H x W positions.
        key_backbone: (N, C, S) backbone features of the key view.

    Returns:
        (N, S) long: index of the matched key position for each query position (DenseCL §3.2).
    """
    query_backbone = F.normalize(query_backbone.detach().float(), dim=1)
    key_backbone = F.normalize(key_backbone.detach().float(), dim=1)
    similarity = torch.einsum("ncq,nck->nqk", query_backbone, key_backbone)
    return similarity.argmax(dim=2)


class DenseContrastiveLoss(nn.Module):
    """InfoNCE between every query position and its matched key position, with pooled keys of other images
    (the dense queue) as negatives, averaged over positions and images.

    ``forward(query_dense (N, D, S), key_dense (N, D, S), query_backbone (N, C, S), key_backbone (N, C, S),
    negative_keys (K, D))`` -> scalar. The dense projections must be L2-normalized along D.
    """

    def __init__(self, temperature):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"DenseCL temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, query_dense, key_dense, query_backbone, key_backbone, negative_keys):
        if query_dense.shape != key_dense.shape:
            raise ValueError(f"dense query {tuple(query_dense.shape)} and key {tuple(key_dense.shape)} differ")
        match = match_dense_positions(query_backbone, key_backbone)
        matched_keys = torch.gather(key_dense, 2, match.unsqueeze(1).expand(-1, key_dense.shape[1], -1))
        # Every position becomes one query row: (N * S, D).
        queries = query_dense.permute(0, 2, 1).reshape(-1, query_dense.shape[1])
        positives = matched_keys.permute(0, 2, 1).reshape(-1, key_dense.shape[1])
        logits = info_nce_logits(queries.float(), positives.float(), negative_keys.float(), self.temperature)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, labels)
