"""Model cards and adding a trained run to the zoo (what ``scripts/zoo_add.py`` does).

A card (``NAME/card.json``) says what a zoo model is and how good it is, every number taken from
files robustlab wrote: the run's ``config.json`` (the training command, rebuilt as flags),
``metrics.json`` (clean accuracy on the run's whole test set, training wall time) and an
evaluation directory (``robustlab evaluate RUN --suite ... --checks --out DIR``: robust accuracy,
its suite, threat model and gradient-masking checks). ``spot_check`` is the clean accuracy on the
first 500 test images, measured when the entry is added, so a test can confirm the shipped
weights still give it.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from . import CARD_FILE, zoo_dir, zoo_name

CARD_KIND = "robustlab-zoo-card"
CARD_VERSION = 1
SPOT_N = 500
#: Keys every card must have (``check_card``); the zoo test checks each shipped card against it.
CARD_KEYS = ("kind", "schema_version", "name", "dataset", "threat", "architecture", "parameters", "training_command",
             "train_seconds", "clean_accuracy", "clean_n", "robust_accuracy", "robust_n", "suite", "checks", "spot_check")
# TrainConfig fields that have no train flag, or a flag of another name
_NO_FLAG = {"eval_batch_size"}
_FLAG = {"sync_batchnorm": "--sync-bn"}


def training_command(config: dict[str, Any], out: str = "RUN") -> str:
    """The ``robustlab train`` command line that reproduces a run's ``config.json`` (its spec and
    training settings; settings at their defaults are left out)."""
    from ..training import TrainConfig

    spec, training = config.get("spec", {}), config.get("training", {})
    words = ["robustlab", "train", "--dataset", str(spec.get("dataset", "fashion-mnist"))]
    for key in ("data_root", "train_limit", "test_limit", "init_from"):
        if spec.get(key) is not None:
            words += ["--" + key.replace("_", "-"), str(spec[key])]
    words += ["--model", str(spec.get("model", "small-cnn"))]
    for k, v in (spec.get("model_options") or {}).items():
        if k != "input_size":  # set from the data
            words += ["--model-option", f"{k}={json.dumps(v)}"]
    for pattern in spec.get("freeze") or []:
        words += ["--freeze", pattern]
    words += ["--defense", str(spec.get("defense", "clean"))]
    options = dict(spec.get("defense_options") or {})
    for key in ("eps", "norm"):
        if key in options:
            words += ["--" + key, str(options.pop(key))]
    for k, v in options.items():
        words += ["--defense-option", f"{k}={json.dumps(v)}"]
    monitor = spec.get("monitor")
    words += ["--monitor-attack", str(monitor.get("attack", "pgd")) if monitor else "none"]
    if monitor and "eps" in monitor:
        words += ["--monitor-eps", f"{monitor['eps']:g}"]
    defaults = TrainConfig().to_dict()
    for k, v in training.items():
        if k in _NO_FLAG or k not in defaults or v == defaults[k]:
            continue
        flag = _FLAG.get(k, "--" + k.replace("_", "-"))
        words += [flag] if isinstance(v, bool) else [flag, f"{v:g}" if isinstance(v, float) else str(v)]
    return " ".join(shlex.quote(w) for w in [*words, "--out", out])


def checks_summary(checks: list[dict[str, Any]] | None) -> dict[str, Any]:
    """``{"status": "PASS" | "WARN" | "not run", "passed": k, "total": n, "warn": [names]}``."""
    if not checks:
        return {"status": "not run", "passed": 0, "total": 0, "warn": []}
    warn = [str(c.get("name")) for c in checks if str(c.get("status", "")).upper() != "PASS"]
    return {"status": "WARN" if warn else "PASS", "passed": len(checks) - len(warn), "total": len(checks), "warn": warn}


def check_card(card: dict[str, Any]) -> list[str]:
    """What is missing or wrong in a card (an empty list for a complete one)."""
    problems = [f"missing {k}" for k in CARD_KEYS if k not in card]
    if card.get("kind") not in (None, CARD_KIND):
        problems.append(f"kind is {card.get('kind')!r}, not {CARD_KIND!r}")
    for k in ("clean_accuracy", "robust_accuracy"):
        v = card.get(k)
        if k in card and not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
            problems.append(f"{k} is {v!r}, not an accuracy in [0, 1]")
    spot = card.get("spot_check")
    if "spot_check" in card and not (isinstance(spot, dict) and {"n", "accuracy"} <= set(spot)):
        problems.append("spot_check needs n and accuracy")
    return problems


def _json(path: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{what}: no {path}") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{what}: {path} is not readable JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{what}: {path} is not a JSON object")
    return doc


def spot_check(model: Any, dataset: str, data_root: str | None = None, n: int = SPOT_N) -> dict[str, Any]:
    """Clean accuracy of ``model`` on the first ``n`` test images of ``dataset``."""
    from .._torch import clean_accuracy
    from ..data import load_dataset

    x, y, _ = load_dataset(dataset, "test", root=data_root)
    x, y = x[:n], y[:n]
    return {"n": int(len(y)), "accuracy": float(clean_accuracy(model, x, y, 500))}


def make_card(run: str | os.PathLike, name: str, evaluation: str | os.PathLike, command: str | None = None,
              description: str = "") -> dict[str, Any]:
    """The card of ``run`` (a run directory) as zoo entry ``name``, its robust numbers from the
    evaluation directory ``evaluation`` (``robustlab evaluate RUN --out DIR``), which must have
    evaluated this very model (same weights) under a threat model with attacks or a suite."""
    from ..models.entry import sha256_file
    from ..storage import load_model, read_model_metadata
    from ..storage.layout import CONFIG_FILE, EVALUATION_FILE, METRICS_FILE, MODEL_WEIGHTS

    run, ev_dir = Path(run), Path(evaluation)
    meta = read_model_metadata(run)
    if "entry" in meta["architecture"]:
        raise ValueError(f"{run} is a model of your own code ({meta['architecture']['entry']}); the zoo holds "
                         "registered architectures only (loading an entry never runs code)")
    ev = _json(ev_dir / EVALUATION_FILE, "evaluation")
    if ev.get("robust_accuracy") is None or not ev.get("threat"):
        raise ValueError(f"{ev_dir} has no robust accuracy: evaluate with --attacks or --suite")
    sha = sha256_file(run / str(meta.get("weights", MODEL_WEIGHTS)))
    if (ev.get("model") or {}).get("weights_sha256") not in (None, sha):
        raise ValueError(f"{ev_dir} evaluated other weights than {run}'s (sha256 differs): evaluate this run again")
    metrics = _json(run / METRICS_FILE, "run metrics")
    config = _json(run / CONFIG_FILE, "run config") if (run / CONFIG_FILE).is_file() else {}
    model = load_model(run)
    dataset = (meta.get("dataset") or {}).get("name") or ev.get("data", {}).get("dataset")
    arch = dict(meta["architecture"])
    threat = ev["threat"]
    return {
        "kind": CARD_KIND, "schema_version": CARD_VERSION, "name": zoo_name(name), "description": description,
        "dataset": dataset,
        "threat": {"norm": threat.get("norm"), "eps": threat.get("eps")},
        "architecture": {"name": arch.pop("name"), "options": arch},
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "training_command": command or (training_command(config) if config else None),
        "train_seconds": metrics.get("train_seconds"),
        "hardware": f"{os.cpu_count()} CPU cores, {platform.machine()} (where the card was made)",
        "clean_accuracy": metrics.get("clean_accuracy"), "clean_n": metrics.get("test_samples"),
        "robust_accuracy": ev["robust_accuracy"], "robust_n": ev.get("n"),
        "suite": ev.get("suite") or "attacks: " + ",".join(ev.get("per_attack") or {}),
        "per_attack": ev.get("per_attack"),
        "checks": checks_summary(ev.get("checks")),
        "spot_check": spot_check(model, dataset, (meta.get("spec") or {}).get("data_root")),
        "selected_epoch": meta.get("selected_epoch"),
        "weights_sha256": sha,
        "source": {"run": str(run.resolve()), "evaluation": str(ev_dir.resolve())},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def add_to_zoo(run: str | os.PathLike, name: str, evaluation: str | os.PathLike, zoo: str | os.PathLike | None = None,
               command: str | None = None, description: str = "", overwrite: bool = False) -> Path:
    """Copy ``run``'s model into the zoo as ``name`` with its card (:func:`make_card`); returns the
    entry's folder. An existing entry is replaced only with ``overwrite``."""
    from ..storage import atomic_write_json
    from ..storage.layout import MODEL_META, MODEL_WEIGHTS

    card = make_card(run, name, evaluation, command=command, description=description)
    dest = zoo_dir(zoo) / card["name"]
    if dest.exists() and not overwrite:
        raise ValueError(f"the zoo already has {card['name']!r} ({dest}); pass --overwrite to replace it")
    dest.mkdir(parents=True, exist_ok=True)
    for f in (MODEL_WEIGHTS, MODEL_META):
        shutil.copyfile(Path(run) / f, dest / f)
    atomic_write_json(dest / CARD_FILE, card)
    return dest


__all__ = ["CARD_KEYS", "CARD_KIND", "SPOT_N", "add_to_zoo", "check_card", "checks_summary", "make_card", "spot_check",
           "training_command"]
