"""Training objectives: what loss one batch contributes.

The training loop knows nothing about attacks; an objective turns (model, x, y) into a scalar loss
plus a few numbers to log. Adversarial objectives craft their examples through the public
``Attack`` call, which leaves the model's train mode and parameters exactly as it found them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn


@runtime_checkable
class Objective(Protocol):
    """A per-batch training loss. ``name`` and ``config()`` are recorded in checkpoints."""

    name: str

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Return (scalar loss to minimise, logs). Logs hold detached tensors or floats."""
        ...

    def config(self) -> dict[str, Any]: ...


class Clean:
    """Standard training: cross-entropy on the clean batch."""

    name = "clean"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "acc": (logits.argmax(1) == y).float().mean()}

    def config(self) -> dict[str, Any]:
        return {"name": self.name}
