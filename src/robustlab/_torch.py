"""Small torch helpers shared by attacks, training, evaluation and detection: the model-state
guard, per-sample broadcasting, batched prediction and accuracy, and number checks for options."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from .validation import check_finite_logits


@contextlib.contextmanager
def model_guard(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Run the body with the model in eval mode (BatchNorm statistics frozen) and its parameters
    not requiring grad (so no ``.grad`` accumulates and no weight gradients are computed), then
    restore every module's mode and every parameter's flag exactly."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    # In train mode BatchNorm would update its running statistics: keep copies to restore.
    buffers = [] if eval_mode else [(b, b.detach().clone()) for b in model.buffers()]
    try:
        if eval_mode:
            model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (integral floats accepted, bools refused), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_float(name: str, value: object, minimum: float | None = None, strict: bool = False) -> float:
    """``value`` as a finite float (>= or, with ``strict``, > ``minimum``), else ValueError."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (v < minimum or (strict and v == minimum)):
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be {rel} {minimum}, got {value!r}")
    return v


def check_fraction(name: str, value: object, open_low: bool = False, open_high: bool = False) -> float:
    """``value`` as a float in [0, 1], else ValueError; ``open_low`` excludes 0, ``open_high`` excludes 1."""
    v = check_float(name, value, 0.0, strict=open_low)
    if v > 1 or (open_high and v == 1):
        raise ValueError(f"{name} must be in {'(' if open_low else '['}0, 1{')' if open_high else ']'}, got {value!r}")
    return v


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``v`` (shape [N]) to broadcast against ``like`` ([N, ...])."""
    return v.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes in eval mode, batched; the model's mode is restored."""
    preds = []
    with model_guard(model, eval_mode=True):
        for i in range(0, len(x), batch_size):
            logits = model(x[i : i + batch_size])
            check_finite_logits(logits)
            preds.append(logits.argmax(1))
    return torch.cat(preds)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` classified as ``y`` in eval mode (NaN/inf logits are refused); counted
    exactly (an integer over ``len(x)``), so 92 of 100 is 0.92, not float32's 0.9200000166893005."""
    return int((predict(model, x, batch_size) == y).sum()) / max(len(x), 1)
