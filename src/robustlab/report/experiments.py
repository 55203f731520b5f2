"""The report's experiments: offline retraining runs (``robustlab train --defense offline``), detector
experiments (``robustlab train-detector --out DIR``) and Noisy Student runs (``robustlab
noisy-student --out DIR``).

A detector or Noisy Student directory is no training run: :func:`read_experiment_dir` reads it as
a :class:`RunData` of its ``kind`` (its summary row, no per-run model sections), and
:func:`experiments_section` renders one card per experiment: the offline pipeline's stage table,
the detector's ROC curves (``roc.json``) and detection rates under the plain and the adaptive
attack, the Noisy Student generations (teacher, students) side by side. Plain data only: nothing
here loads a model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..storage.layout import CONFIG_FILE, DETECTOR_META, METRICS_FILE, ROC_FILE, read_json
from .data import RunData, finite_number, percent
from .markup import card_section
from .markup import escape as _e
from .markup import missing as _missing
from .plots import save_figure, tex

DETECTOR = "detector"
NOISY_STUDENT = "noisy-student"
DETECTOR_FORMAT = "robustlab-detector"  # robustlab.detection.detector.DETECTOR_FORMAT (not imported: no model code here)
OFFLINE_STAGES = (  # metrics.json key, model, test set
    ("stage1_clean_accuracy", "first model (clean training)", "organic (clean) test images"),
    ("stage1_fgsm_train_accuracy", "first model (clean training)", "FGSM training images crafted against it"),
    ("stage1_fgsm_accuracy", "first model (clean training)", "FGSM test images crafted against it"),
    ("retrained_clean_accuracy", "retrained (organic + FGSM training images)", "clean test images"),
    ("retrained_fgsm_stage1_accuracy", "retrained (organic + FGSM training images)",
     "the old FGSM test images (crafted against the first model)"),
    ("retrained_fgsm_fresh_accuracy", "retrained (organic + FGSM training images)", "fresh FGSM against the retrained model"),
)
DETECTION_COLUMNS = (  # metrics key, column
    ("success_rate", "attack success (classifier fooled)"), ("roc_auc", "ROC AUC"), ("detection_rate", "detection rate"),
    ("detection_rate_on_successful", "detected among successful"), ("fool_and_evade", "fool and evade"),
)


# --- reading the directories ---------------------------------------------------------------------
def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def experiment_kind(path: str | Path) -> str | None:
    """``"detector"`` for a train-detector directory (detector.json of the detector format),
    ``"noisy-student"`` for a noisy-student directory (metrics.json with its generations), else None."""
    p = Path(path)
    if _dict(read_json(p / DETECTOR_META)).get("format") == DETECTOR_FORMAT:
        return DETECTOR
    generations = _dict(read_json(p / METRICS_FILE)).get("generations")
    if isinstance(generations, list) and generations and all(isinstance(g, dict) and "role" in g for g in generations):
        return NOISY_STUDENT
    return None


def _read_detector(p: Path, title: str) -> RunData:
    meta, metrics = _dict(read_json(p / DETECTOR_META)), _dict(read_json(p / METRICS_FILE))
    classifier = str(meta.get("classifier_run") or metrics.get("run") or "?")
    spec = _dict(_dict(read_json(Path(classifier) / CONFIG_FILE)).get("spec"))
    layer = metrics.get("layer") or meta.get("layer")
    summary = {"dataset": spec.get("dataset"), "model": f"detector on {Path(classifier).name} ({layer})",
               "defense": "detector (train-detector)"}
    return RunData(path=p, title=title, kind=DETECTOR, config={"spec": summary},
                   metrics={**metrics, "test_samples": metrics.get("n")})


def _read_noisy_student(p: Path, title: str) -> RunData:
    metrics = _dict(read_json(p / METRICS_FILE))
    gens = [g for g in metrics.get("generations") or [] if isinstance(g, dict)]
    config = _dict(metrics.get("config"))
    last = gens[-1] if gens else {}
    summary = {"dataset": metrics.get("dataset"), "model": config.get("model"),
               "defense": f"noisy-student (teacher + {len(gens) - 1} student{'s' if len(gens) != 2 else ''}; last shown)"}
    return RunData(path=p, title=title, kind=NOISY_STUDENT, config={"spec": summary, "training": _dict(metrics.get("training"))},
                   metrics={**metrics, "clean_accuracy": last.get("clean_accuracy"), "test_samples": last.get("test_samples")})


def read_experiment_dir(path: str | Path, title: str | None = None) -> RunData | None:
    """A detector or Noisy Student directory as a RunData of that ``kind``; None for any other directory."""
    p = Path(path)
    kind = experiment_kind(p)
    name = title if title is not None else (p.name or str(p))
    if kind == DETECTOR:
        return _read_detector(p, name)
    if kind == NOISY_STUDENT:
        return _read_noisy_student(p, name)
    return None


def is_offline(run: RunData) -> bool:
    """Whether the run is an offline retraining run (its spec says so, or its metrics hold the stages)."""
    spec = run.config.get("spec") or run.model_meta.get("spec") or {}
    return spec.get("defense") == "offline" or "stage1_fgsm_accuracy" in run.metrics


# --- the ROC figure ------------------------------------------------------------------------------
def plot_roc(curves: dict[str, dict[str, Any]], out: str | Path,
             operating: dict[str, tuple[float, float]] | None = None) -> Figure:
    """One ROC curve per attack (``{"fpr": [...], "tpr": [...], "roc_auc": a}``), the chance
    diagonal, and each attack's operating point at the detector's threshold (``operating[name] =
    (false-positive rate, detection rate)``) as a marker."""
    fig = Figure(figsize=(5.6, 4.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, c) in enumerate(curves.items()):
        auc = finite_number(c.get("roc_auc"))
        label = f"{name} (AUC {auc:.3f})" if auc is not None else str(name)
        ax.plot([float(v) for v in c["fpr"]], [float(v) for v in c["tpr"]], color=f"C{i}", lw=1.8, label=tex(label))
        if operating and name in operating:
            ax.scatter([operating[name][0]], [operating[name][1]], color=f"C{i}", marker="o", s=40, zorder=3,
                       edgecolors="black", label=tex(f"{name} at the threshold"))
    ax.plot([0, 1], [0, 1], ls=":", color="gray", lw=1, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-positive rate (clean test images flagged)")
    ax.set_ylabel("true-positive rate (adversarial flagged)")
    ax.set_title("detector ROC: clean vs adversarial test images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, out)


# --- the cards -------------------------------------------------------------------------------------

def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'



def _table(headers: Sequence[str], rows: Sequence[Sequence[tuple[str, bool]]]) -> str:
    """A table from rows of (escaped cell html, numeric?)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if num else f"<td>{c}</td>" for c, num in r) + "</tr>"
                   for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _pct(v: Any) -> str:
    return _e(percent(finite_number(v)))


def offline_card(run: RunData) -> str:
    """The offline pipeline's accuracies, stage by stage."""
    m = run.metrics
    if not any(k in m for k, _, _ in OFFLINE_STAGES):
        return _missing("No stage accuracies in metrics.json (the offline pipeline did not finish).")
    off = _dict(m.get("offline"))
    rows = [[(str(1 if key.startswith("stage1") else 2), True), (_e(model), False), (_e(test), False), (_pct(m.get(key)), True)]
            for key, model, test in OFFLINE_STAGES if key in m]
    fresh, old = finite_number(m.get("retrained_fgsm_fresh_accuracy")), finite_number(m.get("retrained_fgsm_stage1_accuracy"))
    gap = (f" Here the fresh attack leaves {percent(fresh)} against {percent(old)} on the old examples."
           if fresh is not None and old is not None else "")
    return (_note(f"FGSM at {off.get('norm', '?')} eps {off.get('eps', '?')}; the retrained model saw "
                  f"{off.get('train_samples', '?')} training images (organic + perturbed). The old perturbations were "
                  "made for the first model: the honest robustness of the retrained one is the fresh attack's." + gap)
            + _table(["stage", "model", "test images", "accuracy"], rows))


def detector_card(run: RunData, slug: str, figure: Callable[..., str]) -> str:
    """The detector's setting, ROC curves and detection rates (plain vs adaptive attack)."""
    m = run.metrics
    attacks = [a for a in ("plain", "adaptive") if isinstance(m.get(a), dict)]
    if not attacks:
        return _missing("No plain / adaptive results in metrics.json.")
    parts = [_note(f"Features {m.get('layer')} ({m.get('capture')}) of {m.get('run')}; trained on {m.get('n_train')} "
                   f"training images (clean and attacked), tested on {m.get('n')} test images. Threshold at "
                   f"{percent(finite_number(m.get('target_fpr')))} false positives on the clean test images (actual "
                   f"{percent(finite_number(m.get('false_positive_rate')))}). The adaptive attack targets classifier and "
                   "detector together: the detection rate that counts is its row.")]
    roc = _dict(read_json(Path(run.path) / ROC_FILE))
    curves = {a: roc[a] for a in attacks if isinstance(roc.get(a), dict) and "fpr" in roc[a] and "tpr" in roc[a]}
    fp = finite_number(m.get("false_positive_rate"))
    operating = {a: (fp, float(m[a]["detection_rate"])) for a in curves
                 if fp is not None and finite_number(m[a].get("detection_rate")) is not None}
    parts.append(figure(f"{slug}-roc", plot_roc, curves, operating=operating, alt=f"detector ROC curves, {run.title}")
                 if curves else _missing(f"No {ROC_FILE}: run robustlab train-detector again to record the ROC curves."))
    rows = [[(f"<b>{_e(a)}</b>", False), (_e(m[a].get("attack")), False), *[(_pct(m[a].get(k)), True) for k, _ in DETECTION_COLUMNS]]
            for a in attacks]
    parts.append(_table(["attack", "as run", *[c for _, c in DETECTION_COLUMNS]], rows))
    return "".join(parts)


def robust_key(metrics: dict[str, Any]) -> str | None:
    """The Noisy Student generations' robust-accuracy key (``pgd20_accuracy`` for 20 PGD steps)."""
    steps = _dict(metrics.get("config")).get("eval_steps")
    if isinstance(steps, int) and not isinstance(steps, bool):
        return f"pgd{steps}_accuracy"
    keys = [k for g in metrics.get("generations") or [] if isinstance(g, dict) for k in g if re.fullmatch(r"pgd\d+_accuracy", k)]
    return keys[0] if keys else None


def _delta(v: Any, ref: Any) -> str:
    a, b = finite_number(v), finite_number(ref)
    return "—" if a is None or b is None else f"{100 * (a - b):+.1f} pts"


def noisy_student_card(run: RunData) -> str:
    """Teacher and students side by side: size, data, clean and robust accuracy."""
    m = run.metrics
    gens = [g for g in m.get("generations") or [] if isinstance(g, dict)]
    cfg = _dict(m.get("config"))
    key = robust_key(m)
    steps = re.fullmatch(r"pgd(\d+)_accuracy", key or "")
    robust = f"PGD-{steps.group(1)} acc ({cfg.get('eval_norm', '?')} eps {cfg.get('eval_eps', '?')})" if steps else "robust acc"
    teacher = gens[0] if gens else {}
    rows = [[(str(i), True), (f"<b>{_e(g.get('role'))}</b>", False), (_e(g.get("parameters", "—")), True),
             (_e(g.get("train_images", "—")), True), (_e(g.get("pseudo_labelled", "—")), True),
             (_pct(g.get("pseudo_label_agreement_with_truth")), True), (_pct(g.get("clean_accuracy")), True),
             (_e(_delta(g.get("clean_accuracy"), teacher.get("clean_accuracy"))), True),
             (_pct(g.get(key)) if key else "—", True), (_e(_delta(g.get(key), teacher.get(key)) if key else "—"), True)]
            for i, g in enumerate(gens)]
    labels = "soft" if cfg.get("soft_labels", True) else "hard"
    note = (f"{m.get('labelled', '?')} labelled and {m.get('unlabelled', '?')} unlabelled {m.get('dataset', '')} images; "
            f"{labels} pseudo-labels; student noise: Gaussian std {cfg.get('noise_std', '?')}, shifts up to "
            f"{cfg.get('max_shift', '?')} px, dropout {cfg.get('student_dropout', '?')}. Generation 0 is the teacher, "
            "each student learns from the one before; Δ is against the teacher.")
    if key is None or not any(key in g for g in gens):
        note += " No robust accuracy was recorded (evaluated with --pgd-steps 0)."
    return _note(note) + _table(["generation", "model", "parameters", "train images", "pseudo-labelled",
                                 "pseudo-labels right", "clean acc", "Δ clean", robust, "Δ robust"], rows)


def experiments_section(runs: Sequence[RunData], slugs: Sequence[str], figure: Callable[..., str]) -> str:
    """One card per offline run, detector and Noisy Student directory ("" when there is none)."""
    cards = []
    render: Callable[[RunData], str]
    for run, slug in zip(runs, slugs):
        if run.kind == DETECTOR:
            what, render = "detector experiment", lambda r, s=slug: detector_card(r, s, figure)  # type: ignore[misc]
        elif run.kind == NOISY_STUDENT:
            what, render = "Noisy Student", noisy_student_card
        elif is_offline(run):
            what, render = "offline adversarial retraining", offline_card
        else:
            continue
        try:
            body = render(run)
        except Exception as e:  # malformed data costs one card, never the report
            body = _missing(f"could not read this experiment's data: {type(e).__name__}: {e}")
        cards.append(f'<div class="card wide"><h3>{_e(run.title)} ({_e(what)})</h3>{body}</div>')
    return card_section("Experiments: offline retraining, detection, Noisy Student", cards)


__all__ = ["DETECTOR", "NOISY_STUDENT", "ROC_FILE", "detector_card", "experiment_kind", "experiments_section", "is_offline",
           "noisy_student_card", "offline_card", "plot_roc", "read_experiment_dir", "robust_key"]
