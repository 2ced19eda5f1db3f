"""Loss modules, one per file, with their input and output shapes documented."""
from .byol import BYOLLoss, byol_loss, byol_pair_loss

__all__ = ["BYOLLoss", "byol_loss", "byol_pair_loss"]
