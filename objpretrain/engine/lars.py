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

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, eps=1e-8, foreach=True):
        """``foreach``: update each group's parameters with multi-tensor (``torch._foreach_*``) operations, a few
        kernel launches per group instead of several per parameter (as ``torch.optim.SGD(foreach=True)``); False:
        one parameter at a time. Both compute the same update (tests/test_engine.py)."""
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
        self.foreach = bool(foreach)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._group_step_foreach if self.foreach else self._group_step_loop)(group, params)
        return loss

    def _group_step_loop(self, group, params):
        for param in params:
            update = param.grad
            if not group["lars_exclude"]:
                if group["weight_decay"] != 0:
                    update = update.add(param, alpha=group["weight_decay"])
                update = update.mul(self._trust_ratio(group, torch.linalg.vector_norm(param),
                                                      torch.linalg.vector_norm(update)))
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.clone(update).detach()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(update)
            param.add_(state["momentum_buffer"], alpha=-group["lr"])

    def _group_step_foreach(self, group, params):
        updates = [p.grad for p in params]
        if not group["lars_exclude"]:
            if group["weight_decay"] != 0:
                updates = torch._foreach_add(updates, params, alpha=group["weight_decay"])
            trust = self._trust_ratio(group, torch.stack(torch._foreach_norm(params)),
                                      torch.stack(torch._foreach_norm(updates)))
            updates = torch._foreach_mul(updates, list(trust.unbind()))
        fresh = {i for i, p in enumerate(params) if "momentum_buffer" not in self.state[p]}
        for i in fresh:
            self.state[params[i]]["momentum_buffer"] = torch.clone(updates[i]).detach()
        seen = [i for i in range(len(params)) if i not in fresh]
        if seen:
            buffers = [self.state[params[i]]["momentum_buffer"] for i in seen]
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, [updates[i] for i in seen])
        torch._foreach_add_(params, [self.state[p]["momentum_buffer"] for p in params], alpha=-group["lr"])

    @staticmethod
    def _trust_ratio(group, param_norm, update_norm):
        """trust_coefficient * ||w|| / (||u|| + eps), or 1 where either norm is 0 (elementwise on stacked norms)."""
        return torch.where(
            (param_norm > 0) & (update_norm > 0),
            group["trust_coefficient"] * param_norm / (update_norm + group["eps"]),
            torch.ones_like(param_norm),
        )
