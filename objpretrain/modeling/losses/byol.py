"""BYOL's normalized mean squared error (Grill et al. 2020, Eq. 2; SoCo §3.3, Eq. 5)."""
import torch
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


def byol_pair_loss(prediction, target, correspondence):
    """``2 - 2 * cos`` over the pairs of rows that ``correspondence`` marks, averaged per image: the official SoCo
    loss (``regression_loss_bboxs_aware`` in hologerry/SoCo's contrast/models/SoCo_FPN.py), up to its constant.

    Args:
        prediction: (N * K, D) online predictions of N images' K rows each, image by image.
        target: (N * K, D) target projections of the same images' rows in the other view.
        correspondence: (N, K, K) bool; ``[n, i, j]``: row i of image n's predictions and row j of its targets
            are the same object. Every image needs at least one pair.

    Returns:
        (N,) per-image losses in [0, 4].
    """
    n, k, k2 = correspondence.shape
    if k != k2 or prediction.shape != target.shape or prediction.shape[0] != n * k:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} need N * K rows "
                         f"for a correspondence of shape {tuple(correspondence.shape)}")
    prediction = F.normalize(prediction.float(), dim=1).reshape(n, k, -1)
    target = F.normalize(target.detach().float(), dim=1).reshape(n, k, -1)
    pairs = correspondence.float()
    losses = 2 - 2 * torch.bmm(prediction, target.transpose(1, 2))
    return (losses * pairs).sum(dim=(1, 2)) / pairs.sum(dim=(1, 2))


class BYOLLoss(nn.Module):
    """Symmetrized BYOL loss between two views of the same N objects.

    ``forward(online_pred_a, target_proj_b, online_pred_b, target_proj_a)``, all (N, D), returns the scalar
    ``mean_i l(p_a_i, z_b_i) + mean_i l(p_b_i, z_a_i)`` where l is :func:`byol_loss`: one view pair of SoCo's
    L + L~ (§3.3, Eq. 5-6), with the mean taken over objects.

    With ``correspondence`` ((images, K, K) bool, see :func:`byol_pair_loss`) each image's loss is the mean over
    its corresponding pairs, and the scalar the mean over images; the b -> a term uses the transposed matrix. With
    the identity this equals the mean over objects.
    """

    def forward(self, online_pred_a, target_proj_b, online_pred_b, target_proj_a, correspondence=None):
        if correspondence is None:
            return byol_loss(online_pred_a, target_proj_b).mean() + byol_loss(online_pred_b, target_proj_a).mean()
        return (byol_pair_loss(online_pred_a, target_proj_b, correspondence).mean()
                + byol_pair_loss(online_pred_b, target_proj_a, correspondence.transpose(1, 2)).mean())
