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
from ..evaluation.suites import build_suite
from ..registry import lookup, required_options
from ..storage import atomic_save_safetensors, atomic_write_json, atomic_write_text, load_model
from ..storage.layout import ATTACK_EXAMPLES, ATTACK_SUMMARY, EVALUATION_FILE, METRICS_FILE, read_json
from ..threat import ThreatModel, canonical_norm
from .evaluation_dir import evaluation_document, write_adversarial, write_evaluation_dir
from .sources import DataSource, ModelSource, model_and_data
from .train import resolve_device

# metrics.json keys an evaluation writes (and the next evaluation removes before writing its own)
EVALUATION_KEYS = ("evaluated_samples", "evaluation_clean_accuracy", "robust_accuracy", "per_attack", "eps", "norm",
                   "suite", "evaluation", "eps_curve", "checks", "iterations_curve", "iterations_attack", "corruptions",
                   "corruptions_n", "mean_corruption_accuracy", "evaluate_seconds", "evaluation_keys", "eot", "surrogates",
                   "expected_robust_accuracy")


#: Models an attack needs from outside (its constructor option -> how the CLI takes it).
ATTACK_RESOURCES = {
    "surrogate": "--surrogate RUN (the model that crafts the examples; repeatable)",
    "generator": "--generator GEN (a generator trained with robustlab advgan train)",
}


def evaluation_attack(name: str, threat: ThreatModel, steps: int | None = None,
                      resources: dict[str, Any] | None = None, eot: int | None = None) -> Attack:
    """One attack of ``evaluate --attacks``: seeded (seed 0) when it takes a seed, ``steps`` mapped
    to its budget (``steps``, or ``queries`` for query attacks), and each of ``resources`` (e.g.
    ``surrogate`` for ``transfer``, ``generator`` for ``advgan``) given to the attacks that take
    it. An attack that requires a resource nobody gave is a ValueError naming the option. ``eot``
    (``--eot N``): the attack averages over N draws; an attack without EOT is a ValueError naming it."""
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
    if eot is not None:
        opts["eot"] = check_eot(name, cls, eot)
    opts.update({k: v for k, v in (resources or {}).items() if k in allowed and v is not None})
    for option, how in ATTACK_RESOURCES.items():
        if option in required_options(cls) and option not in opts:
            raise ValueError(f"the {name} attack needs {how}")
    attack = build_attack(name, threat, **opts)
    require_eps_ball(attack)  # a fooling image is no robustness evaluation
    return attack


def check_eot(name: str, cls: type[Attack], eot: Any) -> int:
    """``eot`` as a whole number >= 1 for the attack ``name`` (class ``cls``); a ValueError when it
    is not one, or when the attack has no EOT (it takes no gradients of the model: nothing to average)."""
    if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
        raise ValueError(f"--eot must be a whole number >= 1, got {eot!r}")
    if "eot" not in (attack_options(cls) or ["eot"]):
        raise ValueError(f"--eot {eot}: the {name} attack has no EOT (it takes no gradients of the model); "
                         "--eot applies to gradient attacks only")
    return eot


def evaluation_attacks(names: Sequence[str], threat: ThreatModel, steps: int | None = None,
                       resources: dict[str, Any] | None = None, eot: int | None = None) -> list[Attack]:
    """The attacks of ``evaluate --attacks`` (:func:`evaluation_attack` each). A resource given as a
    list of K > 1 models (several ``--surrogate`` runs) makes K attacks of each name that takes it,
    one per model in order, named ``NAME-1`` .. ``NAME-K`` (e.g. ``transfer-1``, ``transfer-2``):
    the evaluation's per-sample worst case then counts a sample robust only if it survives all K."""
    out: list[Attack] = []
    given = dict(resources or {})
    for name in names:
        allowed = attack_options(lookup(ATTACKS, name, "attack")[1]) or []
        lists = [(k, v) for k, v in given.items() if k in allowed and isinstance(v, list)]
        option, values = lists[0] if lists else ("", [None])
        for i, value in enumerate(values or [None], 1):
            attack = evaluation_attack(name, threat, steps, {**given, option: value}, eot)
            if len(values) > 1:
                attack.name = f"{name}-{i}"
            out.append(attack)
    return out


def check_resources(names: Sequence[str] | None, suite: str | None, given: dict[str, Sequence[Any]]) -> None:
    """Each outside model given (``given``: resource option -> the values given, e.g. the
    ``--surrogate`` runs) must be taken by an attack in ``names``, and no run may be given twice."""
    for name in names or ():
        cls = lookup(ATTACKS, name, "attack")[1]  # an unknown name is that error, not "no attack uses it"
        for option in required_options(cls):
            if option in given and not given[option]:
                raise ValueError(f"the {name} attack needs {ATTACK_RESOURCES[option]}")
    for option, values in given.items():
        if not values:
            continue
        users = sorted(n for n, cls in ATTACKS.items() if option in (attack_options(cls) or []))
        if not any(n in users for n in names or ()):
            used = "--suite " + suite if suite else ("--attacks " + ",".join(names) if names else "no --attacks")
            raise ValueError(f"--{option} is given but no attack uses it ({used}): add {' or '.join(users)} "
                             f"to --attacks, or drop --{option}")
        seen: set[Path] = set()
        for v in values:
            key = Path(v).resolve()
            if key in seen:
                raise ValueError(f"--{option} {v} is given twice: give each run once")
            seen.add(key)


def suite_attacks(suite: str, threat: ThreatModel, eot: int | None = None) -> list[Attack] | str:
    """A suite by name for :func:`robustlab.evaluate`; with ``eot`` (``--eot N``) its attacks, every
    gradient attack averaging over N draws (black-box attacks such as Square unchanged)."""
    if eot is None:
        return suite
    attacks: list[Attack] = []
    for a in build_suite(suite, threat):  # fresh objects: set in place
        if a.uses_gradients:
            a.eot = check_eot(a.name, type(a), eot)
        attacks.append(a)
    return attacks


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
    surrogate: str | Path | Sequence[str | Path] | None = None,
    generator: str | Path | None = None,
    eot: int | None = None,
    checks: bool = False,
    iterations: Sequence[int] | None = None,
    corruptions: bool = False,
    device: str = "auto",
    progress: bool = True,
    model: ModelSource | None = None,
    data: DataSource | None = None,
    out: str | Path | None = None,
    save_adversarial: bool = False,
    exact_model: bool = False,
) -> dict[str, Any]:
    """Clean accuracy of a model on its data (first ``n`` images), and with ``attacks`` (names;
    blanks are skipped) or a ``suite`` the robust accuracy at every budget in ``eps`` (the first is
    the headline, more make ``eps_curve``); ``iterations`` adds robust accuracy vs attack steps
    (with the one iterative attack in ``attacks``, APGD-CE for a suite, an error when ambiguous), ``corruptions`` the common-corruption
    table, ``checks`` the gradient-masking checks.

    ``surrogate``: one run or several for the ``transfer`` attack; K > 1 runs make K transfer
    attacks (``transfer-1`` .. ``transfer-K``, recorded under ``surrogates``) and a sample counts as
    robust only if it survives every one. ``eot`` (``--eot N``): every gradient attack (of
    ``attacks``, of the suite and of the iterations curve) averages over N draws (EOT), recorded as ``eot``.

    The model is ``run`` or ``model`` (an entry point), the data ``data`` (default: the run's
    test set). With ``out`` the evaluation directory's document is written and returned
    (``save_adversarial`` adds the worst-case examples); otherwise the run's metrics.json
    evaluation keys are replaced and the metrics returned. Under torch.distributed
    (``robustlab evaluate --nproc``) the work is sharded and only rank 0 writes. On CPU the
    attacks run on a BatchNorm-folded copy of the model, every verdict the model's own
    (:mod:`robustlab.evaluation.model_copies`); ``exact_model`` attacks the model itself."""
    # every input checked before any work
    src = model or ModelSource(run=None if run is None else str(run))
    data = data or DataSource()
    src.check()
    if out is None and src.zoo is not None:
        raise ValueError(f"{src.zoo} is read-only: give --out DIR for the evaluation directory")
    data.check(src.run)
    eps_values = [float(e) for e in eps]
    if not eps_values:
        raise ValueError("--eps is empty")
    threats = [ThreatModel(canonical_norm(norm), e) for e in eps_values]
    names = None if attacks is None else [a.strip().lower() for a in attacks if a.strip()]
    if names is not None and suite:
        raise ValueError("give --attacks or --suite, not both")
    curve_attack = iterations_attack_for(names) if iterations is not None else None
    surrogates = [] if surrogate is None else [surrogate] if isinstance(surrogate, (str, Path)) else list(surrogate)
    check_resources(names, suite, {"surrogate": surrogates, "generator": [] if generator is None else [generator]})
    if eot is not None:  # every attack checked before any work
        if names is None and not suite and iterations is None:
            raise ValueError("--eot is given but no attack runs: give --attacks, --suite or --iterations")
        for a in names or ():
            if a in ATTACKS:
                check_eot(a, ATTACKS[a], eot)
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
    resources = {"surrogate": [load_model(s, map_location=dev) for s in surrogates], "generator": generator}
    used = [a for a in names or () if "surrogate" in (attack_options(ATTACKS[a]) or [])] if surrogates else []
    recorded: dict[str, Any] = {} if eot is None else {"eot": eot}
    if used:  # which attack crafted on which run
        recorded["surrogates"] = {(u if len(surrogates) == 1 else f"{u}-{i}"): str(Path(s).resolve())
                                  for u in used for i, s in enumerate(surrogates, 1)}
    t0 = time.perf_counter()
    clean = clean_accuracy(net, x, y, batch_size)
    # The run's headline clean_accuracy is the full test set's; a subset (n) is kept apart.
    metrics: dict[str, Any] = {"evaluated_samples": len(y), "evaluation_clean_accuracy": clean}
    if n is None and not data.given:
        metrics["clean_accuracy"] = clean
    metrics.update(recorded)
    head: EvaluationResult | None = None
    x_adv: torch.Tensor | None = None
    curve: list[dict[str, Any]] = []
    if names is not None or suite:
        for k, (eps_value, threat) in enumerate(zip(eps_values, threats)):
            attack_list: Any = (suite_attacks(suite, threat, eot) if suite else
                                evaluation_attacks(names or (), threat, steps, resources, eot))
            res = evaluate(net, x, y, threat, attack_list, batch_size=batch_size, progress=progress,
                           checks=checks and k == 0, keep_adversarial=save_adversarial and k == 0,
                           copies=not exact_model)
            res.extra.update(recorded)
            if k == 0:
                x_adv = res.adversarial
            curve.append({"eps": eps_value, "robust_accuracy": res.robust_accuracy, "per_attack": res.per_attack,
                          "result": res})
        head = curve[0]["result"]  # the first eps is the headline budget; the rest make the curve
        metrics.update({"robust_accuracy": head.robust_accuracy, "expected_robust_accuracy": head.expected_robust_accuracy,
                        "per_attack": head.per_attack,
                        "eps": eps_values[0], "norm": norm, "suite": suite, "evaluation": head.to_dict(per_sample=False),
                        "checks": head.checks or None})
        if len(curve) > 1:
            metrics["eps_curve"] = [{k: c[k] for k in ("eps", "robust_accuracy", "per_attack")} for c in curve]
    if iterations is not None:
        options = {"eot": eot} if eot is not None else {"eot": 20} if suite == "autoattack-rand" else None
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
    extra: dict[str, Any] = {k: metrics[k] for k in ("eot", "surrogates", "eps_curve", "iterations_curve", "iterations_attack",
                                                     "corruptions", "corruptions_n", "mean_corruption_accuracy",
                                                     "evaluate_seconds") if k in metrics}
    doc = evaluation_document(result, model=src.identity(), data=data_id, suite=suite, extra=extra, counts=counts)
    if _is_rank0():
        if x_adv is not None:
            doc["adversarial"] = write_adversarial(out, net, x, x_adv, y, batch_size)
        write_evaluation_dir(out, doc)
    return doc


TARGET_MODES = ("random", "least-likely")
LABEL_MODES = ("true", "predicted")


def attack_targets(target: int | str | None, logits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> torch.Tensor | None:
    """Per-sample target classes: a fixed class K; ``"random"``: uniform over the classes other than
    the sample's label (drawn per sample index, so the same whatever the batching); ``"least-likely"``:
    the class of lowest clean logit (Kurakin et al.'s iterative least-likely class). None: untargeted."""
    if target is None:
        return None
    nc = logits.shape[1]
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        mode = target.strip().lower()
        if mode == "least-likely":
            return logits.argmin(1)
        if mode == "random":
            from .._rng import SampleRNG, randint

            r = randint(SampleRNG(seed, torch.arange(len(labels), device=labels.device)), 0, nc - 1, (len(labels),),
                        device=labels.device)
            return r + (r >= labels).long()  # skip the sample's own label
        raise ValueError(f"--target must be a class index, random or least-likely, got {target!r}")
    k = int(target)
    if not 0 <= k < nc:
        raise ValueError(f"--target {k} is outside [0, {nc - 1}]")
    return torch.full_like(labels, k)


def attack_run(
    run: str | Path | None,
    out: str | Path,
    *,
    attack: str = "pgd",
    norm: str = "linf",
    eps: float = 0.1,
    steps: int | None = None,
    target: int | str | None = None,
    labels: str = "true",
    options: dict[str, Any] | None = None,
    eot: int | None = None,
    n: int = 1000,
    batch_size: int = 500,
    device: str = "auto",
    model_source: ModelSource | None = None,
    data: DataSource | None = None,
) -> dict[str, Any]:
    """Attack the first ``n`` test images of ``run`` (or of ``data``, with the model ``run`` or
    ``model_source``) and write the examples to ``OUT/adversarial.safetensors`` (``x``, ``x_adv``,
    ``y``, ``pred_adv``, ``clean_pred``, their softmax confidences ``clean_conf`` / ``adv_conf``, and
    ``target`` when targeted) and the returned summary to ``OUT/summary.json``
    (:func:`robustlab.report.attack_figure.draw_attack_dir` draws them).

    ``target``: a class index, ``"random"`` or ``"least-likely"`` (see :func:`attack_targets`).
    ``labels="predicted"`` attacks the model's own predictions instead of the true labels (as the
    lecture's code does): success then means the prediction changed. ``eot`` (``--eot N``): the
    attack averages over N draws (EOT; an attack without it is a ValueError naming it)."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got {n} and {batch_size}")
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        target = int(target)  # --target 3 from the command line
    if labels not in LABEL_MODES:
        raise ValueError(f"--labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    src = model_source or ModelSource(run=None if run is None else str(run))
    data = data or DataSource()
    opts = dict(options or {})
    if steps is not None:
        opts["steps"] = steps
    if eot is not None:  # checked before any work
        if "eot" in opts:
            raise ValueError("give --eot N or --attack-option eot=N, not both")
        opts["eot"] = check_eot(attack, lookup(ATTACKS, attack, "attack")[1], eot)
    dev = resolve_device(device)
    model, x, y, info, data_id = model_and_data(src, data, dev, limit=n)
    threat = ThreatModel(canonical_norm(norm), eps)
    atk = build_attack(attack, threat, **opts)
    clean_logits = _logits(model, x, batch_size)
    clean_pred = clean_logits.argmax(1)
    y_attack = clean_pred if labels == "predicted" else y
    targets = attack_targets(target, clean_logits, y_attack)
    if targets is None and getattr(atk, "needs_target", False):
        raise ValueError(f"{attack} needs --target (a class index, random or least-likely)")
    t0 = time.perf_counter()
    xs, succ = [], []
    for i in range(0, len(x), batch_size):
        sl = slice(i, i + batch_size)
        res = atk.run(model, x[sl], y_attack[sl], target=None if targets is None else targets[sl],
                      sample_ids=torch.arange(i, min(i + batch_size, len(x)), device=x.device))
        xs.append(res.x_adv)
        succ.append(res.success)
    seconds = time.perf_counter() - t0
    x_adv, success = torch.cat(xs), torch.cat(succ)
    adv_logits = _logits(model, x_adv, batch_size)
    pred_adv = adv_logits.argmax(1)
    correct = clean_pred == y
    delta = (x_adv - x).flatten(1)
    summary = {
        "attack": repr(atk), "attack_name": attack, "threat": threat.to_dict(), "eps_ball": bool(atk.eps_ball),
        "options": opts, "eot": int(getattr(atk, "eot", 1)), "target": target, "labels": labels, "n": len(x),
        "clean_accuracy": int(correct.sum()) / len(x),
        "adversarial_accuracy": int((pred_adv == y).sum()) / len(x),
        "success_rate_on_correct": int((success & correct).sum()) / max(int(correct.sum()), 1),
        "mean_l2": float(delta.norm(dim=1).mean()), "max_linf": float(delta.abs().amax(1).max()),
        "seconds": round(seconds, 3), "model": src.identity(), "data": data_id,
        "class_names": list(info.class_names),
    }
    if targets is not None:
        summary["target_hit_rate"] = int((pred_adv == targets).sum()) / len(x)
    if labels == "predicted":
        summary["prediction_changed"] = int((pred_adv != clean_pred).sum()) / len(x)
    outp = Path(out)
    tensors = {"x": x.cpu(), "x_adv": x_adv.cpu(), "y": y.cpu(), "pred_adv": pred_adv.cpu(), "clean_pred": clean_pred.cpu(),
               "clean_conf": clean_logits.softmax(1).amax(1).cpu(), "adv_conf": adv_logits.softmax(1).amax(1).cpu()}
    if targets is not None:
        tensors["target"] = targets.cpu()
    atomic_save_safetensors(tensors, outp / ATTACK_EXAMPLES)
    atomic_write_json(outp / ATTACK_SUMMARY, summary)
    return summary


def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits in eval mode, batched (the model's modes restored)."""
    from .._torch import model_guard

    with torch.no_grad(), model_guard(model, eval_mode=True):
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


__all__ = ["EVALUATION_KEYS", "LABEL_MODES", "TARGET_MODES", "attack_run", "attack_targets", "check_eot", "check_resources",
           "evaluate_run", "evaluation_attack", "evaluation_attacks", "suite_attacks",
           "replace_evaluation_metrics"]
