"""Capture a model's (or a tensor's) full state and assert later that it is exactly unchanged.

The one copy every test uses for "the model is left exactly as found" and "the caller's tensor is
never written to"::

    before = snapshot(model)
    ...  # attack, evaluate, visualise
    assert_same_state(model, before)

    saved = snapshot_tensor(x)
    ...
    assert_tensor_untouched(x, saved)

A model's state here is: the train/eval mode of every submodule (by qualified name, not just the
top level), every parameter (the same ``Parameter`` object, its dtype, shape, device, strides and
exact values), every buffer (persistent or not, e.g. BatchNorm running statistics and
``num_batches_tracked``), every ``requires_grad`` flag, every ``.grad`` (``None`` stays ``None``,
a tensor keeps its exact values), and the number of hooks on every submodule (a hook left behind
changes later forward passes). All differences are reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


@dataclass(frozen=True)
class TensorState:
    """A tensor's identity-free description: layout, flags and an exact copy of its values."""

    value: torch.Tensor
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    device: torch.device
    requires_grad: bool
    grad: torch.Tensor | None


@dataclass(frozen=True)
class ModelState:
    modes: dict[str, bool]
    params: dict[str, tuple[nn.Parameter, TensorState]]
    buffers: dict[str, TensorState]
    hooks: dict[str, tuple[int, ...]]


def _name(qualified: str) -> str:
    return qualified or "<root>"


def snapshot_tensor(t: torch.Tensor) -> TensorState:
    """Everything about ``t`` that code handed ``t`` could change in place."""
    grad = t.grad if t.is_leaf else None
    return TensorState(
        value=t.detach().clone(),
        dtype=t.dtype,
        shape=tuple(t.shape),
        stride=tuple(t.stride()),
        device=t.device,
        requires_grad=t.requires_grad,
        grad=None if grad is None else grad.detach().clone(),
    )


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise-equal values (NaN equals NaN), same dtype and shape."""
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(a, b) or torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all())
    return bool(torch.equal(a, b))


def _tensor_diffs(what: str, now: torch.Tensor, saved: TensorState, *, check_stride: bool = True) -> list[str]:
    out = []
    for field, a, b in (("dtype", now.dtype, saved.dtype), ("shape", tuple(now.shape), saved.shape),
                        ("device", now.device, saved.device), ("requires_grad", now.requires_grad, saved.requires_grad)):
        if a != b:
            out.append(f"{what}: {field} {b} -> {a}")
    if check_stride and tuple(now.stride()) != saved.stride:
        out.append(f"{what}: stride {saved.stride} -> {tuple(now.stride())}")
    if not out and not _same_values(now.detach(), saved.value):
        out.append(f"{what}: values changed")
    grad = now.grad if now.is_leaf else None
    if (grad is None) != (saved.grad is None):
        out.append(f"{what}: .grad {'None' if saved.grad is None else 'set'} -> {'None' if grad is None else 'set'}")
    elif grad is not None and saved.grad is not None and not _same_values(grad.detach(), saved.grad):
        out.append(f"{what}: .grad values changed")
    return out


def assert_tensor_untouched(t: torch.Tensor, saved: TensorState, what: str = "tensor") -> None:
    """``t`` has exactly the values, layout, flags and ``.grad`` recorded in ``saved``."""
    diffs = _tensor_diffs(what, t, saved)
    assert not diffs, "; ".join(diffs)


def snapshot(model: nn.Module) -> ModelState:
    """Modes, parameters, buffers, flags, gradients and hook counts of ``model`` and every submodule."""
    return ModelState(
        modes={_name(n): m.training for n, m in model.named_modules(remove_duplicate=False)},
        params={n: (p, snapshot_tensor(p)) for n, p in model.named_parameters(remove_duplicate=False)},
        buffers={n: snapshot_tensor(b) for n, b in model.named_buffers(remove_duplicate=False)},
        hooks={
            _name(n): tuple(len(getattr(m, h, {}) or {}) for h in _HOOK_DICTS)
            for n, m in model.named_modules(remove_duplicate=False)
        },
    )


def state_diffs(model: nn.Module, before: ModelState) -> list[str]:
    """Every difference between ``model`` now and ``before`` (empty when identical)."""
    now = snapshot(model)
    diffs: list[str] = []
    for kind, a, b in (("modules", now.modes, before.modes), ("parameters", now.params, before.params),
                       ("buffers", now.buffers, before.buffers)):
        if a.keys() != b.keys():
            diffs.append(f"{kind} added {sorted(set(a) - set(b))}, removed {sorted(set(b) - set(a))}")
    for name, mode in before.modes.items():
        if name in now.modes and now.modes[name] != mode:
            diffs.append(f"module {name}: training {mode} -> {now.modes[name]}")
    for name, (param, saved) in before.params.items():
        if name not in now.params:
            continue
        current = now.params[name][0]
        if current is not param:
            diffs.append(f"parameter {name}: replaced by another Parameter object")
        diffs += _tensor_diffs(f"parameter {name}", current, saved)
    named_buffers = dict(model.named_buffers(remove_duplicate=False))
    for name, saved in before.buffers.items():
        if name in named_buffers:
            diffs += _tensor_diffs(f"buffer {name}", named_buffers[name], saved, check_stride=False)
    for name, counts in before.hooks.items():
        if name in now.hooks and now.hooks[name] != counts:
            diffs.append(f"module {name}: hook counts {counts} -> {now.hooks[name]} ({', '.join(_HOOK_DICTS)})")
    return diffs


def assert_same_state(model: nn.Module, before: ModelState, what: str = "model") -> None:
    """``model`` is exactly as captured by :func:`snapshot` (all differences in the message)."""
    diffs = state_diffs(model, before)
    assert not diffs, f"{what} changed:\n  " + "\n  ".join(diffs)
