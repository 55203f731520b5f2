"""Evaluating and attacking a run directory: what ``robustlab evaluate`` and ``robustlab attack``
do, as functions that return plain dicts (the CLI only prints them).

:func:`evaluate_run` merges its result into ``RUN/metrics.json`` and writes the headline
evaluation's per-sample outcomes to ``RUN/evaluation.json``; :func:`attack_run` writes
``OUT/adversarial.safetensors`` and ``OUT/summary.json`` (names in :mod:`robustlab.storage.layout`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..attacks import ATTACKS, Attack, Transfer, attack_options, build_attack
from ..distributed import init_from_env
from ..evaluation import clean_accuracy, corruption_metrics, evaluate, iterations_metrics
from ..storage import atomic_save_safetensors, atomic_write_json, atomic_write_text, load_model
from ..storage.layout import ATTACK_EXAMPLES, ATTACK_SUMMARY, EVALUATION_FILE
from ..threat import ThreatModel
from ..training import write_metrics
from .train import load_run_data, resolve_device


def evaluation_attack(name: str, threat: ThreatModel, steps: int | None = None, surrogate: Any | None = None) -> Attack:
    """One attack of ``evaluate --attacks``: seeded (seed 0) when it takes a seed, ``steps`` mapped
    to its budget (``steps``, or ``queries`` for query attacks); ``transfer`` crafts its examples
    on the ``surrogate`` model."""
    if name == "transfer":
        if surrogate is None:
            raise ValueError("the transfer attack needs --surrogate RUN (the model that crafts the examples)")
        return Transfer(threat, surrogate)
    if name not in ATTACKS:
        build_attack(name, threat)  # raises the registry's "unknown attack" error
    allowed = attack_options(ATTACKS[name]) or []
    opts: dict[str, Any] = {"seed": 0} if "seed" in allowed else {}
    if steps is not None:
        if "steps" in allowed:
            opts["steps"] = steps
        elif "queries" in allowed:
            opts["queries"] = steps
    return build_attack(name, threat, **opts)


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def evaluate_run(
    run: str | Path,
    *,
    attacks: Sequence[str] | None = None,
    suite: str | None = None,
    eps: Sequence[float] = (0.1,),
    norm: str = "linf",
    steps: int | None = None,
    n: int | None = None,
    batch_size: int = 500,
    surrogate: str | Path | None = None,
    checks: bool = False,
    iterations: Sequence[int] | None = None,
    corruptions: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Clean accuracy of ``run``'s model on its test set (first ``n`` images), and with ``attacks``
    (names; blanks are skipped) or a ``suite`` the robust accuracy at every budget in ``eps`` (the
    first is the headline, more make ``eps_curve``); ``iterations`` adds robust accuracy vs attack
    steps (PGD when ``attacks`` is just ``["pgd"]``, else APGD-CE), ``corruptions`` the
    common-corruption table, ``checks`` the gradient-masking checks.

    Under torch.distributed (``robustlab evaluate --nproc``) the work is sharded and only rank 0
    writes. Returns the metrics merged into ``RUN/metrics.json`` (a key set to None there is
    removed from the file: e.g. an ``iterations_curve`` of an earlier, different evaluation)."""
    # every input checked before any work
    eps_values = [float(e) for e in eps]
    if not eps_values:
        raise ValueError("--eps is empty")
    threats = [ThreatModel(norm, e) for e in eps_values]
    names = None if attacks is None else [a.strip().lower() for a in attacks if a.strip()]
    if names is not None and suite:
        raise ValueError("give --attacks or --suite, not both")
    dev = init_from_env(resolve_device(device))
    model = load_model(run, map_location=dev)
    x, y, _ = load_run_data(run, "test", dev, limit=n)
    surrogate_model = load_model(surrogate, map_location=dev) if surrogate else None
    t0 = time.perf_counter()
    clean = clean_accuracy(model, x, y, batch_size)
    # The run's headline clean_accuracy is the full test set's; a subset (n) is kept apart.
    metrics: dict[str, Any] = {"evaluated_samples": len(y), "evaluation_clean_accuracy": clean}
    if n is None:
        metrics["clean_accuracy"] = clean
    head = None
    if names is not None or suite:
        curve: list[dict[str, Any]] = []
        for eps_value, threat in zip(eps_values, threats):
            attack_list: Any = suite or [evaluation_attack(a, threat, steps, surrogate_model) for a in names or ()]
            res = evaluate(model, x, y, threat, attack_list, batch_size=batch_size, progress=progress, checks=checks)
            curve.append({"eps": eps_value, "robust_accuracy": res.robust_accuracy, "per_attack": res.per_attack,
                          "result": res})
        head = curve[0]["result"]  # the first eps is the headline budget; the rest make the curve
        metrics.update({"robust_accuracy": head.robust_accuracy, "per_attack": head.per_attack,
                        "eps": eps_values[0], "norm": norm, "suite": suite, "evaluation": head.to_dict(per_sample=False),
                        "eps_curve": None, "checks": head.checks or None})
        if len(curve) > 1:
            metrics["eps_curve"] = [{k: c[k] for k in ("eps", "robust_accuracy", "per_attack")} for c in curve]
        metrics["iterations_curve"] = None  # a curve from an earlier evaluation may not match this one
    if iterations is not None:
        kind = "pgd" if names == ["pgd"] else "apgd"
        metrics.update(iterations_metrics(model, x, y, threats[0], list(iterations), attack=kind,
                                          batch_size=batch_size, progress=progress))
    if corruptions:
        metrics.update(corruption_metrics(model, x, y, batch_size=batch_size))
    metrics["evaluate_seconds"] = round(time.perf_counter() - t0, 2)
    if _is_rank0():
        if head is not None:  # the headline result with per-sample outcomes (schema: docs/results-schema.md)
            atomic_write_text(Path(run) / EVALUATION_FILE, head.to_json(per_sample=True))
        write_metrics(run, metrics)
    return metrics


def attack_run(
    run: str | Path,
    out: str | Path,
    *,
    attack: str = "pgd",
    norm: str = "linf",
    eps: float = 0.1,
    steps: int | None = None,
    target: int | None = None,
    options: dict[str, Any] | None = None,
    n: int = 1000,
    batch_size: int = 500,
    device: str = "auto",
) -> dict[str, Any]:
    """Attack the first ``n`` test images of ``run`` (targeted at class ``target`` when given) and
    write the examples to ``OUT/adversarial.safetensors`` (``x``, ``x_adv``, ``y``, ``pred_adv``,
    ``clean_pred``) and the returned summary to ``OUT/summary.json``."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got {n} and {batch_size}")
    dev = resolve_device(device)
    model = load_model(run, map_location=dev)
    x, y, info = load_run_data(run, "test", dev, limit=n)
    threat = ThreatModel(norm, eps)
    opts = dict(options or {})
    if steps is not None:
        opts["steps"] = steps
    atk = build_attack(attack, threat, **opts)
    if target is not None and not 0 <= target < info.num_classes:
        raise ValueError(f"--target {target} is outside [0, {info.num_classes - 1}]")
    t0 = time.perf_counter()
    xs, succ, pred = [], [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        res = atk.run(model, xb, yb, target=None if target is None else torch.full_like(yb, target))
        xs.append(res.x_adv)
        succ.append(res.success)
        with torch.no_grad():
            pred.append(model(res.x_adv).argmax(1))
    seconds = time.perf_counter() - t0
    x_adv, success, pred_adv = torch.cat(xs), torch.cat(succ), torch.cat(pred)
    with torch.no_grad():
        clean_pred = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    correct = clean_pred == y
    delta = (x_adv - x).flatten(1)
    summary = {
        "attack": repr(atk), "attack_name": attack, "threat": threat.to_dict(), "options": opts,
        "target": target, "n": len(x), "clean_accuracy": float(correct.float().mean()),
        "adversarial_accuracy": float((pred_adv == y).float().mean()),
        "success_rate_on_correct": float((success & correct).float().sum() / max(int(correct.sum()), 1)),
        "mean_l2": float(delta.norm(dim=1).mean()), "max_linf": float(delta.abs().amax(1).max()),
        "seconds": round(seconds, 3),
    }
    outp = Path(out)
    atomic_save_safetensors({"x": x.cpu(), "x_adv": x_adv.cpu(), "y": y.cpu(), "pred_adv": pred_adv.cpu(),
                             "clean_pred": clean_pred.cpu()}, outp / ATTACK_EXAMPLES)
    atomic_write_json(outp / ATTACK_SUMMARY, summary)
    return summary


__all__ = ["attack_run", "evaluate_run", "evaluation_attack"]
