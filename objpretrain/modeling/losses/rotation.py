"""OAC's relative rotation task (§4.2.1): predict how the object crop was rotated relative to the scene crop."""
import torch
import torch.nn.functional as F
from torch import nn

from ..heads import MLPHead


def rotate_images(images, angles, labels):
    """Rotates each image counter-clockwise by ``angles[labels[i]]`` degrees (multiples of 90).

    Args:
        images: (N, C, H, W) with H == W (any dtype).
        angles: the angle set, e.g. (0, 90, 180, 270) (INPUT.OAC.ROTATIONS).
        labels: (N,) long indices into ``angles``.

    Returns:
        (N, C, H, W) rotated images; image i is ``torch.rot90(images[i], angles[labels[i]] // 90, (H, W))``.
    """
    if images.shape[-1] != images.shape[-2] and any(a % 180 for a in angles):
        raise ValueError(f"90-degree rotations need square images, got {tuple(images.shape[-2:])}")
    rotated = images.clone()
    for index, angle in enumerate(angles):
        selected = labels == index
        if selected.any() and angle % 360:
            rotated[selected] = torch.rot90(images[selected], (angle // 90) % 4, dims=(-2, -1))
    return rotated


class RelativeRotationLoss(nn.Module):
    """An MLP on [z_obj(rotated object crop), z_scene(scene crop)] classifies the rotation; cross-entropy.

    ``forward(rotated_object_features (N, C), scene_features (N, C), labels (N,))`` -> scalar.
    """

    def __init__(self, feature_dim, hidden_dim, num_rotations):
        super().__init__()
        self.classifier = MLPHead(2 * feature_dim, hidden_dim, num_rotations, norm="BN")

    def forward(self, rotated_object_features, scene_features, labels):
        logits = self.classifier(torch.cat([rotated_object_features, scene_features], dim=1))
        return F.cross_entropy(logits.float(), labels)
