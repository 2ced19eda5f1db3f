"""Training machinery: the trainers (PretrainTrainer, FinetuneTrainer, both ResumableTrainer), LARS, the
momentum-target hook, the exact-resume mixin and the atomic checkpointer."""
from .checkpoint import AtomicDetectionCheckpointer
from .defaults import ResumableTrainer
from .finetune import FinetuneTrainer, finetune
from .lars import LARS
from .momentum import MomentumTargetHook, cosine_momentum, ema_update, unwrap_model
from .resumable import ResumableDataStreamMixin
from .trainer import (
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
    "FinetuneTrainer",
    "MomentumTargetHook",
    "PretrainAMPTrainer",
    "PretrainSimpleTrainer",
    "PretrainTrainer",
    "ResumableDataStreamMixin",
    "ResumableTrainer",
    "build_pretrain_optimizer",
    "cosine_momentum",
    "ema_update",
    "finetune",
    "resolve_schedule",
    "scaled_base_lr",
    "unwrap_model",
]
