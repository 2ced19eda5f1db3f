"""Restores the initializer's weight norm of every conv that a BatchNorm follows, without changing the function.

Why (docs/results.md, "Transfer"): a conv followed by BatchNorm computes the same function at any scale of its
weight, but gradient descent does not treat the scales alike. The gradient of a scale-invariant weight shrinks as
1/|w| and its relative update as lr/|w|^2, so a weight whose norm grew c-fold during pretraining fine-tunes at a
c^2-fold smaller effective learning rate than a freshly initialized one (van Laarhoven 2017, "L2 regularization
versus batch and weight normalization"; Hoffer et al. 2018). SGD pretraining grows such norms where gradients are
large against the weight: in the CPU learning regime the stem's grew 4.0-4.7x (SoCo, BYOL), so a fine-tuned
detector kept a near-frozen pretrained stem, and the pretrained backbone ended below random init. LARS (SoCo §4.1)
bounds each update by the weight's norm, which is why the paper's recipe is less exposed to it.

:func:`restore_initializer_scale` multiplies each such conv weight by ``c = initializer norm / current norm`` and
its norm's running mean by ``c`` and running variance by ``c**2``. With BatchNorm in train mode (batch statistics)
the output is unchanged exactly; in eval mode and with FrozenBatchNorm it is unchanged up to the norm's ``eps``.
The fine-tuning then starts every pretrained conv at the effective learning rate of a freshly initialized one,
which is what random init gets. The initializer norms are the expected norms of Detectron2's initializers, per
module: ``c2_msra_fill`` (ResNet convs, box-head convs, C4 res5: Kaiming normal, fan-out), E|w|^2 = 2 * fan-in
channels; ``c2_xavier_fill`` (FPN lateral and output convs: Kaiming uniform a=1, fan-in), E|w|^2 = out channels.
"""
import math

import torch

__all__ = ["initializer_norm", "restore_initializer_scale"]


def _initializer(name):
    """'msra' or 'xavier': the Detectron2 initializer of the conv named ``name`` (Detectron2 names)."""
    return "xavier" if name.startswith("fpn_") or ".fpn_" in name else "msra"


def initializer_norm(name, weight):
    """Expected Frobenius norm of conv ``weight`` (out, in / groups, kh, kw) as Detectron2 initializes ``name``."""
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    if _initializer(name) == "xavier":
        return math.sqrt(out_channels)
    return math.sqrt(2.0 * in_per_group)


def restore_initializer_scale(state_dict):
    """Rescales, in place, every 4-d conv weight of ``state_dict`` (Detectron2 names) that has a
    ``<conv>.norm.running_var`` beside it to :func:`initializer_norm`, with the norm's running statistics
    rescaled to match. Returns ``[(weight name, factor)]`` in state-dict order."""
    factors = []
    for name in list(state_dict):
        if not name.endswith(".weight"):
            continue
        conv = name[: -len(".weight")]
        weight = state_dict[name]
        mean_name, var_name = f"{conv}.norm.running_mean", f"{conv}.norm.running_var"
        if weight.dim() != 4 or var_name not in state_dict or mean_name not in state_dict:
            continue
        norm = float(weight.double().norm())
        if norm == 0.0:  # a zeroed conv has no direction to keep; leave it to the checks that report it
            continue
        factor = initializer_norm(name, weight) / norm
        state_dict[name] = (weight.double() * factor).to(weight.dtype)
        state_dict[mean_name] = (state_dict[mean_name].double() * factor).to(state_dict[mean_name].dtype)
        state_dict[var_name] = (state_dict[var_name].double() * factor ** 2).to(state_dict[var_name].dtype)
        factors.append((name, factor))
    return factors


def summarize_factors(factors, threshold=1.25):
    """One line: how many convs were rescaled and the ones whose factor is outside [1/threshold, threshold]."""
    if not factors:
        return "weight scale: no conv with a BatchNorm to rescale"
    far = [(n, f) for n, f in factors if max(f, 1 / f) > threshold]
    values = torch.tensor([f for _, f in factors])
    line = (f"weight scale: {len(factors)} convs with a BatchNorm set to their initializer's norm (factors "
            f"{float(values.min()):.3f}-{float(values.max()):.3f}, median {float(values.median()):.3f})")
    if far:
        line += "; far from 1: " + ", ".join(f"{n} x{f:.3f}" for n, f in far)
    return line
