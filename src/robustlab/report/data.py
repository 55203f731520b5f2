"""A run directory (or an evaluation directory) as plain data for the report: the files it reads, never a model.

``config.json``, ``model.json``, ``history.jsonl``, ``metrics.json`` and the ``artifacts/`` that
:func:`robustlab.runs.artifacts.write_artifacts` computed, through the shared readers in
:mod:`robustlab.storage.layout`. A missing or unreadable file gives an empty field, never an
error: the report shows what there is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..storage.layout import (
    ARTIFACTS_DIR,
    CONFIG_FILE,
    MANIFEST,
    METRICS_FILE,
    MODEL_META,
    VISUAL_ARTIFACTS,
    read_history,
    read_json,
)

EVALUATION_KIND = "robustlab-evaluation"  # evaluation.json of an evaluation directory (runs.evaluation_dir.KIND)
ARTIFACT_SECTIONS = ("examples", "feature_maps", "loss_surface", "filters", "class_visualisations", *VISUAL_ARTIFACTS)


def finite_number(v: Any) -> float | None:
    """``v`` as a float when it is a finite int or float (not a bool), else None: the values a
    report may print or plot from files it does not trust."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def percent(v: float | None, digits: int = 1) -> str:
    """'91.2%' for 0.912 and '—' for None: how figures and tables alike write an accuracy."""
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def read_tensors(path: str | Path) -> dict[str, np.ndarray] | None:
    """A safetensors file as numpy arrays, or None when missing or unreadable."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception:  # any broken file is "missing" to a report
        return None


def read_artifacts(run_dir: str | Path) -> dict[str, Any]:
    """The artifacts manifest and, per section it lists, ``{"meta": ..., "data": arrays}``;
    sections the manifest marks missing, or whose file is unreadable, get ``{"missing": reason}``."""
    base = Path(run_dir) / ARTIFACTS_DIR
    manifest = read_json(base / MANIFEST)
    if not isinstance(manifest, dict):
        return {}
    out: dict[str, Any] = {"manifest": manifest}
    for section in ARTIFACT_SECTIONS:
        meta = manifest.get(section)
        if not isinstance(meta, dict):
            out[section] = {"missing": "not computed"}
            continue
        if "missing" in meta:
            out[section] = {"missing": str(meta["missing"])}
            continue
        name = str(meta.get("file", ""))
        data = read_tensors(base / name) if name and Path(name).name == name else None
        out[section] = {"meta": meta, "data": data} if data is not None else {"missing": f"{name or 'file'} unreadable"}
    return out


@dataclass
class RunData:
    """Everything the report knows about one run, read from its files."""

    path: Path
    title: str
    config: dict[str, Any] = field(default_factory=dict)
    model_meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    kind: str = "run"  # a run or evaluation directory; else an experiment (report.experiments): no per-run model sections

    @property
    def class_names(self) -> list[str]:
        """The dataset's class names (model.json, else the artifacts manifest; [] when neither)."""
        names = (self.model_meta.get("dataset") or {}).get("class_names")
        if not names:
            names = (self.artifacts.get("manifest") or {}).get("class_names")
        return [str(n) for n in names] if isinstance(names, list) else []

    @property
    def evaluation(self) -> dict[str, Any]:
        """The latest attack evaluation in metrics.json (``robustlab evaluate``, else the demo's)."""
        m = self.metrics
        if "robust_accuracy" in m or "per_attack" in m:
            ev: dict[str, Any] = m["evaluation"] if isinstance(m.get("evaluation"), dict) else {}
            return {"robust_accuracy": m.get("robust_accuracy", ev.get("robust_accuracy")),
                    "per_attack": m.get("per_attack") or ev.get("per_attack") or {},
                    "eps": m.get("eps", (ev.get("threat") or {}).get("eps")),
                    "norm": m.get("norm", (ev.get("threat") or {}).get("norm")),
                    "source": "robustlab evaluate", "details": ev}
        for key, value in m.items():
            if isinstance(value, dict) and "per_attack" in value and "robust_accuracy" in value:
                threat = value.get("threat") or {}
                return {"robust_accuracy": value.get("robust_accuracy"), "per_attack": value.get("per_attack") or {},
                        "eps": threat.get("eps"), "norm": threat.get("norm"), "source": key, "details": value}
        return {}

    @property
    def checks(self) -> list[dict[str, Any]]:
        """The gradient-masking checks recorded with the evaluation."""
        found = self.metrics.get("checks")
        if not found:
            found = self.evaluation.get("details", {}).get("checks")
        return [c for c in (found or []) if isinstance(c, dict)]

    @property
    def eps_curve(self) -> list[dict[str, Any]]:
        """metrics.json's robust accuracy over eps, points with a numeric eps and accuracy only."""
        curve = self.metrics.get("eps_curve") or []
        return [c for c in curve if isinstance(c, dict) and finite_number(c.get("eps")) is not None
                and finite_number(c.get("robust_accuracy")) is not None]

    @property
    def iterations_curve(self) -> list[dict[str, Any]]:
        """Robust accuracy over attack iterations, points with numeric steps and accuracy only."""
        curve = self.metrics.get("iterations_curve") or self.evaluation.get("details", {}).get("iterations_curve") or []
        return [c for c in curve if isinstance(c, dict) and finite_number(c.get("steps")) is not None
                and finite_number(c.get("robust_accuracy")) is not None]


# --- evaluation directories (robustlab evaluate --out DIR) ---------------------------------------
EXAMPLES_SHOWN = 8


def _label(identity: dict[str, Any], *keys: str) -> str | None:
    """The first of ``keys`` an identity record holds, as text ('net.py:Net', 'pngs', 'digits (test)')."""
    for k in keys:
        if identity.get(k):
            v = identity[k]
            return f"{v} ({identity['split']})" if k == "dataset" and identity.get("split") else str(v)
    return None


def evaluation_examples(ev_dir: Path, eps: Any) -> dict[str, Any]:
    """The artifacts an evaluation directory gives a report: its first broken samples
    (adversarial.safetensors) as the 'examples' section; the sections that need a model are missing."""
    from ..storage.layout import ATTACK_EXAMPLES

    none = {s: {"missing": "an evaluation directory holds results, not a model"} for s in ARTIFACT_SECTIONS}
    t = read_tensors(ev_dir / ATTACK_EXAMPLES)
    keys = ("x", "x_adv", "y", "clean_pred", "pred_adv", "clean_conf", "conf_adv")
    if t is None or not all(k in t for k in keys):
        none["examples"] = {"missing": "no adversarial.safetensors (robustlab evaluate ... --out DIR --save-adversarial)"}
        return {"manifest": {"eps": eps}, **none}
    broken = np.flatnonzero((t["clean_pred"] == t["y"]) & (t["pred_adv"] != t["y"]))[:EXAMPLES_SHOWN]
    if not len(broken):
        none["examples"] = {"missing": "no sample was broken"}
        return {"manifest": {"eps": eps}, **none}
    data = {"x": t["x"][broken], "x_adv": t["x_adv"][broken], "pred_clean": t["clean_pred"][broken],
            "conf_clean": t["clean_conf"][broken], "pred_adv": t["pred_adv"][broken], "conf_adv": t["conf_adv"][broken],
            "success": np.ones(len(broken), dtype=bool)}
    meta = {"attack": "the per-sample worst case of the evaluation's attacks", "indices": broken.tolist()}
    return {"manifest": {"eps": eps}, **none, "examples": {"meta": meta, "data": data}}


def read_evaluation_dir(ev_dir: str | Path, doc: dict[str, Any], title: str | None = None) -> RunData:
    """An evaluation directory as a RunData: its evaluation.json as metrics, the model's and the
    data's identity as the summary's model and dataset, its examples as artifacts."""
    p = Path(ev_dir)
    threat_raw, model_raw, data_raw = doc.get("threat"), doc.get("model"), doc.get("data")
    threat: dict[str, Any] = threat_raw if isinstance(threat_raw, dict) else {}
    model: dict[str, Any] = model_raw if isinstance(model_raw, dict) else {}
    data: dict[str, Any] = data_raw if isinstance(data_raw, dict) else {}
    metrics: dict[str, Any] = {k: doc[k] for k in ("clean_accuracy", "robust_accuracy", "per_attack", "checks", "eps_curve",
                                   "iterations_curve", "corruptions", "mean_corruption_accuracy", "evaluate_seconds")
               if k in doc}
    metrics.update(eps=threat.get("eps"), norm=threat.get("norm"), test_samples=doc.get("n"),
                   evaluated_samples=doc.get("n"), evaluation_clean_accuracy=doc.get("clean_accuracy"),
                   evaluation={k: v for k, v in doc.items() if k != "per_sample"})
    if "robust_accuracy" not in doc:
        for k in ("per_attack", "evaluation"):
            metrics.pop(k, None)
    data_name = _label(data, "dataset", "path")
    spec = {"dataset": data_name, "model": _label(model, "entry", "run"), "defense": "(evaluation directory)"}
    dataset = {"name": data_name, "class_names": data.get("class_names") or []}
    return RunData(path=p, title=title if title is not None else (p.name or str(p)), config={"spec": spec},
                   model_meta={"dataset": dataset}, metrics=metrics, history=[],
                   artifacts=evaluation_examples(p, threat.get("eps")))


def read_run(run_dir: str | Path, title: str | None = None) -> RunData:
    """Read one run directory, an evaluation directory (``robustlab evaluate --out``; see
    :func:`read_evaluation_dir`), or a detector or Noisy Student directory
    (:func:`robustlab.report.experiments.read_experiment_dir`); missing files give empty fields."""
    from ..storage.layout import EVALUATION_FILE

    p = Path(run_dir)
    doc = read_json(p / EVALUATION_FILE)
    if isinstance(doc, dict) and doc.get("kind") == EVALUATION_KIND:
        return read_evaluation_dir(p, doc, title)
    from .experiments import read_experiment_dir  # a detector or Noisy Student directory

    experiment = read_experiment_dir(p, title)
    if experiment is not None:
        return experiment
    cfg, meta, metrics = read_json(p / CONFIG_FILE), read_json(p / MODEL_META), read_json(p / METRICS_FILE)
    return RunData(
        path=p,
        title=title if title is not None else (p.name or str(p)),
        config=cfg if isinstance(cfg, dict) else {},
        model_meta=meta if isinstance(meta, dict) else {},
        metrics=metrics if isinstance(metrics, dict) else {},
        history=read_history(p, strict=False),
        artifacts=read_artifacts(p),
    )


def class_label(run: RunData, k: Any) -> str:
    """'Bag (8)' for class index ``k`` ('8' without a name, '?' when ``k`` is no index)."""
    names = run.class_names
    try:
        i = int(k)
    except (TypeError, ValueError):
        return "?"
    return f"{names[i]} ({i})" if 0 <= i < len(names) and names[i] != str(i) else str(i)


def example_captions(data: dict[str, np.ndarray], class_names: Sequence[str]) -> list[str]:
    """'Shirt 91.2% → Bag 88.5%' per adversarial example (class indices when names are missing)."""
    def name(k: int) -> str:
        return str(class_names[k]) if 0 <= k < len(class_names) else str(k)

    out = []
    for pc, cc, pa, ca in zip(data["pred_clean"], data["conf_clean"], data["pred_adv"], data["conf_adv"]):
        out.append(f"{name(int(pc))} {100 * float(cc):.1f}% → {name(int(pa))} {100 * float(ca):.1f}%")
    return out


def monitor_label(run: RunData) -> str | None:
    """'pgd-20, linf eps 0.1': the attack behind history's adv_accuracy (from the run's spec)."""
    spec = run.config.get("spec") or run.model_meta.get("spec") or {}
    m = spec.get("monitor")
    if not isinstance(m, dict):
        return None
    name = str(m.get("attack", "pgd"))
    if m.get("steps") is not None:
        name += f"-{m['steps']}"
    eps = finite_number(m.get("eps"))
    return f"{name}, {m.get('norm', 'linf')} eps {eps:g}" if eps is not None else name


def _with_options(name: Any, options: dict[str, Any]) -> Any:
    """'small-cnn (channels=[8, 16])': a name with its options, when both are given."""
    if name and options:
        return f"{name} ({', '.join(f'{k}={v}' for k, v in options.items())})"
    return name


def run_summary(run: RunData) -> dict[str, Any]:
    """One summary-table row: dataset, model, defense, epochs, accuracies, eps, wall time."""
    spec = run.config.get("spec") or run.model_meta.get("spec") or {}
    arch = run.model_meta.get("architecture") or {}
    training = run.config.get("training") or run.model_meta.get("training") or {}
    dataset = spec.get("dataset") or (run.model_meta.get("dataset") or {}).get("name")
    model = _with_options(spec.get("model") or arch.get("name"), spec.get("model_options") or {})
    defense = _with_options(spec.get("defense") or (run.model_meta.get("objective") or {}).get("name"),
                            spec.get("defense_options") or {})
    planned = training.get("epochs") or run.metrics.get("epochs")
    done = len(run.history) or None
    ev = run.evaluation
    details = ev.get("details") or {}
    train_s = finite_number(run.metrics.get("train_seconds"))
    if train_s is None and run.history:
        train_s = sum(finite_number(h.get("seconds")) or 0.0 for h in run.history)
    last = run.history[-1] if run.history else {}
    return {
        "title": run.title,
        "dataset": dataset,
        "model": model,
        "defense": defense,
        "epochs": planned if done is None else (done if planned in (None, done) else f"{done}/{planned}"),
        "clean_accuracy": finite_number(run.metrics.get("clean_accuracy", last.get("clean_accuracy"))),
        "robust_accuracy": finite_number(ev.get("robust_accuracy")),
        "per_attack": {str(k): finite_number(v) for k, v in (ev.get("per_attack") or {}).items()},
        "eps": finite_number(ev.get("eps")),
        "norm": ev.get("norm"),
        "monitor_adv_accuracy": finite_number(run.metrics.get("monitor_adv_accuracy", last.get("adv_accuracy"))),
        "monitor": monitor_label(run),
        "train_seconds": train_s,
        "evaluate_seconds": finite_number(run.metrics.get("evaluate_seconds")),
        "test_samples": run.metrics.get("test_samples"),
        "per_attack_mode": details.get("per_attack_mode"),
        # the attacked subset, which may be smaller than the clean-accuracy test set
        "robust_n": details.get("n", run.metrics.get("evaluated_samples")),
        "robust_clean_accuracy": finite_number(details.get("clean_accuracy", run.metrics.get("evaluation_clean_accuracy"))),
    }
