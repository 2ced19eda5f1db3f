"""The momentum (EMA) update of a target network, as a Detectron2 hook (BYOL §3.1; SoCo §4.1)."""
import math

from detectron2.engine import HookBase
from torch.nn.parallel import DataParallel, DistributedDataParallel

__all__ = ["MomentumTargetHook", "cosine_momentum", "unwrap_model"]


def cosine_momentum(step, total_steps, base, end=1.0):
    """BYOL's schedule: ``tau = end - (end - base) * (cos(pi * step / total_steps) + 1) / 2``.

    ``tau(0) = base`` and ``tau(total_steps) = end``; with end = 1 this is BYOL's
    ``1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end - (end - base) * (math.cos(math.pi * progress) + 1) / 2


def unwrap_model(model):
    """The module inside DistributedDataParallel / DataParallel, or ``model`` itself."""
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


class MomentumTargetHook(HookBase):
    """After every optimizer step, moves the target network towards the online one with
    ``model.momentum_update(tau)``, tau on :func:`cosine_momentum` from ``model.momentum_base`` to
    ``model.momentum_end`` over ``max_iter`` updates, and logs tau as ``momentum_tau``.

    The number of updates done is part of the trainer's checkpoint (``state_dict``), so a resumed run continues
    the schedule where it stopped. Register it before the PeriodicCheckpointer so a checkpoint written at an
    iteration includes that iteration's update.
    """

    def __init__(self, max_iter):
        self.max_iter = int(max_iter)
        self.num_updates = 0

    def _model(self):
        model = unwrap_model(self.trainer.model)
        for attribute in ("momentum_update", "momentum_base", "momentum_end"):
            if not hasattr(model, attribute):
                raise AttributeError(f"MomentumTargetHook needs model.{attribute}; {type(model).__name__} lacks it")
        return model

    def before_train(self):
        self._model()  # fail before the first step, not after it

    def current_tau(self):
        model = self._model()
        return cosine_momentum(self.num_updates, self.max_iter, model.momentum_base, model.momentum_end)

    def after_step(self):
        tau = self.current_tau()
        self._model().momentum_update(tau)
        self.num_updates += 1
        self.trainer.storage.put_scalar("momentum_tau", tau, smoothing_hint=False)

    def state_dict(self):
        return {"num_updates": self.num_updates}

    def load_state_dict(self, state_dict):
        self.num_updates = int(state_dict["num_updates"])
