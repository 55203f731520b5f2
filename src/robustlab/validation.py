"""Input checks shared by attacks, evaluation and the CLI.

Bad input gets a ValueError that names the problem and the offending value, before any work is
done, instead of a silent wrong answer or a traceback from deep inside torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # only for annotations: threat.py imports _torch, which imports this module
    from .threat import ThreatModel


_CHECK_ELEMENTS = 1 << 20  # elements per slice of the finiteness check (a few MB of temporaries)


def model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and floating dtype of the model's first parameter or buffer (None if it has none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return None, None


def check_images(x: object, threat: ThreatModel | None = None, name: str = "x") -> torch.Tensor:
    """A float tensor (N, ...) with N >= 1, finite, inside the threat model's bounds."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} has dtype {x.dtype}; images must be floating point in the input bounds "
            f"(for uint8 pixels use x.float() / 255)"
        )
    if x.dim() < 2:
        raise ValueError(f"{name} must have a batch dimension (N, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    x = x.detach()
    # In slices: torch.isfinite allocates about 7 bytes per element (an abs() copy and two
    # masks), which for a whole data set would be hundreds of MB on top of the data itself.
    step = max(1, _CHECK_ELEMENTS // max(1, x[0].numel()))
    if not all(bool(torch.isfinite(x[i : i + step]).all()) for i in range(0, len(x), step)):
        bad = sum(int((~torch.isfinite(x[i : i + step])).sum()) for i in range(0, len(x), step))
        raise ValueError(f"{name} contains {bad} NaN or infinite values")
    if threat is not None:
        lo, hi = threat.bounds
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo - 1e-6 or xmax > hi + 1e-6:
            raise ValueError(
                f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside the threat model's bounds "
                f"[{lo:g}, {hi:g}]; scale the data or set ThreatModel(bounds=...)"
            )
    return x


def check_labels(y: object, n: int, num_classes: int | None = None, name: str = "y") -> torch.Tensor:
    """Int64 labels of shape (n,), each in [0, num_classes)."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of int64 labels, got {type(y).__name__}")
    if y.dtype != torch.int64:
        raise ValueError(f"{name} must have dtype torch.int64, got {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the batch, got {tuple(y.shape)}")
    if num_classes is not None and n > 0:
        ymin, ymax = int(y.min()), int(y.max())
        if ymin < 0 or ymax >= num_classes:
            raise ValueError(
                f"{name} has labels in [{ymin}, {ymax}], outside [0, {num_classes - 1}] "
                f"for a model with {num_classes} classes"
            )
    return y


def check_same_device(model: nn.Module, **tensors: torch.Tensor | None) -> None:
    """All tensors on one device, the model's, with the model's floating dtype for images."""
    dev, dtype = model_device_dtype(model)
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            continue  # None, or a non-tensor that the specific check rejects with its own message
        if dev is not None and t.device != dev:
            raise ValueError(f"{name} is on {t.device} but the model is on {dev}; move them together")
    x = tensors.get("x")
    if x is not None and dtype is not None and x.dtype != dtype:
        raise ValueError(f"x has dtype {x.dtype} but the model's parameters are {dtype}; convert x.to({dtype})")


def check_logits(logits: object, n: int) -> torch.Tensor:
    """The model's output must be a (n, classes) float tensor with classes >= 2."""
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"the model must return a logits tensor, it returned {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        raise ValueError(
            f"the model must return logits of shape (batch={n}, classes>=2), got {tuple(logits.shape)}"
        )
    check_finite_logits(logits)
    return logits


def check_finite_logits(logits: torch.Tensor) -> None:
    """NaN or infinite logits make argmax meaningless (a NaN row 'predicts' class 0): refuse them."""
    bad = ~torch.isfinite(logits).all(dim=1)
    if bool(bad.any()):
        raise ValueError(
            f"the model returned NaN or infinite logits for {int(bad.sum())} of {logits.shape[0]} inputs; "
            "accuracy and attacks are meaningless on them (check the model and its weights)"
        )
