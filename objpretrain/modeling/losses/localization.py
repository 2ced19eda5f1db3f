"""OAC's object localization task (§4.2.2): which of the whole image's p x p patches the object crop covers."""
import torch
import torch.nn.functional as F
from torch import nn

from ..heads import MLPHead


class ObjectLocalizationLoss(nn.Module):
    """An MLP on [z_obj(object crop), z_ori(whole image)] predicts the p*p patch labels; binary cross-entropy
    per patch, averaged over patches and images ("two-class classification", §4.2.2).

    ``forward(object_features (N, C), image_features (N, C), targets (N, p*p) in {0, 1})`` -> scalar.
    """

    def __init__(self, feature_dim, hidden_dim, num_patches):
        super().__init__()
        self.classifier = MLPHead(2 * feature_dim, hidden_dim, num_patches, norm="BN")

    def forward(self, object_features, image_features, targets):
        logits = self.classifier(torch.cat([object_features, image_features], dim=1))
        if logits.shape != targets.shape:
            raise ValueError(f"localization targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}")
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
