"""DistributedDataParallel on the device the model is on, for Detectron2's ``launch`` on CPUs (gloo) and GPUs (NCCL).

Detectron2's ``create_ddp_model`` passes ``device_ids=[local rank]``, which DistributedDataParallel accepts only
for a module on that GPU: on a CPU machine ``--num-gpus 2`` (gloo processes) fails at once. DDP wants
``device_ids=None`` for CPU modules. :func:`create_ddp_model` does that and otherwise is Detectron2's; the trainers
build their DDP model with it (``ResumableTrainer.build_ddp_model``).
"""
from detectron2.engine import create_ddp_model as d2_create_ddp_model

__all__ = ["create_ddp_model"]


def create_ddp_model(model, **kwargs):
    """Detectron2's ``create_ddp_model``; for a model whose parameters are on the CPU, ``device_ids=None``."""
    first = next(model.parameters(), None)
    if first is not None and first.device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return d2_create_ddp_model(model, **kwargs)
