"""LARS: layer-wise adaptive rate scaling (You et al. 2017), as used by BYOL and SoCo (§4.1)."""
import torch
from torch.optim import Optimizer

__all__ = ["LARS"]


class LARS(Optimizer):
    """SGD with momentum whose per-parameter step is scaled by the trust ratio
    ``trust_coefficient * ||w|| / (||g + weight_decay * w|| + eps)``.

    A param group with ``lars_exclude=True`` (biases and norm parameters, BYOL §3.3 / Appendix C) gets neither
    weight decay nor the trust ratio: plain momentum SGD. The trust ratio is 1 where ``||w||`` or the update
    norm is 0 (e.g. a freshly zero-initialized layer), so such parameters can still move.

    Update, per parameter: ``u = g + wd * w``; ``u *= trust``; ``buf = momentum * buf + u``; ``w -= lr * buf``.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, eps=1e-8):
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0 or trust_coefficient <= 0.0 or eps < 0.0:
            raise ValueError(
                f"LARS got lr={lr}, momentum={momentum}, weight_decay={weight_decay}, "
                f"trust_coefficient={trust_coefficient}, eps={eps}; all must be >= 0 (trust_coefficient > 0)"
            )
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps,
            lars_exclude=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"] != 0:
                        update = update.add(param, alpha=group["weight_decay"])
                    param_norm = torch.linalg.vector_norm(param)
                    update_norm = torch.linalg.vector_norm(update)
                    trust_ratio = torch.where(
                        (param_norm > 0) & (update_norm > 0),
                        group["trust_coefficient"] * param_norm / (update_norm + group["eps"]),
                        torch.ones_like(param_norm),
                    )
                    update = update.mul(trust_ratio)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(update).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss
