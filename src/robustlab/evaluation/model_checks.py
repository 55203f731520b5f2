"""The gradient-masking checks that read the model's outputs and input gradients without attacking
it: softmax outputs, randomness, and zero or non-finite gradients (see :mod:`.checks` for the list
of all checks and what a WARN means). Kept apart from the attack-based checks so each module holds
one kind of experiment."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._torch import model_guard

PASS, WARN = "PASS", "WARN"
TOL = 0.02


def check_result(name: str, ok: bool, evidence: str, **values: Any) -> dict[str, Any]:
    """One check's plain-dict result: name, PASS/WARN, the evidence in words, JSON values."""
    return {"name": name, "status": PASS if ok else WARN, "evidence": evidence, "values": values}


def pct(v: float) -> str:
    """A fraction as a percentage with one decimal."""
    return f"{100 * v:.1f}%"


EOT_MIN = 10


def check_randomised(
    model: nn.Module,
    x: torch.Tensor,
    draws: int = 4,
    samples: int = 256,
    eot: int | None = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """WARN if the model is randomised: ``draws`` forward passes of the first ``samples`` inputs
    (eval mode) give logits that differ by more than 1e-5 of a row's L2 norm (AutoAttack's
    check_randomized, with more draws). ``eot``: the fewest EOT draws any gradient attack of the
    evaluation used; from :data:`EOT_MIN` on, a randomised model passes (the evaluation already
    averages over its randomness)."""
    draws = max(2, int(draws))
    xs = x[: max(1, int(samples))]
    with torch.no_grad(), model_guard(model):
        outs = [
            torch.cat([model(xs[i : i + batch_size]) for i in range(0, len(xs), batch_size)]).double()
            for _ in range(draws)
        ]
    ref = outs[0]
    scale = ref.norm(dim=1).clamp_min(1e-12)
    rel = torch.stack([((o - ref).abs().amax(1) / scale) for o in outs[1:]]).amax(0)
    rel = torch.nan_to_num(rel, nan=float("inf"))
    differs = float((rel > 1e-5).float().mean())
    preds = torch.stack([o.argmax(1) for o in outs])
    flips = float((preds != preds[:1]).any(0).float().mean())
    randomised = differs > 0
    used = int(eot) if eot is not None else None
    ok = not randomised or (used is not None and used >= EOT_MIN)
    if not randomised:
        ev = f"{draws} forward passes of {len(xs)} inputs give identical logits: the model is deterministic"
    else:
        ev = (
            f"{draws} forward passes of the same {len(xs)} inputs (eval mode) give different logits on "
            f"{pct(differs)} of them (largest change {float(rel.max()):.3g} of the logits' norm; the "
            f"prediction changes on {pct(flips)}): the model is randomised"
        )
        if ok:
            ev += f", and the gradient attacks average over {used} draws (EOT)"
        else:
            few = f"average over only {used} draws" if used and used > 1 else "use one draw per gradient"
            ev += (
                f" and the gradient attacks {few}: single-draw gradients overestimate robustness; evaluate "
                "with --suite autoattack-rand (APGD-CE and APGD-DLR with EOT over 20 draws) or give the "
                "attacks eot=20 (robustlab attack --attack-option eot=20)"
            )
    return check_result(
        "randomised",
        ok,
        ev,
        draws=draws,
        samples=len(xs),
        differing_fraction=differs,
        max_relative_change=float(rel.max()) if math.isfinite(float(rel.max())) else None,
        prediction_change_fraction=flips,
        attack_eot=used,
    )


def check_softmax_output(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> dict[str, Any]:
    """WARN if the model's outputs look like probabilities (rows >= 0 summing to 1)."""
    with torch.no_grad(), model_guard(model):
        out = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).double()
    prob_like = (out >= 0).all(1) & ((out.sum(1) - 1).abs() < 1e-3)
    frac = float(prob_like.float().mean())
    ok = frac <= 0.5
    ev = (
        f"{pct(frac)} of output rows are nonnegative and sum to 1: the model seems to return "
        "probabilities, not logits (attacks on CE then see flat gradients); evaluate the logits"
        if not ok
        else f"outputs look like logits ({pct(frac)} of rows look like probabilities)"
    )
    return check_result("softmax-output", ok, ev, probability_like_fraction=frac)


def check_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, tol: float = TOL, batch_size: int = 500
) -> dict[str, Any]:
    """WARN if the CE input gradient is exactly zero or not finite on more than ``tol`` of the
    correctly classified samples (shattered / saturated gradients)."""
    norms, correct = [], []
    with model_guard(model):
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xb)
                loss = F.cross_entropy(logits, y[i : i + batch_size], reduction="sum")
                (g,) = torch.autograd.grad(loss, xb)
            norms.append(g.detach().flatten(1).norm(dim=1).double().cpu())
            correct.append((logits.detach().argmax(1) == y[i : i + batch_size]).cpu())
    norm, corr = torch.cat(norms), torch.cat(correct)
    sel = norm[corr] if bool(corr.any()) else norm
    zero = float((sel == 0).float().mean())
    nonfinite = float((~torch.isfinite(sel)).float().mean())
    finite = sel[torch.isfinite(sel)]
    median = float(finite.median()) if finite.numel() else float("nan")
    ok = zero + nonfinite <= tol
    ev = (
        f"CE input gradient is zero on {pct(zero)} and NaN/inf on {pct(nonfinite)} of "
        f"{sel.numel()} correctly classified samples (median norm {median:.3g})"
    )
    if not ok:
        ev += ": gradient attacks cannot move these points (saturated softmax, quantisation, "
        ev += "non-differentiable layers); trust only gradient-free or DLR-based results"
    return check_result(
        "gradients",
        ok,
        ev,
        zero_fraction=zero,
        nonfinite_fraction=nonfinite,
        median_norm=median if math.isfinite(median) else None,
        samples=int(sel.numel()),
    )
