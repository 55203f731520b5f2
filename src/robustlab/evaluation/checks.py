"""Gradient-masking checks (Carlini et al. 2019, "On evaluating adversarial robustness", and the
flags of AutoAttack): cheap experiments whose failure means a reported robust accuracy is
probably an overestimate.

Every check returns a plain dict::

    {"name": str, "status": "PASS" | "WARN", "evidence": str, "values": {...JSON numbers...}}

=====================  =========================================================================
softmax-output         the model returns probabilities instead of logits (WARN: CE on
                       probabilities has flat gradients)
randomised             repeated forward passes of the same input in eval mode give different
                       logits (WARN: single-draw gradients mislead; evaluate with
                       ``--suite autoattack-rand`` or attacks with ``eot=20``) unless the
                       evaluation's gradient attacks already average over >= 10 draws
gradients              input gradients of CE at the clean points are zero or NaN for more than
                       ``tol`` of the correctly classified samples
eps-monotonic          robust accuracy does not grow with eps (more than ``tol``); PGD at 0.5x,
                       1x and 2x eps unless a curve is given
large-eps              PGD with a huge budget (Linf: max(4 eps, half the input range); L2:
                       max(4 eps, half the range x sqrt(dim))) drives accuracy to <= 10%
more-iterations        5x the PGD steps with 3 restarts breaks at most ``tol`` of the samples the
                       reference (the evaluation, or plain PGD) left robust
black-box              Square (and a transfer attack if a surrogate is given) breaks at most
                       ``tol`` of the samples the white-box attacks left robust
noise                  random noise at the same eps breaks at most ``tol`` of the samples the
                       white-box attacks left robust
=====================  =========================================================================

:func:`run_checks` runs them all; ``scale`` multiplies every step, query and draw count (so a
test can run a cheap version); :func:`format_checks` renders them with WARN lines marked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._torch import model_guard
from ..attacks.base import Attack
from ..attacks.noise import Noise
from ..attacks.pgd import PGD
from ..attacks.square import Square
from ..attacks.transfer import Transfer
from ..threat import ThreatModel
from ..validation import check_images, check_labels, check_logits, check_same_device
from .model_checks import (
    EOT_MIN,
    PASS,
    TOL,
    WARN,
    check_gradients,
    check_randomised,
    check_result,
    check_softmax_output,
    pct,
)
from .outcomes import EvaluationResult, run_attack

# Outcome names that do not come from gradient attacks (used when a result is given without the
# list of white-box attack names).
BLACKBOX_PREFIXES = ("square", "nes", "transfer", "noise")


def _n(base: int, scale: float) -> int:
    return max(1, int(round(base * scale)))


def _robust_under(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack,
    only: torch.Tensor | None = None,
    batch_size: int = 500,
) -> torch.Tensor:
    """Per-sample (CPU bool): correctly classified and not broken by ``attack``; samples outside
    ``only`` are reported robust-as-given (False where misclassified, True otherwise), i.e. the
    result is only meaningful inside ``only``."""
    attack.early_stop = True  # same accuracy, less work
    # run_attack leaves samples outside ``only`` at their clean correctness
    return run_attack(model, x, y, attack, batch_size, only=None if only is None else only.to(x.device)).robust


def _newly_broken(before: torch.Tensor, after: torch.Tensor, tol: float) -> tuple[int, float, bool]:
    """Of the samples robust in ``before``, how many ``after`` no longer counts robust, that number
    as a fraction of all samples, and whether the fraction is within ``tol``."""
    newly = int((before & ~after).sum())
    frac = newly / max(len(before), 1)
    return newly, frac, frac <= tol


def _pgd(threat: ThreatModel, steps: int, restarts: int = 1, seed: int = 0) -> PGD:
    return PGD(threat, steps=steps, restarts=restarts, loss="ce", seed=seed, early_stop=True)


def _big_eps(threat: ThreatModel, x: torch.Tensor) -> float:
    lo, hi = threat.bounds
    width = hi - lo
    if threat.norm == "linf":
        return min(max(4 * threat.eps, 0.5 * width), width)
    dim = x[0].numel()
    return min(max(4 * threat.eps, 0.5 * width * math.sqrt(dim)), width * math.sqrt(dim))


# --- individual checks ---------------------------------------------------------------------
#: EOT draws from which gradient attacks count as prepared for a randomised model.
def _eps_monotonic(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
    curve: Sequence[dict[str, Any]] | None,
    scale: float,
    tol: float,
    batch_size: int,
) -> tuple[dict[str, Any], torch.Tensor | None]:
    base_robust = None
    if curve:
        pts = sorted(((float(c["eps"]), float(c["robust_accuracy"])) for c in curve), key=lambda p: p[0])
        source = "the given curve"
    else:
        lo, hi = threat.bounds
        cap = (hi - lo) if threat.norm == "linf" else (hi - lo) * math.sqrt(x[0].numel())
        pts = []
        for mult in (0.5, 1.0, 2.0):
            eps = min(threat.eps * mult, cap)
            r = _robust_under(model, x, y, _pgd(threat.with_eps(eps), _n(40, scale)), batch_size=batch_size)
            if mult == 1.0:
                base_robust = r
            pts.append((eps, float(r.float().mean())))
        source = f"PGD-CE ({_n(40, scale)} steps)"
    rises = [(a, b) for a, b in zip(pts, pts[1:]) if b[1] > a[1] + tol]
    curve_txt = ", ".join(f"{e:g}: {pct(a)}" for e, a in pts)
    if rises:
        (e0, a0), (e1, a1) = rises[0]
        ev = f"robust accuracy rises with eps ({pct(a0)} at {e0:g} -> {pct(a1)} at {e1:g}) under {source}; curve {curve_txt}"
    else:
        ev = f"robust accuracy is non-increasing in eps under {source}: {curve_txt}"
    return (
        check_result("eps-monotonic", not rises, ev, eps=[p[0] for p in pts], robust_accuracy=[p[1] for p in pts]),
        base_robust,
    )


def check_eps_monotonic(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
    curve: Sequence[dict[str, Any]] | None = None,
    scale: float = 1.0, tol: float = TOL, batch_size: int = 500,
) -> dict[str, Any]:
    """WARN if robust accuracy grows with eps by more than ``tol`` (from ``curve``, a list of
    ``{"eps", "robust_accuracy"}``, or from PGD at 0.5x, 1x and 2x eps)."""
    return _eps_monotonic(model, x, y, threat, curve, scale, tol, batch_size)[0]


def check_large_eps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
    scale: float = 1.0,
    max_accuracy: float = 0.1,
    batch_size: int = 500,
) -> dict[str, Any]:
    """WARN if PGD with a very large budget leaves more than ``max_accuracy`` accuracy."""
    eps = _big_eps(threat, x)
    steps = _n(40, scale)
    r = _robust_under(model, x, y, _pgd(threat.with_eps(eps), steps, seed=1), batch_size=batch_size)
    acc = float(r.float().mean())
    ok = acc <= max_accuracy
    ev = f"PGD-CE ({steps} steps) at eps={eps:g} leaves {pct(acc)} accuracy"
    ev += "" if ok else f" (> {pct(max_accuracy)}): the attack cannot even win with an unbounded budget; gradients are likely masked"
    return check_result("large-eps", ok, ev, eps=eps, robust_accuracy=acc, threshold=max_accuracy)


def _more_iterations(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
    reference: torch.Tensor | None,
    reference_label: str,
    scale: float,
    tol: float,
    batch_size: int,
) -> tuple[dict[str, Any], torch.Tensor]:
    steps = _n(40, scale)
    if reference is None:
        reference = _robust_under(model, x, y, _pgd(threat, steps), batch_size=batch_size)
        reference_label = f"PGD-CE ({steps} steps)"
    reference = reference.cpu()
    strong_steps, restarts = 5 * steps, 3
    strong = _robust_under(model, x, y, _pgd(threat, strong_steps, restarts, seed=2), only=reference, batch_size=batch_size)
    strong = strong & reference
    newly, _, ok = _newly_broken(reference, strong, tol)
    ev = (
        f"PGD-CE with {strong_steps} steps x {restarts} restarts lowers robust accuracy from "
        f"{pct(float(reference.float().mean()))} ({reference_label}) to {pct(float(strong.float().mean()))}"
    )
    ev += "" if ok else f": {newly} more samples broken (> {pct(tol)}); the evaluation has not converged"
    values = {
        "reference_accuracy": float(reference.float().mean()),
        "stronger_accuracy": float(strong.float().mean()),
        "steps": strong_steps,
        "restarts": restarts,
        "newly_broken": newly,
    }
    return check_result("more-iterations", ok, ev, **values), strong


def check_more_iterations(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
    reference: torch.Tensor | None = None,
    scale: float = 1.0, tol: float = TOL, batch_size: int = 500,
) -> dict[str, Any]:
    """WARN if 5x the PGD steps with 3 restarts breaks more than ``tol`` of the samples that
    ``reference`` (per-sample robust bools; default: plain PGD) reports robust."""
    return _more_iterations(model, x, y, threat, reference, "the reference", scale, tol, batch_size)[0]


def _beyond_whitebox(
    name: str,
    label: str,
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
    attacks: Sequence[Attack],
    whitebox_robust: torch.Tensor | None,
    scale: float, tol: float, batch_size: int,
    **values: Any,
) -> dict[str, Any]:
    """The check ``name``: WARN if ``attacks`` break more than ``tol`` of the samples the white-box
    attacks left robust (``whitebox_robust``; None: plain PGD's). ``values`` join the result's."""
    if whitebox_robust is None:
        whitebox_robust = _default_whitebox(model, x, y, threat, scale, batch_size)
    wb = whitebox_robust.cpu()
    alive = wb.clone()
    for a in attacks:
        alive &= _robust_under(model, x, y, a, only=alive, batch_size=batch_size) | ~alive
    newly, frac, ok = _newly_broken(wb, alive, tol)
    ev = (
        f"{label} broke {newly} of {len(wb)} samples ({pct(frac)}) that the white-box attacks left robust "
        f"(white-box {pct(float(wb.float().mean()))}, combined {pct(float(alive.float().mean()))})"
    )
    if not ok:
        ev += f": {label} is stronger than the gradient attacks, a sign of gradient masking"
    return check_result(
        name,
        ok,
        ev,
        whitebox_accuracy=float(wb.float().mean()),
        combined_accuracy=float(alive.float().mean()),
        newly_broken=newly,
        fraction=frac,
        **values,
    )


def _default_whitebox(model, x, y, threat, scale, batch_size) -> torch.Tensor:
    steps = _n(40, scale)
    return _robust_under(model, x, y, _pgd(threat, steps), batch_size=batch_size)


def check_blackbox(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
    whitebox_robust: torch.Tensor | None = None,
    scale: float = 1.0, tol: float = TOL,
    surrogate: nn.Module | None = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """WARN if Square (and a transfer attack from ``surrogate``, if given) breaks more than ``tol``
    of the samples the white-box attacks left robust (default white-box: plain PGD)."""
    queries = _n(1000, scale)
    attacks: list[Attack] = [Square(threat, queries=queries, seed=0)]
    label = f"Square ({queries} queries)"
    if surrogate is not None:
        attacks.append(Transfer(threat, surrogate, seed=0))
        label += " + transfer"
    return _beyond_whitebox("black-box", label, model, x, y, threat, attacks, whitebox_robust, scale, tol, batch_size, queries=queries)


def check_noise(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
    whitebox_robust: torch.Tensor | None = None,
    scale: float = 1.0, tol: float = TOL, batch_size: int = 500,
) -> dict[str, Any]:
    """WARN if random noise of full size eps breaks more than ``tol`` of the samples the white-box
    attacks left robust (noise must be weaker than gradients)."""
    draws = _n(10, scale)
    attacks = [Noise(threat, seed=s) for s in range(draws)]
    label = f"random noise ({draws} draws)"
    return _beyond_whitebox("noise", label, model, x, y, threat, attacks, whitebox_robust, scale, tol, batch_size, draws=draws)


# --- all together ----------------------------------------------------------------------------
def whitebox_robust_from_result(result: EvaluationResult, whitebox_names: Sequence[str] | None = None) -> torch.Tensor:
    """Per-sample robustness under the evaluation's gradient attacks only.

    ``whitebox_names`` are the outcome names of gradient attacks; without it, names starting with
    one of :data:`BLACKBOX_PREFIXES` count as gradient-free. In cascade mode only the gradient
    attacks that ran before the first gradient-free one are used (later ones never saw the
    samples it broke)."""
    r = result.clean_correct.clone().cpu()
    for o in result.outcomes:
        wb = (o.name in whitebox_names) if whitebox_names is not None else not o.name.lower().startswith(BLACKBOX_PREFIXES)
        if not wb:
            if result.cascade:
                break
            continue
        r &= o.robust.cpu()
    return r


def require_gradient_norm(threat: ThreatModel) -> None:
    """ValueError for the l0 threat model: the checks compare gradient attacks, and L0 has none."""
    if threat.norm == "l0":
        raise ValueError("the gradient-masking checks compare gradient attacks, and the l0 threat model has none: "
                         "evaluate it without checks")


def run_checks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
    result: EvaluationResult | None = None,
    scale: float = 1.0, tol: float = TOL,
    eps_curve: Sequence[dict[str, Any]] | None = None,
    surrogate: nn.Module | None = None,
    whitebox_names: Sequence[str] | None = None,
    batch_size: int = 500,
    whitebox_eot: int | None = None,
) -> list[dict[str, Any]]:
    """All checks on ``(x, y)`` at ``threat``.

    With ``result`` (an :class:`~robustlab.evaluation.EvaluationResult` on the same data) the
    white-box reference is the evaluation's own gradient attacks (see
    :func:`whitebox_robust_from_result`) and the eps curve is taken from
    ``result.extra["eps_curve"]`` when present; otherwise plain PGD-CE is the reference.
    ``scale`` multiplies steps, queries and noise draws. ``whitebox_eot``: the fewest EOT draws
    of the evaluation's gradient attacks (see :func:`check_randomised`).
    """
    require_gradient_norm(threat)
    check_images(x, threat)
    check_same_device(model, x=x, y=y)
    with torch.no_grad(), model_guard(model):
        nc = check_logits(model(x[:1]), 1).shape[1]
    check_labels(y, len(x), nc)
    s = float(scale)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if result is not None and result.n != len(x):
        raise ValueError(f"result has {result.n} samples but x has {len(x)}: pass the data the result was computed on")
    if eps_curve is None and result is not None:
        eps_curve = result.extra.get("eps_curve")

    checks = [
        check_softmax_output(model, x, batch_size),
        check_randomised(model, x, eot=whitebox_eot, batch_size=batch_size),
        check_gradients(model, x, y, tol, batch_size),
    ]
    mono, base_robust = _eps_monotonic(model, x, y, threat, eps_curve, s, tol, batch_size)
    checks.append(mono)
    checks.append(check_large_eps(model, x, y, threat, s, batch_size=batch_size))
    if result is not None:
        reference: torch.Tensor | None = whitebox_robust_from_result(result, whitebox_names)
        label = "the evaluation's gradient attacks"
    else:
        reference, label = base_robust, f"PGD-CE ({_n(40, s)} steps)"
    more, strong = _more_iterations(model, x, y, threat, reference, label, s, tol, batch_size)
    checks.append(more)
    checks.append(check_blackbox(model, x, y, threat, strong, s, tol, surrogate, batch_size))
    checks.append(check_noise(model, x, y, threat, strong, s, tol, batch_size))
    return checks


def format_checks(checks: Sequence[dict[str, Any]]) -> str:
    """One line per check; WARN lines are marked ``!!`` and counted in a header line."""
    warns = [c for c in checks if str(c.get("status", "")).upper() != PASS]
    width = max([len(str(c.get("name", ""))) for c in checks] + [4])
    head = (
        f"!! {len(warns)} of {len(checks)} gradient-masking checks WARN: the robust accuracy may be overestimated"
        if warns
        else f"all {len(checks)} gradient-masking checks PASS"
    )
    lines = [head]
    for c in checks:
        status = str(c.get("status", "?")).upper()
        mark = "!!" if status != PASS else "  "
        lines.append(f"{mark} {status:<4}  {str(c.get('name', '')):<{width}}  {c.get('evidence', '')}")
    return "\n".join(lines)


__all__ = [
    "BLACKBOX_PREFIXES",
    "EOT_MIN",
    "PASS",
    "WARN",
    "check_blackbox",
    "check_eps_monotonic",
    "check_gradients",
    "check_large_eps",
    "check_more_iterations",
    "check_noise",
    "check_randomised",
    "check_softmax_output",
    "format_checks",
    "run_checks",
    "whitebox_robust_from_result",
]
