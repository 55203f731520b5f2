"""Momentum iterative FGSM (Dong et al. 2018, "Boosting adversarial attacks with momentum")."""

from __future__ import annotations

import torch

from .._torch import check_float, per_sample
from ..threat import ThreatModel
from .losses import LossFn
from .pgd import PGD


class MIM(PGD):
    """Momentum iterative method: ``g <- decay * g + grad / ||grad||_1`` (per sample), then a
    step of ``step_size`` along ``steepest_direction(g)`` (sign for Linf, ``g/||g||_2`` for L2)
    and a projection onto the ball and bounds.

    Defaults follow the paper: 10 steps of ``eps / steps`` (``rel_step_size = 1 / steps``),
    ``decay = 1.0``, no random start. Restarts, early stop and best-point tracking behave as in
    :class:`~robustlab.attacks.pgd.PGD`; the momentum is reset at every restart. ``eot=N``
    averages every gradient over N passes (randomised models).
    """

    norms = ("linf", "l2")  # under L1 its steepest step moves one pixel: use PGD (SLIDE) or APGD-L1

    name = "mim"
    _default_rel = 1.0

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 10,
        step_size: float | None = None,
        rel_step_size: float | None = None,
        decay: float = 1.0,
        random_start: bool = False,
        restarts: int = 1,
        loss: str | LossFn = "ce", early_stop: bool = False, eval_mode: bool = True, seed: int | None = None, eot: int = 1,
    ) -> None:
        self.decay = check_float("decay", decay, 0.0)
        super().__init__(
            threat,
            steps=steps,
            step_size=step_size,
            rel_step_size=rel_step_size,
            random_start=random_start,
            restarts=restarts,
            loss=loss,
            early_stop=early_stop,
            eval_mode=eval_mode,
            seed=seed,
            eot=eot,
        )

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", decay={self.decay:g})"

    def _init_state(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def _direction(
        self, grad: torch.Tensor, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert state is not None
        l1 = grad.flatten(1).abs().sum(dim=1).clamp_min(1e-12)
        state = self.decay * state + grad / per_sample(l1, grad)
        return self.threat.steepest_direction(state), state
