"""Named attack suites for ``evaluate``: quick, standard, autoattack, full.

A suite is a list of attacks whose per-sample worst case is the reported robust accuracy. The
suites follow AutoAttack (Croce & Hein 2020): a step-size-free white-box attack on CE, a targeted
white-box attack on the scale-invariant DLR loss, and a score-based black-box attack that no
gradient masking can stop.

==========  =================================================================================
quick       APGD-CE, 20 steps (a fast first look; not a robustness claim)
standard    APGD-CE 100 steps; APGD-T (targeted DLR, top-3 target classes) 100 steps;
            Square 1000 queries (p_init 0.8, schedule rescaled to the budget)
autoattack  AutoAttack's ``version='standard'`` budgets (Croce & Hein 2020; the values of
            ``autoattack.py``'s ``set_version('standard')`` for Linf and L2):
            APGD-CE 100 steps, 1 restart (rho 0.75); APGD-T (targeted DLR, top-9 target
            classes) 100 steps, 1 restart per target; FAB-T (top-9 target classes) 100 steps,
            1 restart per target (alpha_max 0.1, eta 1.05, beta 0.9, no final search); Square
            5000 queries, 1 restart, p_init 0.8, schedule on absolute iterations
            (``resc_schedule=False``), margin loss
full        APGD-CE 100 steps x 5 restarts; APGD-DLR 100 steps x 5 restarts; APGD-T (targeted
            DLR, top-9 target classes) 100 steps; Square 5000 queries; NES 50 steps x 50 samples
==========  =================================================================================

``standard`` is the fast default; against ``autoattack`` it has no FAB-T, 3 instead of 9 APGD-T
target classes and 1,000 instead of 5,000 Square queries (with the p schedule stretched to 1,000
queries), so on a robust model it costs about a fifth and may report a slightly higher robust
accuracy. Quote ``autoattack`` when comparing with a leaderboard.

Every suite cascades in ``evaluate``: each attack runs only on the points still robust, and a
point counts as robust only if it survives all of them (the per-sample worst case). Where
robustlab differs from the reference code, by design: one seed per attack (AutoAttack reseeds each
attack with the same seed); Square draws window positions per sample (the reference per batch)
and its 5,000 queries include the starting point; the APGD and FAB notes are in their modules.

``autoattack-rand`` (for randomised models; AutoAttack's ``version='rand'``): APGD-CE and APGD-DLR,
100 steps, 1 restart each, every gradient, loss and success decision averaged over 20 forward
passes (EOT, ``eot=20``). The EOT draw count is not scaled.

No suite covers L0 (pixel budgets): evaluate it with the Sparse-RS attack (``--attacks sparse-rs``).

``scale`` multiplies every step and query budget (never below 1), so tests and smoke runs can use
the same composition at a fraction of the cost: ``build_suite("standard", t, scale=0.1)``.
Restart and target-class counts are not scaled. Every attack has a fixed seed, so a suite is
reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..attacks.apgd import APGD
from ..attacks.base import Attack
from ..attacks.fab import FAB
from ..attacks.nes import NES
from ..attacks.square import Square
from ..threat import ThreatModel


def _n(base: int, scale: float) -> int:
    return max(1, int(round(base * scale)))


def _quick(t: ThreatModel, scale: float = 1.0) -> list[Attack]:
    return [APGD(t, steps=_n(20, scale), loss="ce", seed=0)]


def _standard(t: ThreatModel, scale: float = 1.0) -> list[Attack]:
    return [
        APGD(t, steps=_n(100, scale), loss="ce", seed=0),
        APGD(t, steps=_n(100, scale), loss="dlr", targeted_classes=3, seed=1),
        Square(t, queries=_n(1000, scale), p_init=0.8, seed=2),
    ]


def _autoattack(t: ThreatModel, scale: float = 1.0) -> list[Attack]:
    return [
        APGD(t, steps=_n(100, scale), restarts=1, loss="ce", rho=0.75, seed=0),
        APGD(t, steps=_n(100, scale), restarts=1, loss="dlr", targeted_classes=9, rho=0.75, seed=1),
        FAB(t, steps=_n(100, scale), restarts=1, targeted_classes=9, alpha_max=0.1, eta=1.05, beta=0.9,
            final_search=0, seed=2),
        Square(t, queries=_n(5000, scale), p_init=0.8, restarts=1, loss="margin", rescale_schedule=False, seed=3),
    ]


def _full(t: ThreatModel, scale: float = 1.0) -> list[Attack]:
    return [
        APGD(t, steps=_n(100, scale), restarts=5, loss="ce", seed=0),
        APGD(t, steps=_n(100, scale), restarts=5, loss="dlr", seed=1),
        APGD(t, steps=_n(100, scale), loss="dlr", targeted_classes=9, seed=2),
        Square(t, queries=_n(5000, scale), p_init=0.8, seed=3),
        NES(t, steps=_n(50, scale), samples=50, seed=4),
    ]


SUITES: dict[str, Callable[..., list[Attack]]] = {
    "quick": _quick,
    "standard": _standard,
    "autoattack": _autoattack,
    "full": _full,
}


def _autoattack_rand(t: ThreatModel, scale: float = 1.0) -> list[Attack]:
    return [
        APGD(t, steps=_n(100, scale), loss="ce", eot=20, seed=0),
        APGD(t, steps=_n(100, scale), loss="dlr", eot=20, seed=1),
    ]


SUITES["autoattack-rand"] = _autoattack_rand


def build_suite(name: str, threat: ThreatModel, scale: float = 1.0) -> list[Attack]:
    """The attacks of a named suite at ``threat``; ``scale`` multiplies steps and queries."""
    key = str(name).lower()
    if key not in SUITES:
        raise ValueError(f"unknown suite {name!r}: expected one of {', '.join(SUITES)}")
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a number > 0, got {scale!r}") from None
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if threat.norm == "l0":
        raise ValueError(f"the {key!r} suite has no L0 attack: evaluate the l0 threat model with --attacks sparse-rs "
                         "(Python: attacks=[SparseRS(threat)])")
    return SUITES[key](threat, s)
