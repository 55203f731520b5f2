"""The attack settings every library runs with, which peers import, and the model helpers that
the adapters, the timing and the training throughput share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustlab import ThreatModel

PEERS = ("torchattacks", "foolbox", "art")


@dataclass(frozen=True)
class Spec:
    key: str
    label: str
    norm: str
    eps: float
    steps: int = 1
    step: float = 0.0
    random_start: bool = False
    k: int = 1  # forward+backward passes of the floor

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, self.eps)


SPECS = (
    Spec("fgsm", "FGSM Linf", "linf", 0.1, k=1),
    Spec("pgd-linf", "PGD-10 Linf", "linf", 0.1, 10, 0.025, True, k=10),
    Spec("pgd-l2", "PGD-10 L2", "l2", 1.0, 10, 0.25, True, k=10),
    Spec("mim", "MIM-10 Linf", "linf", 0.1, 10, 0.01, False, k=10),
    Spec("apgd-ce", "APGD-CE-20 Linf", "linf", 0.1, 20, 0.2, True, k=21),
    Spec("eval", "eval: PGD-20 fixed budget", "linf", 0.1, 20, 0.0125, True, k=20),
)


def available_peers() -> dict[str, str]:
    """Importable peer libraries -> version (or the reason they are missing)."""
    out = {}
    for name in PEERS:
        try:
            m = __import__(name)
            out[name] = getattr(m, "__version__", "?")
        except Exception as e:  # e.g. a library that needs torchvision
            out[name] = f"unavailable: {type(e).__name__}: {e}"
    return out


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, parameters not requiring grad: how every library gets the model."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def floor_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> None:
    """``k`` forward+backward passes w.r.t. the input: what any attack with k gradient steps
    must at least spend."""
    x_adv = x.clone()
    for _ in range(k):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach()
    del grad
