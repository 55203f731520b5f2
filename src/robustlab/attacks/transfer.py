"""Transfer attack: craft adversarial examples on a surrogate model, score them on the target.

The target model is only queried by the base class, once, to label the inputs (when ``y`` is not
given) and to score the final examples; no gradient of the target is ever taken. A transfer
attack that beats white-box attacks on the target is a classic sign of gradient masking.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .._rng import SampleRNG
from ..threat import ThreatModel
from .base import Attack, OptGen, OptTensor
from .pgd import PGD


class Transfer(Attack):
    """Adversarial examples crafted on ``surrogate`` with ``attack`` (default: 20-step PGD-CE with
    a random start), returned for the target model.

    Args:
        threat: the perturbation set (the inner attack must use the same one).
        surrogate: the model the examples are crafted on (same device/dtype as the data).
        attack: any white-box :class:`Attack`; its own seed and options are used.
        seed: seed of the default PGD (ignored when ``attack`` is given).
        eval_mode: see :class:`~robustlab.attacks.base.Attack` (applies to the target model; the
            inner attack guards the surrogate with its own setting).
    """

    per_sample_rng = True

    name = "transfer"
    uses_gradients = False  # with respect to the target model
    norms = ("linf", "l2", "l1")  # the inner attack checks its own support

    def __init__(
        self,
        threat: ThreatModel,
        surrogate: nn.Module,
        attack: Attack | None = None,
        seed: int | None = 0, eval_mode: bool = True,
    ) -> None:
        super().__init__(threat, eval_mode=eval_mode, seed=seed)
        if not isinstance(surrogate, nn.Module):
            raise ValueError(f"surrogate must be a torch.nn.Module, got {type(surrogate).__name__}")
        if attack is None:
            attack = PGD(threat, steps=20, seed=seed)
        if not isinstance(attack, Attack):
            raise ValueError(f"attack must be a robustlab Attack, got {type(attack).__name__}")
        if attack.threat != threat:
            raise ValueError(f"the inner attack uses threat {attack.threat}, the transfer attack {threat}")
        self.surrogate = surrogate
        self.attack = attack

    def __repr__(self) -> str:
        return f"{type(self).__name__}(norm={self.threat.norm}, eps={self.threat.eps:g}, attack={self.attack!r})"

    @classmethod
    def from_checkpoint(cls, threat: ThreatModel, path: str | os.PathLike, map_location: str | torch.device = "cpu", **kw: Any) -> Transfer:
        """A transfer attack whose surrogate is loaded with :func:`robustlab.checkpoint.load_model`."""
        from ..storage import load_model

        return cls(threat, load_model(path, map_location=map_location), **kw)

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: OptTensor, generator: OptGen) -> torch.Tensor:
        ids = generator.ids if isinstance(generator, SampleRNG) else None  # the crafting attack draws per sample too
        return self.attack.run(self.surrogate, x, y, target=target, sample_ids=ids).x_adv
