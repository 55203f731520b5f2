"""Random noise on the boundary of the threat ball: the sanity baseline every attack must beat."""

from __future__ import annotations

import torch
from torch import nn

from .. import _rng
from .._torch import per_sample
from ..threat import ThreatModel
from .base import Attack, OptGen, OptTensor


class Noise(Attack):
    """Random perturbation of full size: ``x + eps * s`` with ``s`` uniform in ``{-1, +1}^D`` for
    Linf, or a uniformly random direction (normalised Gaussian) scaled to length eps for L2;
    then clipped to the bounds. Uses no gradients (and no labels); the attack's generator makes
    it reproducible with ``seed=``.
    """

    per_sample_rng = True

    name = "noise"
    uses_gradients = False

    def __init__(self, threat: ThreatModel, *, eval_mode: bool = True, seed: int | None = None) -> None:
        super().__init__(threat, eval_mode=eval_mode, seed=seed)

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: OptTensor, generator: OptGen) -> torch.Tensor:
        eps = self.threat.eps
        if self.threat.norm == "linf":
            bits = _rng.randint(generator, 0, 2, x.shape, device=x.device)
            delta = (bits.to(x.dtype) * 2 - 1) * eps
        else:
            g = _rng.randn(generator, x.shape, dtype=x.dtype, device=x.device)
            norm = g.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
            delta = g * per_sample(eps / norm, g)
        return self.threat.project(x + delta, x)
