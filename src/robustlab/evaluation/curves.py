"""Robust accuracy as a function of the budget (eps) and of the attack's effort (iterations).

Both are standard evidence in a robustness claim: accuracy must fall with eps (to ~0 for a large
enough one) and must have converged in the number of iterations (a curve still falling at the
reported step count means the number is an overestimate). Points are plain dicts, ready for
``metrics.json`` (``eps_curve`` / ``iterations_curve``) and :mod:`robustlab.report`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..attacks.apgd import APGD
from ..attacks.base import Attack
from ..attacks.pgd import PGD
from .evaluate import evaluate
from ..threat import ThreatModel

AttackFactory = Callable[[ThreatModel], Sequence[Attack]]


def _attacks_at(spec: str | AttackFactory, threat: ThreatModel, scale: float) -> list[Attack]:
    if isinstance(spec, str):
        from .suites import build_suite

        return build_suite(spec, threat, scale=scale)
    if not callable(spec):
        raise ValueError("attacks must be a suite name or a callable threat -> list of attacks")
    return list(spec(threat))


def eps_curve(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    eps_list: Sequence[float],
    attacks: str | AttackFactory = "quick",
    scale: float = 1.0,
    **evaluate_kwargs: Any,
) -> list[dict[str, Any]]:
    """Robust accuracy at each eps of ``eps_list`` (norm and bounds from ``threat``).

    ``attacks`` is a suite name (built with ``scale``) or a factory ``threat -> [Attack, ...]``
    called once per eps. Extra keyword arguments go to :func:`robustlab.evaluation.evaluate`.
    Returns ``[{"eps", "robust_accuracy", "clean_accuracy", "per_attack", "seconds"}, ...]`` in
    the order of ``eps_list``.
    """
    if len(eps_list) == 0:
        raise ValueError("eps_list is empty")
    out = []
    for eps in eps_list:
        t = threat.with_eps(float(eps))
        t0 = time.perf_counter()
        res = evaluate(model, x, y, t, _attacks_at(attacks, t, scale), **evaluate_kwargs)
        out.append(
            {
                "eps": t.eps,
                "robust_accuracy": res.robust_accuracy,
                "clean_accuracy": res.clean_accuracy,
                "per_attack": res.per_attack,
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
    return out


def iterations_curve(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    steps_list: Sequence[int],
    attack: str = "apgd",
    loss: str = "ce",
    restarts: int = 1,
    seed: int = 0,
    **evaluate_kwargs: Any,
) -> list[dict[str, Any]]:
    """Robust accuracy of one attack (``"apgd"`` or ``"pgd"``, default step sizes) at each step
    count of ``steps_list``, each run from scratch with the same seed.

    Returns ``[{"steps", "robust_accuracy", "clean_accuracy", "per_attack", "seconds"}, ...]``.
    """
    kind = str(attack).lower()
    if kind not in ("apgd", "pgd"):
        raise ValueError(f"attack must be 'apgd' or 'pgd', got {attack!r}")
    if len(steps_list) == 0:
        raise ValueError("steps_list is empty")
    out = []
    for steps in steps_list:
        if kind == "apgd":
            a: Attack = APGD(threat, steps=int(steps), restarts=restarts, loss=loss, seed=seed)
        else:
            a = PGD(threat, steps=int(steps), restarts=restarts, loss=loss, seed=seed)
        t0 = time.perf_counter()
        res = evaluate(model, x, y, threat, [a], **evaluate_kwargs)
        out.append(
            {
                "steps": int(steps),
                "robust_accuracy": res.robust_accuracy,
                "clean_accuracy": res.clean_accuracy,
                "per_attack": res.per_attack,
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
    return out


def iterations_metrics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps_list: Sequence[int],
    attack: str = "apgd", loss: str = "ce", **kwargs: Any,
) -> dict[str, Any]:
    """The keys of a run's metrics.json for :func:`iterations_curve`: the curve and which attack
    at which budget made it."""
    curve = iterations_curve(model, x, y, threat, steps_list, attack=attack, loss=loss, **kwargs)
    return {"iterations_curve": curve, "iterations_attack": f"{attack}-{loss}, {threat.norm} eps={threat.eps:g}"}


__all__ = ["eps_curve", "iterations_curve", "iterations_metrics"]
