"""Evaluating and attacking a model: what ``robustlab evaluate`` and ``robustlab attack`` do, as
functions that return plain dicts (the CLI only prints them).

The model is a run directory or an entry point, the data the run's test set, a ``--data`` path
or a named data set (:mod:`.sources`). :func:`evaluate_run` with ``out`` writes an evaluation
directory (:mod:`.evaluation_dir`) and touches no run; without it, it replaces the previous
evaluation's keys in ``RUN/metrics.json`` (never mixes two evaluations) and writes the headline
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
from torch import nn

from ..attacks import ATTACKS, Attack, attack_options, build_attack, require_eps_ball
from ..distributed import init_from_env
from ..evaluation import EvaluationResult, clean_accuracy, corruption_metrics, evaluate, iterations_metrics
from ..evaluation.curves import iterations_attack_for
from ..registry import required_options
from ..storage import atomic_save_safetensors, atomic_write_json, atomic_write_text, load_model
from ..storage.layout import ATTACK_EXAMPLES, ATTACK_SUMMARY, EVALUATION_FILE, METRICS_FILE, read_json
from ..threat import ThreatModel, canonical_norm
from .evaluation_dir import evaluation_document, write_adversarial, write_evaluation_dir
from .sources import DataSource, ModelSource, model_and_data
from .train import resolve_device

# metrics.json keys an evaluation writes (and the next evaluation removes before writing its own)
EVALUATION_KEYS = ("evaluated_samples", "evaluation_clean_accuracy", "robust_accuracy", "per_attack", "eps", "norm",
                   "suite", "evaluation", "eps_curve", "checks", "iterations_curve", "iterations_attack", "corruptions",
                   "corruptions_n", "mean_corruption_accuracy", "evaluate_seconds", "evaluation_keys")


#: Models an attack needs from outside (its constructor option -> how the CLI takes it).
ATTACK_RESOURCES = {
    "surrogate": "--surrogate RUN (the model that crafts the examples)",
    "generator": "--generator GEN (a generator trained with robustlab advgan train)",
}


def evaluation_attack(name: str, threat: ThreatModel, steps: int | None = None,
                      resources: dict[str, Any] | None = None) -> Attack:
    """One attack of ``evaluate --attacks``: seeded (seed 0) when it takes a seed, ``steps`` mapped
    to its budget (``steps``, or ``queries`` for query attacks), and each of ``resources`` (e.g.
    ``surrogate`` for ``transfer``, ``generator`` for ``advgan``) given to the attacks that take
    it. An attack that requires a resource nobody gave is a ValueError naming the option."""
    if name not in ATTACKS:
        build_attack(name, threat)  # raises the registry's "unknown attack" error
    cls = ATTACKS[name]
    allowed = attack_options(cls) or []
    opts: dict[str, Any] = {"seed": 0} if "seed" in allowed else {}
    if steps is not None:
        if "steps" in allowed:
            opts["steps"] = steps
        elif "queries" in allowed:
            opts["queries"] = steps
    opts.update({k: v for k, v in (resources or {}).items() if k in allowed and v is not None})
    for option, how in ATTACK_RESOURCES.items():
        if option in required_options(cls) and option not in opts:
            raise ValueError(f"the {name} attack needs {how}")
    attack = build_attack(name, threat, **opts)
    require_eps_ball(attack)  # a fooling image is no robustness evaluation
    return attack


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def replace_evaluation_metrics(run: str | Path, metrics: dict[str, Any]) -> None:
    """Write ``metrics`` into ``RUN/metrics.json`` in place of the previous evaluation's keys
    (training's keys stay): two evaluations are never mixed in one file."""
    p = Path(run) / METRICS_FILE
    old = read_json(p)
    kept = {k: v for k, v in (old if isinstance(old, dict) else {}).items()
            if k not in EVALUATION_KEYS and k not in ((old or {}).get("evaluation_keys") or [])}
    new = {k: v for k, v in metrics.items() if v is not None}
    new["evaluation_keys"] = sorted(k for k in new if k != "clean_accuracy")
    atomic_write_json(p, {**kept, **new})


def evaluate_run(
    run: str | Path | None = None,
    *,
    attacks: Sequence[str] | None = None,
    suite: str | None = None,
    eps: Sequence[float] = (0.1,),
    norm: str = "linf",
    steps: int | None = None,
    n: int | None = None,
    batch_size: int = 500,
    surrogate: str | Path | None = None,
    generator: str | Path | None = None,
    checks: bool = False,
    iterations: Sequence[int] | None = None,
    corruptions: bool = False,
    device: str = "auto",
    progress: bool = True,
    model: ModelSource | None = None,
    data: DataSource | None = None,
    out: str | Path | None = None,
    save_adversarial: bool = False,
) -> dict[str, Any]:
    """Clean accuracy of a model on its data (first ``n`` images), and with ``attacks`` (names;
    blanks are skipped) or a ``suite`` the robust accuracy at every budget in ``eps`` (the first is
    the headline, more make ``eps_curve``); ``iterations`` adds robust accuracy vs attack steps
    (with the one iterative attack in ``attacks``, APGD-CE for a suite, an error when ambiguous), ``corruptions`` the common-corruption
    table, ``checks`` the gradient-masking checks.

    The model is ``run`` or ``model`` (an entry point), the data ``data`` (default: the run's
    test set). With ``out`` the evaluation directory's document is written and returned
    (``save_adversarial`` adds the worst-case examples); otherwise the run's metrics.json
    evaluation keys are replaced and the metrics returned. Under torch.distributed
    (``robustlab evaluate --nproc``) the work is sharded and only rank 0 writes."""
    # every input checked before any work
    src = model or ModelSource(run=None if run is None else str(run))
    data = data or DataSource()
    src.check()
    data.check(src.run)
    eps_values = [float(e) for e in eps]
    if not eps_values:
        raise ValueError("--eps is empty")
    threats = [ThreatModel(canonical_norm(norm), e) for e in eps_values]
    names = None if attacks is None else [a.strip().lower() for a in attacks if a.strip()]
    if names is not None and suite:
        raise ValueError("give --attacks or --suite, not both")
    curve_attack = iterations_attack_for(names) if iterations is not None else None
    if save_adversarial and out is None:
        raise ValueError("--save-adversarial needs --out DIR (an evaluation directory)")
    if save_adversarial and names is None and not suite:
        raise ValueError("--save-adversarial needs attacks: --attacks or --suite")
    if out is None and src.run is None:
        raise ValueError("a model given with --model has no run directory to write to: give --out DIR")
    if out is None and data.given:
        raise ValueError("evaluating a RUN on other data (--data / --dataset) needs --out DIR: RUN/metrics.json "
                         "holds the numbers of the run's own test set")
    if out is not None and src.run is not None and Path(out).resolve() == Path(src.run).resolve():
        raise ValueError("--out must be a new evaluation directory, not the run directory")
    dev = init_from_env(resolve_device(device))
    net, x, y, info, data_id = model_and_data(src, data, dev, limit=n)
    resources = {"surrogate": load_model(surrogate, map_location=dev) if surrogate else None,
                 "generator": generator}
    t0 = time.perf_counter()
    clean = clean_accuracy(net, x, y, batch_size)
    # The run's headline clean_accuracy is the full test set's; a subset (n) is kept apart.
    metrics: dict[str, Any] = {"evaluated_samples": len(y), "evaluation_clean_accuracy": clean}
    if n is None and not data.given:
        metrics["clean_accuracy"] = clean
    head: EvaluationResult | None = None
    x_adv: torch.Tensor | None = None
    curve: list[dict[str, Any]] = []
    if names is not None or suite:
        for k, (eps_value, threat) in enumerate(zip(eps_values, threats)):
            attack_list: Any = suite or [evaluation_attack(a, threat, steps, resources) for a in names or ()]
            res = evaluate(net, x, y, threat, attack_list, batch_size=batch_size, progress=progress,
                           checks=checks and k == 0, keep_adversarial=save_adversarial and k == 0)
            if k == 0:
                x_adv = res.adversarial
            curve.append({"eps": eps_value, "robust_accuracy": res.robust_accuracy, "per_attack": res.per_attack,
                          "result": res})
        head = curve[0]["result"]  # the first eps is the headline budget; the rest make the curve
        metrics.update({"robust_accuracy": head.robust_accuracy, "per_attack": head.per_attack,
                        "eps": eps_values[0], "norm": norm, "suite": suite, "evaluation": head.to_dict(per_sample=False),
                        "checks": head.checks or None})
        if len(curve) > 1:
            metrics["eps_curve"] = [{k: c[k] for k in ("eps", "robust_accuracy", "per_attack")} for c in curve]
    if iterations is not None:
        options = {"eot": 20} if suite == "autoattack-rand" else None
        assert curve_attack is not None  # set above whenever iterations is
        metrics.update(iterations_metrics(net, x, y, threats[0], list(iterations), attack=curve_attack, options=options,
                                          batch_size=batch_size, progress=progress))
    if corruptions:
        metrics.update(corruption_metrics(net, x, y, batch_size=batch_size))
    metrics["evaluate_seconds"] = round(time.perf_counter() - t0, 2)
    if out is not None:
        return _write_out(Path(out), metrics, head, net, x, y, x_adv, src, data_id, suite, batch_size)
    if _is_rank0():
        evaluation_path = Path(str(src.run)) / EVALUATION_FILE
        if head is not None:  # the headline result with per-sample outcomes (schema: docs/results-schema.md)
            atomic_write_text(evaluation_path, head.to_json(per_sample=True))
        elif evaluation_path.is_file():
            evaluation_path.unlink()  # an earlier evaluation's outcomes no longer match metrics.json
        replace_evaluation_metrics(str(src.run), metrics)
    return {k: v for k, v in metrics.items() if v is not None}


def _write_out(out: Path, metrics: dict[str, Any], head: EvaluationResult | None, net: nn.Module, x: torch.Tensor,
               y: torch.Tensor, x_adv: torch.Tensor | None, src: ModelSource, data_id: dict[str, Any],
               suite: str | None, batch_size: int) -> dict[str, Any]:
    """The evaluation directory: evaluation.json (+ adversarial.safetensors / .png); the document."""
    clean_n = round(metrics["evaluation_clean_accuracy"] * len(y))
    if head is not None:
        result = head.to_dict(per_sample=True)
        counts = {"clean_correct": int(head.clean_correct.sum()), "robust": int(head.robust.sum())}
    else:
        result = {"schema_version": 1, "n": len(y), "clean_accuracy": metrics["evaluation_clean_accuracy"]}
        counts = {"clean_correct": clean_n}
    extra: dict[str, Any] = {k: metrics[k] for k in ("eps_curve", "iterations_curve", "iterations_attack", "corruptions",
                                     "corruptions_n", "mean_corruption_accuracy", "evaluate_seconds") if k in metrics}
    doc = evaluation_document(result, model=src.identity(), data=data_id, suite=suite, extra=extra, counts=counts)
    if _is_rank0():
        if x_adv is not None:
            doc["adversarial"] = write_adversarial(out, net, x, x_adv, y, batch_size)
        write_evaluation_dir(out, doc)
    return doc


def attack_run(
    run: str | Path | None,
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
    model_source: ModelSource | None = None,
    data: DataSource | None = None,
) -> dict[str, Any]:
    """Attack the first ``n`` test images of ``run`` (or of ``data``, with the model ``run`` or
    ``model_source``), targeted at class ``target`` when given, and write the examples to
    ``OUT/adversarial.safetensors`` (``x``, ``x_adv``, ``y``, ``pred_adv``, ``clean_pred``) and the
    returned summary to ``OUT/summary.json``."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got {n} and {batch_size}")
    src = model_source or ModelSource(run=None if run is None else str(run))
    data = data or DataSource()
    dev = resolve_device(device)
    model, x, y, info, data_id = model_and_data(src, data, dev, limit=n)
    threat = ThreatModel(canonical_norm(norm), eps)
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
        "seconds": round(seconds, 3), "model": src.identity(), "data": data_id,
    }
    outp = Path(out)
    atomic_save_safetensors({"x": x.cpu(), "x_adv": x_adv.cpu(), "y": y.cpu(), "pred_adv": pred_adv.cpu(),
                             "clean_pred": clean_pred.cpu()}, outp / ATTACK_EXAMPLES)
    atomic_write_json(outp / ATTACK_SUMMARY, summary)
    return summary


__all__ = ["EVALUATION_KEYS", "attack_run", "evaluate_run", "evaluation_attack",
           "replace_evaluation_metrics"]
