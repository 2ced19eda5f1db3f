"""BYOL's normalized mean squared error (Grill et al. 2020, Eq. 2; SoCo §3.3, Eq. 5)."""
import torch.nn.functional as F
from torch import nn


def byol_loss(prediction, target):
    """``2 - 2 * cos(prediction_i, target_i)`` for every row i.

    Args:
        prediction: (N, D) online predictions q(g(h)).
        target: (N, D) target projections g'(h'); no gradient flows into them.

    Returns:
        (N,) losses in [0, 4]; 0 where a row of ``prediction`` points the same way as its target.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    prediction = F.normalize(prediction.float(), dim=1)
    target = F.normalize(target.detach().float(), dim=1)
    return 2 - 2 * (prediction * target).sum(dim=1)


class BYOLLoss(nn.Module):
    """Symmetrized BYOL loss between two views of the same N objects.

    ``forward(online_pred_a, target_proj_b, online_pred_b, target_proj_a)``, all (N, D), returns the scalar
    ``mean_i l(p_a_i, z_b_i) + mean_i l(p_b_i, z_a_i)`` where l is :func:`byol_loss`: one view pair of SoCo's
    L + L~ (§3.3, Eq. 5-6), with the mean taken over objects.
    """

    def forward(self, online_pred_a, target_proj_b, online_pred_b, target_proj_a):
        return byol_loss(online_pred_a, target_proj_b).mean() + byol_loss(online_pred_b, target_proj_a).mean()
