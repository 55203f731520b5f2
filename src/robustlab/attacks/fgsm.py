"""Single-step gradient attacks: FGSM (Goodfellow et al. 2015) and the fast gradient value (FGV).

Both spend exactly one forward+backward pass on the input gradient of the attack loss.
"""

from __future__ import annotations

import torch
from torch import nn

from .._torch import per_sample
from ..threat import ThreatModel
from .base import Attack, OptGen, OptTensor
from .losses import LossFn


class FGSM(Attack):
    """Fast gradient sign method: ``x + eps * steepest_direction(grad)``.

    For an Linf threat the direction is ``sign(grad)``; for L2 it is ``grad / ||grad||_2``
    (the "fast gradient method"), so the perturbation lands on the sphere of radius eps (before
    clipping to the bounds).

    Untargeted, the loss (CE by default) of the true label is ascended. Targeted (``target=``
    given), :func:`~robustlab.attacks.losses.cross_entropy` returns ``-CE(target)``, so the step
    is ``x - eps * sign(grad_x CE(target))``: one step toward the target class.

    ``eot=N`` averages the gradient over N forward+backward passes (randomised models; see
    :class:`~robustlab.attacks.base.Attack`).
    """

    per_sample_rng = True

    name = "fgsm"

    def __init__(
        self,
        threat: ThreatModel,
        loss: str | LossFn = "ce",
        *,
        eval_mode: bool = True, seed: int | None = None, eot: int = 1,
    ) -> None:
        super().__init__(threat, loss=loss, eval_mode=eval_mode, seed=seed, eot=eot)

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: OptTensor, generator: OptGen) -> torch.Tensor:
        _, grad, _ = self._loss_and_grad(model, x, y, target)
        return self.threat.project(x + self._step(grad), x)

    def _step(self, grad: torch.Tensor) -> torch.Tensor:
        """The single step taken from ``x``: eps along the steepest direction."""
        return self.threat.eps * self.threat.steepest_direction(grad)


class FGV(FGSM):
    """Fast gradient value (Rozsa et al. 2016): step along the raw gradient, rescaled per sample.

    Linf threat: ``x + eps * grad / max|grad|``, i.e. the gradient normalised by its own Linf
    norm, so the largest coordinate moves by exactly eps and the others proportionally less
    (unlike FGSM, which moves every coordinate by eps).

    L2 threat: the gradient is normalised by its L2 norm instead, ``x + eps * grad / ||grad||_2``
    (a scaled gradient already *is* the L2 steepest direction, so this coincides with FGSM-L2).

    The result is clipped to the bounds. A zero gradient gives ``x`` unchanged.
    """

    name = "fgv"

    def _step(self, grad: torch.Tensor) -> torch.Tensor:
        """eps times the gradient over its own norm (the threat's norm)."""
        scale = per_sample(self.threat.magnitude(grad).clamp_min(1e-12), grad)
        return self.threat.eps * grad / scale
