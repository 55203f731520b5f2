"""Decision regions around one input: the class a model predicts on a plane through the input.

The plane is spanned by the loss-gradient direction ``g`` (its sign for an L-inf picture, the
gradient scaled to unit L2 norm for an L2 one) and a random direction ``r`` orthogonalised
against ``g`` and scaled to the same L2 norm. Each grid point ``x + a*g + b*r`` is clamped to the
input bounds before it is classified, so near the edges of the grid some points coincide with
the clamped plane rather than the plane itself. The map shows how far the input sits from a
decision boundary along the attack's direction compared with a random one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._torch import check_float, check_int, model_guard
from ..validation import check_images

DIRECTIONS = ("sign", "l2")


@dataclass
class DecisionRegions:
    """The predicted class on the grid: ``pred[i, j]`` at ``a = coords[i]`` (along ``direction_a``)
    and ``b = coords[j]`` (along ``direction_b``); ``coords[grid // 2] == 0`` exactly."""

    pred: torch.Tensor  # (grid, grid) int64
    coords: torch.Tensor  # (grid,)
    direction_a: torch.Tensor  # (C, H, W): the gradient direction
    direction_b: torch.Tensor  # (C, H, W): the random orthogonal direction, same L2 norm
    label: int  # the class whose loss gave the gradient
    meta: dict[str, Any] = field(default_factory=dict)


def plane_point(x: torch.Tensor, direction_a: torch.Tensor, direction_b: torch.Tensor, a: torch.Tensor,
                b: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """The clamped grid points ``clamp(x + a*g + b*r, bounds)`` for vectors ``a``, ``b`` of equal
    length (N,): a batch (N, C, H, W)."""
    shape = (-1,) + (1,) * x.dim()
    pts = x.unsqueeze(0) + a.view(shape) * direction_a + b.view(shape) * direction_b
    return pts.clamp(*bounds)


def _directions(model: nn.Module, x0: torch.Tensor, label: int, direction: str,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``g`` (sign or unit-L2 gradient of the cross-entropy for ``label``), ``r`` (random, orthogonal
    to ``g``, same L2 norm), and whether the gradient was zero (then ``g`` is random too)."""
    xg = x0.unsqueeze(0).clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(xg), torch.tensor([label], device=x0.device))
        (grad,) = torch.autograd.grad(loss, xg)
    grad = grad[0]
    zero = bool((grad == 0).all())
    if zero:
        grad = torch.randn(x0.shape, generator=gen).to(x0)
    g = grad.sign() if direction == "sign" else grad / grad.norm()
    r = torch.randn(x0.shape, generator=gen).to(x0)
    r = r - (r * g).sum() / (g * g).sum() * g
    r = r * (g.norm() / r.norm().clamp_min(1e-12))
    return g, r, zero


def decision_regions(model: nn.Module, x: torch.Tensor, y: int | None = None, *, radius: float, grid: int = 41,
                     direction: str = "sign", bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0,
                     batch_size: int = 512) -> DecisionRegions:
    """The model's predicted class on the ``grid`` x ``grid`` plane ``x + a*g + b*r`` with
    ``a, b`` in ``[-radius, radius]`` (see the module docstring), clamped to ``bounds``.

    ``x``: one image (C, H, W) or (1, C, H, W) inside ``bounds``; ``y``: the class whose loss
    gives the gradient (default: the model's prediction for ``x``); ``direction``: ``"sign"``
    (``a`` is an L-inf distance) or ``"l2"`` (``a`` is an L2 distance). The model is left as
    found (:func:`robustlab.attacks.model_guard`), the caller's ``x`` is not written to."""
    grid = check_int("grid", grid, 3)
    if grid % 2 == 0:
        raise ValueError(f"grid must be odd (the input at the centre), got {grid}")
    radius = check_float("radius", radius, 0.0, strict=True)
    batch_size = check_int("batch_size", batch_size, 1)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    lo, hi = (float(v) for v in bounds)
    if not lo < hi:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        x = x.unsqueeze(0)
    x0 = check_images(x, name="x")
    if x0.shape[0] != 1 or x0.dim() != 4:
        raise ValueError(f"x must be one image (C, H, W) or (1, C, H, W), got shape {tuple(x0.shape)}")
    if float(x0.min()) < lo - 1e-6 or float(x0.max()) > hi + 1e-6:
        raise ValueError(f"x has values outside the bounds [{lo:g}, {hi:g}]")
    x0 = x0[0].clone()
    gen = torch.Generator().manual_seed(int(seed))
    with model_guard(model, eval_mode=True):
        with torch.no_grad():
            centre_pred = int(model(x0.unsqueeze(0)).argmax(1))
        label = centre_pred if y is None else int(y)
        g, r, zero = _directions(model, x0, label, direction, gen)
        half = grid // 2
        coords = (radius * torch.arange(-half, half + 1, dtype=torch.float64) / half).to(x0.dtype)
        a = coords.to(x0.device).view(-1, 1).expand(grid, grid).reshape(-1)
        b = coords.to(x0.device).view(1, -1).expand(grid, grid).reshape(-1)
        preds = []
        with torch.no_grad():
            for i in range(0, len(a), batch_size):
                pts = plane_point(x0, g, r, a[i : i + batch_size], b[i : i + batch_size], (lo, hi))
                preds.append(model(pts).argmax(1))
    pred = torch.cat(preds).view(grid, grid).cpu()
    meta = {
        "grid": grid, "radius": radius, "direction": direction, "bounds": [lo, hi], "seed": int(seed),
        "direction_a": "sign of the input gradient of the loss" if direction == "sign" else "input gradient scaled to unit L2 norm",
        "direction_b": "random direction orthogonal to a, same L2 norm",
        "clamped_to_bounds": True, "zero_gradient": zero, "centre_prediction": centre_pred,
        "classes_seen": sorted(int(c) for c in pred.unique()),
    }
    return DecisionRegions(pred=pred, coords=coords.cpu(), direction_a=g.detach().cpu(), direction_b=r.detach().cpu(),
                           label=label, meta=meta)


__all__ = ["DIRECTIONS", "DecisionRegions", "decision_regions", "plane_point"]
