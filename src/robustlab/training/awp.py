"""Adversarial weight perturbation (AWP; Wu, Xia & Wang, NeurIPS 2020) for pgd-at and trades.

Before each update the weights take one ascent step on the objective's adversarial loss, scaled
per layer to ``gamma`` times that layer's weight norm: ``v_l = gamma * ||w_l|| * g_l / ||g_l||``
(``g_l`` the gradient of the loss for weight tensor ``l``; biases and normalisation parameters,
one-dimensional tensors, are not perturbed, as in the paper). The gradient of the loss at
``w + v`` is the one the optimiser applies to ``w``; the weights are restored exactly (copied
back, not subtracted) before the loop's optimiser step, and the BatchNorm statistics are left as
one ordinary forward pass leaves them. The paper's defaults: gamma 0.005 (AT), 0.005 (TRADES).

The objective returns ``loss + (sum_p <p, g_p> - its value)``: the value of the loss at
``w + v`` (what the history logs) with the gradient ``g`` at ``w + v`` with respect to ``w``, so
the training loop needs no change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..distributed import dist_info, unwrap

LossFn = Callable[[nn.Module], tuple[torch.Tensor, dict[str, Any]]]


def check_gamma(gamma: float) -> float:
    """``gamma`` as a float; a ValueError unless it is a finite number >= 0."""
    g = float(gamma)
    if not (g >= 0 and math.isfinite(g)):
        raise ValueError(f"awp_gamma must be a finite number >= 0 (relative weight perturbation, e.g. 0.005), got {gamma}")
    return g


def perturbed_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs AWP perturbs: trainable tensors of two or more dimensions."""
    return [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad and p.dim() > 1]


def weight_perturbation(model: nn.Module, loss_fn: LossFn, gamma: float) -> dict[str, torch.Tensor]:
    """The perturbation ``v`` (name -> tensor) of one ascent step on ``loss_fn``'s loss, each
    ``||v_l|| = gamma * ||w_l||``; the model's buffers (BatchNorm statistics) are restored."""
    inner = unwrap(model)
    weights = perturbed_weights(inner)
    buffers = [b.detach().clone() for b in inner.buffers()]
    loss, _ = loss_fn(inner)
    grads = torch.autograd.grad(loss, [p for _, p in weights], allow_unused=True)
    with torch.no_grad():
        for b, saved in zip(inner.buffers(), buffers):
            b.copy_(saved)
    out = {}
    for (name, w), g in zip(weights, grads):
        if g is None:
            continue
        gn = g.norm()
        out[name] = (gamma * w.detach().norm() / gn) * g if gn > 0 else torch.zeros_like(w)
    return out


def awp_loss(model: nn.Module, loss_fn: LossFn, gamma: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """``loss_fn(model)`` evaluated at the adversarially perturbed weights, as a loss whose gradient
    (with respect to the unperturbed weights) is the perturbed one; the weights end exactly as given."""
    _rank, world = dist_info()
    if world > 1:
        raise ValueError("awp_gamma is not available with --nproc > 1 (train AWP in one process)")
    inner = unwrap(model)
    v = weight_perturbation(inner, loss_fn, gamma)
    params = [p for p in inner.parameters() if p.requires_grad]
    originals = {n: p.detach().clone() for n, p in inner.named_parameters() if n in v}
    named = dict(inner.named_parameters())
    try:
        with torch.no_grad():
            for n, d in v.items():
                named[n].add_(d)
        loss, logs = loss_fn(inner)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        with torch.no_grad():
            for n, w in originals.items():
                named[n].copy_(w)
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
    surrogate = sum(((p * g.detach()).sum() for p, g in pairs), torch.zeros((), device=loss.device))
    return loss.detach() + surrogate - surrogate.detach(), logs
