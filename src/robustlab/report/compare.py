"""The course exercise's comparison of training runs: clean and adversarial test accuracy per
epoch of every run in one figure (``robustlab compare``, and the first section of a report on
several runs).

The adversarial accuracy is history's ``adv_accuracy_on_correct``: the monitor attack's accuracy
over the monitor images the model classifies correctly (so a run's clean errors are not counted
twice). Runs written before that key existed fall back to ``adv_accuracy`` (over all monitor
images), and the legend says so. Each run is named by its defense, BatchNorm on/off and activation,
read from its ``config.json`` spec and ``model.json`` architecture record; nothing here loads a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..storage import atomic_write_json
from ..storage.layout import COMPARE_DATA as DATA_FILE
from ..storage.layout import COMPARE_FIGURE as FIGURE_FILE
from .data import RunData, finite_number, monitor_label, percent, read_run
from .markup import escape as _e
from .plots import save_figure, tex

ON_CORRECT = "adv_accuracy_on_correct"
OVER_ALL = "adv_accuracy"
KIND = "robustlab-compare"
ALWAYS_BATCHNORM = ("resnet18",)  # registered models whose blocks always normalise (no batchnorm option)
FALLBACK_NOTE = "adv acc over all monitor images: older run, no adv_accuracy_on_correct"


def _spec(run: RunData) -> dict[str, Any]:
    spec = run.config.get("spec") or run.model_meta.get("spec") or {}
    return spec if isinstance(spec, dict) else {}


def run_traits(run: RunData) -> dict[str, Any]:
    """The run's defense (with its options), BatchNorm (True / False / None when unknown),
    activation and monitor attack, from its recorded spec and model architecture."""
    spec = _spec(run)
    arch = run.model_meta.get("architecture") or {}
    options = spec.get("model_options") or {}
    name = arch.get("name") or spec.get("model")
    bn = arch.get("batchnorm", options.get("batchnorm"))
    if bn is None and name in ALWAYS_BATCHNORM:
        bn = True
    defense = spec.get("defense") or (run.model_meta.get("objective") or {}).get("name")
    d_opts = spec.get("defense_options") or {}
    if defense and d_opts:
        defense = f"{defense} ({', '.join(f'{k}={v}' for k, v in d_opts.items())})"
    return {"defense": defense, "batchnorm": None if bn is None else bool(bn),
            "activation": arch.get("activation", options.get("activation")), "monitor": monitor_label(run)}


def legend_label(run: RunData) -> str:
    """'pgd-at (eps=0.1), BN on, gelu' prefixed by the run's title."""
    t = run_traits(run)
    bn = {True: "BN on", False: "BN off", None: "BN ?"}[t["batchnorm"]]
    return f"{run.title}: {t['defense'] or 'defense ?'}, {bn}, {t['activation'] or 'activation ?'}"


def history_series(run: RunData) -> dict[str, Any]:
    """One run's plotted series: ``epochs`` with ``clean_accuracy`` and ``adv_accuracy`` beside
    them (None where an epoch lacks the value) and ``adv_measure``, the history key the adversarial
    values come from (``adv_accuracy_on_correct``, else ``adv_accuracy``, else None)."""
    h = run.history
    if any(finite_number(line.get(ON_CORRECT)) is not None for line in h):
        measure: str | None = ON_CORRECT
    elif any(finite_number(line.get(OVER_ALL)) is not None for line in h):
        measure = OVER_ALL
    else:
        measure = None
    return {
        "title": run.title, "path": str(run.path), "label": legend_label(run), **run_traits(run),
        "epochs": [line.get("epoch", i + 1) for i, line in enumerate(h)],
        "clean_accuracy": [finite_number(line.get("clean_accuracy")) for line in h],
        "adv_accuracy": [finite_number(line.get(measure)) if measure else None for line in h],
        "adv_measure": measure,
    }


def has_curves(run: RunData) -> bool:
    """Whether the run's history holds a test accuracy (clean or adversarial) to plot."""
    return any(finite_number(line.get(k)) is not None for line in run.history
               for k in ("clean_accuracy", ON_CORRECT, OVER_ALL))


def _points(xs: Sequence[Any], ys: Sequence[float | None]) -> tuple[list[Any], list[float]]:
    kept = [(x, y) for x, y in zip(xs, ys) if y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def plot_run_comparison(series: Sequence[dict[str, Any]], out: str | Path) -> Figure:
    """Two panels over epochs, one line per run in each (same colour): clean test accuracy (left)
    and adversarial accuracy on correctly classified originals (right; runs without it fall back
    to the accuracy over all monitor images, said in their legend entry; runs with no monitor
    have no line there)."""
    fig = Figure(figsize=(12, 4.6 + 0.22 * len(series)), layout="constrained")
    left, right = fig.subplots(1, 2, sharex=True)
    colours = [f"C{i % 10}" for i in range(len(series))]
    for s, colour in zip(series, colours):
        xs, ys = _points(s["epochs"], s["clean_accuracy"])
        if xs:
            left.plot(xs, ys, marker="o", ms=4, color=colour, label=tex(s["label"]))
        xs, ys = _points(s["epochs"], s["adv_accuracy"])
        if xs:
            note = f" [{FALLBACK_NOTE}]" if s["adv_measure"] == OVER_ALL else ""
            right.plot(xs, ys, marker="s", ms=4, ls="--", color=colour, label=tex(s["label"] + note))
    monitors = {s["monitor"] for s in series if s["adv_measure"]}
    attack = f" ({tex(next(iter(monitors)))})" if len(monitors) == 1 and None not in monitors else ""
    for ax, title, ylabel in ((left, "clean test accuracy", "clean accuracy"),
                              (right, f"adversarial accuracy on correctly classified originals{attack}",
                               "adversarial accuracy (on correct)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    if not right.lines:
        right.text(0.5, 0.5, "no monitor attack recorded", ha="center", va="center", transform=right.transAxes)
    return save_figure(fig, out)


def unique_titles(paths: Sequence[Path]) -> list[str]:
    """Each run's folder name ('parent/name' where two runs share a name)."""
    names = [p.name or str(p) for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else n for p, n in zip(paths, names)]


def write_comparison(runs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """``out_dir/compare.png`` (:func:`plot_run_comparison`) and ``out_dir/compare.json`` (the
    plotted series, one per run in the given order) for training run directories; returns the
    JSON document. A path that is no directory, or a run without test accuracies in its
    ``history.jsonl``, is a ValueError naming it."""
    paths = [Path(r) for r in runs]
    if not paths:
        raise ValueError("give at least one run directory")
    for p in paths:
        if not p.is_dir():
            raise ValueError(f"run directory not found: {p}")
    data = [read_run(p, t) for p, t in zip(paths, unique_titles(paths))]
    for d in data:
        if not has_curves(d):
            raise ValueError(f"{d.path} has no test accuracies in a history.jsonl: compare needs training runs "
                             "(robustlab train, with test data)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series = [history_series(d) for d in data]
    plot_run_comparison(series, out / FIGURE_FILE)
    doc = {"kind": KIND, "figure": FIGURE_FILE, "adv_measure_preferred": ON_CORRECT, "runs": series}
    atomic_write_json(out / DATA_FILE, doc)
    return doc



def _last(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return kept[-1] if kept else None


def epochs_comparison_section(runs: Sequence[RunData], figure: Callable[..., str]) -> str:
    """The report's first section when two runs or more have accuracy histories ("" otherwise):
    the comparison figure and each run's last-epoch numbers. ``figure`` is the page's
    ``figure(name, plot, *args, alt=...)``."""
    curves = [r for r in runs if has_curves(r)]
    if len(curves) < 2:
        return ""
    series = [history_series(r) for r in curves]
    old = [s["title"] for s in series if s["adv_measure"] == OVER_ALL]
    note = ("Adversarial accuracy is the per-epoch monitor attack's accuracy on the monitor images each model "
            "classifies correctly (clean errors are not counted twice).")
    if old:
        note += f" Older runs without that number show the accuracy over all monitor images instead: {', '.join(old)}."
    rows = "".join(
        f"<tr><td><b>{_e(s['title'])}</b></td><td>{_e(s['defense'] or '—')}</td>"
        f"<td>{_e({True: 'on', False: 'off'}.get(s['batchnorm'], '?'))}</td><td>{_e(s['activation'] or '?')}</td>"
        f'<td class="num">{_e(percent(_last(s["clean_accuracy"])))}</td>'
        f'<td class="num">{_e(percent(_last(s["adv_accuracy"])))}'
        f"{'' if s['adv_measure'] != OVER_ALL else ' (all images)'}</td></tr>" for s in series)
    table = ('<div class="scroll"><table><thead><tr><th>run</th><th>defense</th><th>BatchNorm</th><th>activation</th>'
             "<th>clean acc (last epoch)</th><th>adv acc on correct (last epoch)</th></tr></thead>"
             f"<tbody>{rows}</tbody></table></div>")
    img = figure("compare", plot_run_comparison, series, alt="clean and adversarial accuracy per epoch, all runs")
    return (f'<h2>Runs compared: clean and adversarial accuracy per epoch</h2><p class="note">{_e(note)}</p>'
            f'<div class="grid"><div class="card wide">{img}</div></div>{table}')


__all__ = ["DATA_FILE", "FIGURE_FILE", "epochs_comparison_section", "has_curves", "history_series", "legend_label",
           "plot_run_comparison", "run_traits", "unique_titles", "write_comparison"]
