"""Training machinery shared by the pretraining methods: LARS, the momentum-target hook, PretrainTrainer."""
from .lars import LARS
from .momentum import MomentumTargetHook, cosine_momentum, unwrap_model
from .trainer import (
    AtomicDetectionCheckpointer,
    PretrainAMPTrainer,
    PretrainSimpleTrainer,
    PretrainTrainer,
    build_pretrain_optimizer,
    resolve_schedule,
    scaled_base_lr,
)

__all__ = [
    "LARS",
    "AtomicDetectionCheckpointer",
    "MomentumTargetHook",
    "PretrainAMPTrainer",
    "PretrainSimpleTrainer",
    "PretrainTrainer",
    "build_pretrain_optimizer",
    "cosine_momentum",
    "resolve_schedule",
    "scaled_base_lr",
    "unwrap_model",
]
