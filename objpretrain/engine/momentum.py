"""The momentum (EMA) update of a target network, as a Detectron2 hook (BYOL §3.1; SoCo §4.1)."""
import math

import torch
from detectron2.engine import HookBase
from torch.nn.parallel import DataParallel, DistributedDataParallel

from ..modeling.contract import PretrainingModel

__all__ = ["MomentumTargetHook", "cosine_momentum", "ema_update", "unwrap_model"]


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


@torch.no_grad()
def ema_update(pairs, tau, foreach=True):
    """``target <- tau * target + (1 - tau) * online`` for every (online, target) module pair, parameter by parameter,
    matched by name (the online module may hold more). BN statistics stay the target's own, as in BYOL and MoCo.
    ``foreach``: one multi-tensor lerp over all parameters (the default); False: one lerp per parameter, the
    reference bench/train_step.py --compare measures it against."""
    targets, sources = [], []
    for online, target in pairs:
        online_parameters = dict(online.named_parameters())
        for name, parameter in target.named_parameters():
            targets.append(parameter)
            sources.append(online_parameters[name])
    if foreach:
        torch._foreach_lerp_(targets, sources, 1.0 - tau)
    else:
        for target, source in zip(targets, sources):
            target.lerp_(source, 1.0 - tau)


class MomentumTargetHook(HookBase):
    """After every optimizer step, moves the model's target modules towards their online ones (:func:`ema_update` over
    ``PretrainingModel.momentum_pairs()``), tau on :func:`cosine_momentum` from ``model.momentum_base`` to
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
        if not (isinstance(model, PretrainingModel) and model.momentum_pairs()):
            raise TypeError(f"MomentumTargetHook needs a PretrainingModel with momentum pairs (a target network); "
                            f"{type(model).__name__} has none")
        return model

    def before_train(self):
        self._model()  # fail before the first step, not after it

    def current_tau(self):
        model = self._model()
        return cosine_momentum(self.num_updates, self.max_iter, model.momentum_base, model.momentum_end)

    def after_step(self):
        tau = self.current_tau()
        ema_update(self._model().momentum_pairs().values(), tau)
        self.num_updates += 1
        self.trainer.storage.put_scalar("momentum_tau", tau, smoothing_hint=False)

    def state_dict(self):
        return {"num_updates": self.num_updates}

    def load_state_dict(self, state_dict):
        self.num_updates = int(state_dict["num_updates"])
