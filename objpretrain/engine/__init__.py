"""Training machinery: LARS, the momentum-target hook, PretrainTrainer, and the exact-resume mixin that
fine-tuning (tools/train_net.py) shares with it."""
from .lars import LARS
from .momentum import MomentumTargetHook, cosine_momentum, ema_update, unwrap_model
from .resumable import ResumableDataStreamMixin
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
    "ResumableDataStreamMixin",
    "build_pretrain_optimizer",
    "cosine_momentum",
    "ema_update",
    "resolve_schedule",
    "scaled_base_lr",
    "unwrap_model",
]
