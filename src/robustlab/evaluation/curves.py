"""Robust accuracy as a function of the budget (eps) and of the attack's effort (iterations).

Both are standard evidence in a robustness claim: accuracy must fall with eps (to ~0 for a large
enough one) and must have converged in the number of iterations (a curve still falling at the
reported step count means the number is an overestimate). Points are plain dicts, ready for
``metrics.json`` (``eps_curve`` / ``iterations_curve``) and :mod:`robustlab.report`.

The iterations curve runs one named fixed-budget gradient attack (:func:`curve_attacks`);
:func:`iterations_attack_for` picks it for an evaluation: the one such attack among the
evaluation's attacks, APGD for a suite, and a ValueError when there are several or none (the
curve never silently measures another attack than the evaluation's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..attacks import ATTACKS, attack_options, build_attack
from ..attacks.base import Attack
from ..registry import lookup
from ..threat import ThreatModel
from .evaluate import evaluate

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


def curve_attacks() -> list[str]:
    """Registered attacks an iterations curve can run: gradient attacks with a ``steps`` budget
    that are not minimum-norm searches (today apgd, mim, pgd)."""
    return sorted(
        name
        for name, cls in ATTACKS.items()
        if cls.uses_gradients and not cls.minimum_norm and cls.eps_ball and "steps" in (attack_options(cls) or [])
    )


def iterations_attack_for(attacks: Sequence[str] | None) -> str:
    """The attack of the iterations curve for an evaluation with ``attacks`` (registered names):
    the one curve-capable attack among them (see :func:`curve_attacks`), or ``"apgd"`` (APGD-CE)
    when ``attacks`` is None (a suite). ValueError when they hold several or none."""
    if attacks is None:
        return "apgd"
    keys = [lookup(ATTACKS, a, "attack")[0] for a in attacks if str(a).strip()]
    iterative = sorted(set(keys) & set(curve_attacks()))
    if len(iterative) == 1:
        return iterative[0]
    if iterative:
        raise ValueError(
            f"the iterations curve runs one attack, but the attacks hold {len(iterative)} iterative ones "
            f"({', '.join(iterative)}): evaluate the curve with one of them"
        )
    raise ValueError(
        f"the iterations curve needs an iterative attack ({', '.join(curve_attacks())}) among the attacks, "
        f"got {', '.join(keys) or 'none'}"
    )


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
    options: dict[str, Any] | None = None,
    **evaluate_kwargs: Any,
) -> list[dict[str, Any]]:
    """Robust accuracy of one attack (a name of :func:`curve_attacks`, e.g. ``"apgd"``, ``"pgd"``,
    ``"mim"``; default step sizes) at each step count of ``steps_list``, each run from scratch
    with the same seed. ``options``: more options for the attack (e.g. ``{"eot": 20}``).

    Returns ``[{"steps", "robust_accuracy", "clean_accuracy", "per_attack", "seconds"}, ...]``;
    ``per_attack`` names the attack.
    """
    kind = str(attack).strip().lower()
    if kind not in curve_attacks():
        raise ValueError(f"attack must be one of {', '.join(curve_attacks())} for an iterations curve, got {attack!r}")
    if len(steps_list) == 0:
        raise ValueError("steps_list is empty")
    allowed = attack_options(ATTACKS[kind]) or []
    base = {k: v for k, v in (("restarts", restarts), ("loss", loss), ("seed", seed)) if k in allowed}
    base.update(options or {})
    out = []
    for steps in steps_list:
        a: Attack = build_attack(kind, threat, steps=int(steps), **base)
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
    at which budget made it (``"iterations_attack"``, e.g. ``"pgd-ce, linf eps=0.1"``; EOT draws
    appended when ``options`` sets ``eot``). Pick ``attack`` with :func:`iterations_attack_for`."""
    curve = iterations_curve(model, x, y, threat, steps_list, attack=attack, loss=loss, **kwargs)
    label = f"{str(attack).strip().lower()}-{loss}, {threat.norm} eps={threat.eps:g}"
    eot = (kwargs.get("options") or {}).get("eot", 1)
    if eot != 1:
        label += f", eot={eot}"
    return {"iterations_curve": curve, "iterations_attack": label}


__all__ = ["curve_attacks", "eps_curve", "iterations_attack_for", "iterations_curve", "iterations_metrics"]
