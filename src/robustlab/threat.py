"""The threat model: which perturbations an adversary may apply.

One immutable value object (norm, eps, bounds) used by every attack, every defence and every
evaluation, so that "robust at eps 0.1" always means the same set of inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ._torch import per_sample

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")

_NORM_ALIASES = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "2": "l2"}


def canonical_norm(norm: str) -> Norm:
    """Return 'linf' or 'l2' for the accepted spellings; ValueError otherwise."""
    key = str(norm).strip().lower()
    if key not in _NORM_ALIASES:
        raise ValueError(f"unknown norm {norm!r}: expected one of {', '.join(NORMS)}")
    return _NORM_ALIASES[key]  # type: ignore[return-value]


def _flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


@dataclass(frozen=True)
class ThreatModel:
    """Perturbations ``delta`` with ``||delta||_norm <= eps`` and ``x + delta`` inside ``bounds``.

    >>> ThreatModel("linf", 0.1)                       # bounds default to (0.0, 1.0)
    ThreatModel(norm='linf', eps=0.1, bounds=(0.0, 1.0))
    """

    norm: Norm
    eps: float
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        try:
            eps = float(self.eps)
        except (TypeError, ValueError):
            raise ValueError(f"eps must be a number, got {self.eps!r}") from None
        if not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        object.__setattr__(self, "eps", eps)
        try:
            lo, hi = (float(b) for b in self.bounds)
        except (TypeError, ValueError):
            raise ValueError(f"bounds must be a pair (low, high), got {self.bounds!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"bounds must be finite with low < high, got {self.bounds!r}")
        object.__setattr__(self, "bounds", (lo, hi))

    def with_eps(self, eps: float) -> ThreatModel:
        """The same threat model at another budget (curves over eps)."""
        return ThreatModel(self.norm, eps, self.bounds)

    # --- geometry -------------------------------------------------------------------------
    def magnitude(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample magnitude ``||delta||`` in this threat model's norm, shape (N,)."""
        return _flat_norm(delta, self.norm)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample distance ``||a - b||`` in this threat model's norm, shape (N,)."""
        return self.magnitude(a - b)

    def clip_bounds(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(self.bounds[0], self.bounds[1])

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float | None = None) -> torch.Tensor:
        """Project ``x_adv`` onto the eps-ball around ``x`` intersected with the bounds.

        For Linf the box intersection is exact; for L2 we scale into the ball, then clip to the
        bounds (clipping moves every coordinate toward ``x``, so the result stays in the ball).
        """
        eps = self.eps if eps is None else eps
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-eps, eps)
        else:
            n = _flat_norm(delta, "l2")
            factor = torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
            delta = delta * per_sample(factor, delta)
        return self.clip_bounds(x + delta)

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A point drawn uniformly from the eps-ball around ``x``, then clipped to the bounds."""
        if self.norm == "linf":
            u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            delta = (2 * u - 1) * self.eps
        else:
            # Uniform in the L2 ball: Gaussian direction, radius ~ eps * U^(1/d).
            g = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            d = x[0].numel()
            direction = g / per_sample(_flat_norm(g, "l2").clamp_min(1e-12), g)
            r = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device) ** (1.0 / d)
            delta = direction * per_sample(r * self.eps, g)
        return self.clip_bounds(x + delta)

    def steepest_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The unit-norm direction maximising a linear gain: sign(g) for Linf, g/||g||_2 for L2."""
        if self.norm == "linf":
            return grad.sign()
        n = _flat_norm(grad, "l2").clamp_min(1e-12)
        return grad / per_sample(n, grad)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, tol: float = 1e-5) -> torch.Tensor:
        """Per-sample bool: ``x_adv`` lies in the ball (up to ``tol``) and inside the bounds."""
        in_ball = self.distance(x_adv, x) <= self.eps + tol
        flat = x_adv.flatten(1)
        in_bounds = (flat >= self.bounds[0] - tol).all(1) & (flat <= self.bounds[1] + tol).all(1)
        return in_ball & in_bounds

    def to_dict(self) -> dict:
        return {"norm": self.norm, "eps": self.eps, "bounds": list(self.bounds)}

    @classmethod
    def from_dict(cls, d: dict) -> ThreatModel:
        return cls(d["norm"], d["eps"], tuple(d.get("bounds", (0.0, 1.0))))  # type: ignore[arg-type]
