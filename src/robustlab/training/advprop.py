"""AdvProp (Xie et al. 2020): adversarial examples as extra training data, through auxiliary
BatchNorm layers.

Clean and adversarial images come from different distributions; normalising them with the same
BatchNorm statistics hurts clean accuracy. AdvProp gives every BatchNorm a twin (its own affine
parameters and running statistics): clean batches use the main BatchNorms, the PGD examples
(crafted through the twins) use the twins, and the loss is ``CE(clean) + CE(adversarial)``. At
test time only the main BatchNorms are used, and the twins are dropped at the end of training,
so the saved model is the plain architecture.

The mechanics, without changing the model's class:

* :func:`add_auxiliary_bn` registers a copy of each BatchNorm as its child ``advprop_aux``
  (so the optimiser sees its parameters; call it before the optimiser is built);
* :func:`route` sends every BatchNorm's input through its twin (``clean=None``) or splits the
  batch (the first ``clean`` samples through the main BatchNorm, the rest through the twin: one
  forward pass for both, so every parameter takes part in it, as DDP wants);
* :func:`remove_auxiliary_bn` drops the twins; :func:`dual_batchnorm` does add / remove around a
  block of code.

Outside :func:`route` a BatchNorm with a twin behaves exactly like a plain one.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..attacks import PGD
from ..distributed import unwrap
from ..threat import ThreatModel, canonical_norm

AUX = "advprop_aux"  # the child name of a BatchNorm's twin


def main_batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm layers, not counting auxiliary twins."""
    twins = {id(m._modules[AUX]) for m in model.modules() if AUX in m._modules}
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and id(m) not in twins]


def has_auxiliary_bn(model: nn.Module) -> bool:
    """True when every BatchNorm of ``model`` has its twin (and there is at least one)."""
    bns = main_batchnorms(model)
    return bool(bns) and all(AUX in bn._modules for bn in bns)


def add_auxiliary_bn(model: nn.Module) -> int:
    """Give every BatchNorm of ``model`` a twin (a copy of its current parameters and statistics);
    returns how many were added. A model without BatchNorm is a ValueError."""
    bns = main_batchnorms(model)
    if not bns:
        raise ValueError(f"advprop needs a model with BatchNorm layers ({type(model).__name__} has none): "
                         "train with --batchnorm (small-cnn, mlp) or use resnet18")
    added = 0
    for bn in bns:
        if AUX not in bn._modules:
            bn.add_module(AUX, copy.deepcopy(bn))
            added += 1
    return added


def remove_auxiliary_bn(model: nn.Module) -> int:
    """Drop the twins (the plain model with its main BatchNorms is left); returns how many."""
    removed = 0
    for m in list(model.modules()):
        if AUX in m._modules:
            del m._modules[AUX]
            removed += 1
    return removed


@contextlib.contextmanager
def dual_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """Twins added on entry, removed on exit (the model is plain again, even after an error)."""
    add_auxiliary_bn(model)
    try:
        yield model
    finally:
        remove_auxiliary_bn(model)


def _routed_forward(bn: _BatchNorm, clean: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward that splits (or diverts) a BatchNorm's input between itself and its twin."""
    twin = cast(nn.Module, bn._modules[AUX])
    plain = type(bn).forward

    def forward(inp: torch.Tensor) -> torch.Tensor:
        k = 0 if clean is None else min(max(int(clean), 0), len(inp))
        if k == 0:
            return twin(inp)
        if k == len(inp):
            return plain(bn, inp)
        return torch.cat([plain(bn, inp[:k]), twin(inp[k:])])

    return forward


@contextlib.contextmanager
def route(model: nn.Module, clean: int | None = None) -> Iterator[nn.Module]:
    """Inside, every BatchNorm sends its input through its twin (``clean=None``), or the first
    ``clean`` samples of each batch through itself and the rest through the twin."""
    if not has_auxiliary_bn(model):
        raise ValueError("the model has no auxiliary BatchNorms: add them first (add_auxiliary_bn / dual_batchnorm)")
    bns = main_batchnorms(model)
    try:
        for bn in bns:
            bn.forward = _routed_forward(bn, clean)  # type: ignore[method-assign, assignment]
        yield model
    finally:
        for bn in bns:
            if "forward" in bn.__dict__:
                del bn.forward


def save_plain(model: nn.Module, run_dir: str | Path) -> None:
    """Rewrite the run's model file with ``model`` (twins already removed), keeping its metadata."""
    from ..storage import read_model_metadata, save_model

    meta = read_model_metadata(run_dir)
    keep = {k: v for k, v in meta.items()
            if k not in ("format", "format_version", "architecture", "weights", "tensors", "environment")}
    save_model(model, run_dir, **keep)


class AdvProp:
    """AdvProp objective: CE(clean through the main BatchNorms) + CE(PGD through the twins).

    The model needs its twins before the optimiser is built: ``prepare(model)`` (what
    ``robustlab train`` does) or :func:`dual_batchnorm` around :func:`~robustlab.training.train`;
    ``finish(model)`` drops them."""

    name = "advprop"

    def __init__(self, eps: float = 0.1, norm: str = "linf", steps: int = 5, rel_step_size: float = 0.25,
                 random_start: bool = True) -> None:
        self.threat = ThreatModel(canonical_norm(norm), eps)
        self.attack = PGD(self.threat, steps=steps, rel_step_size=rel_step_size, random_start=random_start,
                          track_best=False)
        self._options = {"eps": self.threat.eps, "norm": self.threat.norm, "steps": steps,
                         "rel_step_size": rel_step_size, "random_start": random_start}

    def config(self) -> dict[str, Any]:
        """The name and options, as recorded in checkpoints."""
        return {"name": self.name, **self._options}

    def prepare(self, model: nn.Module) -> None:
        """Add the twins (before the optimiser is built, so it trains them too)."""
        add_auxiliary_bn(unwrap(model))

    def finish(self, model: nn.Module, run_dir: str | Path | None = None) -> None:
        """Drop the twins; with ``run_dir``, rewrite its model file as the plain model."""
        remove_auxiliary_bn(unwrap(model))
        if run_dir is not None:
            save_plain(unwrap(model), run_dir)

    def craft(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """PGD examples crafted through the twins (eval mode: their running statistics)."""
        inner = unwrap(model)
        with route(inner, None):
            return self.attack(inner, x, y)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        inner = unwrap(model)
        if not has_auxiliary_bn(inner):
            raise ValueError("advprop: the model has no auxiliary BatchNorms; add them before the optimiser is built "
                             "(AdvProp.prepare(model), or train inside robustlab.training.advprop.dual_batchnorm(model))")
        x_adv = self.craft(model, x, y)
        with route(inner, len(x)):
            logits = model(torch.cat([x, x_adv]))
        lc, la = logits[: len(x)], logits[len(x) :]
        loss_c, loss_a = F.cross_entropy(lc, y), F.cross_entropy(la, y)
        return loss_c + loss_a, {"loss": (loss_c + loss_a).detach(), "clean_loss": loss_c.detach(),
                                 "adv_loss": loss_a.detach(), "acc": (lc.detach().argmax(1) == y).float().mean(),
                                 "adv_acc": (la.detach().argmax(1) == y).float().mean()}
