"""The report page: ``report.html``, one self-contained file built from run directories.

The page skeleton is ``template.html`` (a :class:`string.Template`) with ``report.css`` inlined;
figures are written as PNGs beside it and inlined as ``data:`` URIs, so the page has no scripts,
fonts or network references. Each section is rendered by one function; a section whose data is
missing or malformed shows a one-line note instead, never costing the report.
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from ..evaluation.corruptions import mean_corruption_accuracy
from ..storage import atomic_write_text
from ..storage.layout import REPORT_FILE
from . import plots
from .compare import epochs_comparison_section
from .data import RunData, class_label, example_captions, finite_number, monitor_label, percent, read_run, run_summary
from .experiments import experiments_section
from .generative import generative_section
from .markup import escape as _e
from .markup import missing as _missing
from .visual import visual_section

STATUS_COLOURS = {"PASS": "#1a7f37", "WARN": "#b35900", "FAIL": "#c62828"}


# --- HTML pieces -----------------------------------------------------------------------------


def _seconds(v: float | None) -> str:
    """'12.3 s', '4 min 05 s' or '2 h 03 min'."""
    if v is None:
        return "—"
    if v < 90:
        return f"{v:.1f} s"
    m, s = divmod(int(round(v)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _table(headers: Sequence[str], rows: Sequence[Sequence[tuple[str, bool]]]) -> str:
    """A table from rows of (already-escaped cell html, numeric?)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if num else f"<td>{c}</td>" for c, num in r) + "</tr>"
                   for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s[:40] or "run"


def _unique(keys: Iterable[str]) -> list[str]:
    """The keys in first-seen order, each once."""
    return list(dict.fromkeys(keys))


class _Page:
    """Draws figures into ``out_dir`` and inlines them in the page."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def figure(self, name: str, plot: Callable[..., Any], *args: Any, alt: str, **kwargs: Any) -> str:
        """``plot(*args, out_dir/name.png, **kwargs)`` as an ``<img>`` with a data URI, or a note
        when drawing fails."""
        path = self.out_dir / f"{name}.png"
        try:
            plot(*args, path, **kwargs)
        except Exception as e:  # a malformed file must cost one figure, not the report
            return _missing(f"could not draw {alt}: {type(e).__name__}: {e}")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


class _Missing(Exception):
    """A section's data is absent: the section shows this message as a note instead."""


# --- sections across runs --------------------------------------------------------------------
def _n_note(n: Any, clean: float | None = None) -> str:
    """'n=1000' under an accuracy (and the clean accuracy on that subset when it differs)."""
    if not isinstance(n, int) or isinstance(n, bool):
        return ""
    extra = f"<br>clean {_e(percent(clean))}" if clean is not None else ""
    return f"<br><small>n={n}{extra}</small>"


def _modes(rows: list[dict[str, Any]]) -> str:
    """How each run's per-attack numbers were measured: each attack on its own, or cumulative
    (a cascade: each attack only on the samples still robust after the ones before it)."""
    text = {"independent": "each attack on its own", "cumulative": "cumulative (each attack only on samples still robust)"}
    groups: dict[str, list[str]] = {}
    for r in rows:
        if r["per_attack"]:
            mode = text.get(r["per_attack_mode"], "as recorded by robustlab evaluate")
            groups.setdefault(mode, []).append(str(r["title"]))
    if not groups:
        return "none recorded"
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{', '.join(t)}: {m}" for m, t in groups.items())


def _summary_row(r: dict[str, Any], attacks: Sequence[str]) -> list[tuple[str, bool]]:
    """One run's summary cells."""
    eps = "—" if r["eps"] is None else f"{r['norm'] or ''} {r['eps']:g}".strip()
    wall = []
    if r["train_seconds"] is not None:
        wall.append(f"train {_seconds(r['train_seconds'])}")
    if r["evaluate_seconds"] is not None:
        wall.append(f"evaluate {_seconds(r['evaluate_seconds'])}")
    subset_clean = r.get("robust_clean_accuracy") if r.get("robust_n") != r.get("test_samples") else None
    monitor = f'<br><small>{_e(r["monitor"])}</small>' if r["monitor"] and r["monitor_adv_accuracy"] is not None else ""
    return [
        (f"<b>{_e(r['title'])}</b>", False), (_e(r["dataset"] or "—"), False), (_e(r["model"] or "—"), False),
        (_e(r["defense"] or "—"), False), (_e(r["epochs"] if r["epochs"] is not None else "—"), True),
        (_e(percent(r["clean_accuracy"])) + _n_note(r.get("test_samples")), True),
        (f"<b>{_e(percent(r['robust_accuracy']))}</b>" + _n_note(r.get("robust_n"), subset_clean), True),
        *[(_e(percent(r["per_attack"].get(a))), True) for a in attacks],
        (_e(eps), True),
        (_e(percent(r["monitor_adv_accuracy"])) + monitor, True),
        (_e(", ".join(wall) or "—"), False),
    ]


def _summary_section(rows: list[dict[str, Any]]) -> str:
    """One row per run: what was trained, how, and the accuracies it reached."""
    attacks = _unique(k for r in rows for k in r["per_attack"])
    headers = ["run", "dataset", "model", "defense", "epochs", "clean acc", "robust acc (worst)",
               *attacks, "eps", "monitor adv acc", "wall time"]
    note = ('<p class="note">Robust accuracy is the per-sample worst case over all attacks at the given eps, '
            "on the n test images attacked (with the clean accuracy on those same images when they are a subset); "
            f"per-attack columns: {_e(_modes(rows))}. "
            "Monitor adv acc is the attack measured during training on a test subset.</p>")
    if not any(r["robust_accuracy"] is not None for r in rows):
        note += _missing("No attack evaluation in any metrics.json (run robustlab evaluate RUN --attacks fgsm,pgd).")
    return "<h2>Summary</h2>" + _table(headers, [_summary_row(r, attacks) for r in rows]) + note


def _delta(v: float | None, ref: float | None) -> str:
    """'+12.5 pts': the difference of two accuracies in percentage points."""
    return "—" if v is None or ref is None else f"{100 * (v - ref):+.1f} pts"


def _comparison_section(page: _Page, runs: Sequence[RunData], rows: list[dict[str, Any]]) -> str:
    """Bars and eps curves of all runs side by side, and each run's difference from the first."""
    parts = ["<h2>Comparison</h2>"]
    if not any(r["clean_accuracy"] is not None or r["robust_accuracy"] is not None for r in rows):
        return "\n".join([*parts, _missing("No accuracies recorded in any run's metrics.json.")])
    parts.append('<div class="grid"><div class="card">'
                 + page.figure("comparison", plots.plot_comparison, rows, alt="clean vs robust accuracy per run") + "</div>")
    curves = {d.title: d.eps_curve for d in runs if len(d.eps_curve) > 1}
    if len(curves) > 1:
        alt = "robust accuracy vs eps for all runs"
        parts.append('<div class="card">' + page.figure("comparison-eps", plots.plot_eps_comparison, curves, alt=alt) + "</div>")
    parts.append("</div>")
    base = rows[0]
    body = [[(f"<b>{_e(r['title'])}</b>", False), (_e(percent(r["clean_accuracy"])), True),
             (_e(_delta(r["clean_accuracy"], base["clean_accuracy"])), True),
             (_e(percent(r["robust_accuracy"])), True), (_e(_delta(r["robust_accuracy"], base["robust_accuracy"])), True),
             (_e("—" if r["eps"] is None else f"{r['eps']:g}"), True)] for r in rows]
    parts.append(_table(["run", "clean acc", f"Δ clean vs {base['title']}", "robust acc (worst)",
                         f"Δ robust vs {base['title']}", "eps"], body))
    return "\n".join(parts)


def _corruption_mean(row: dict[int, float] | None) -> float | None:
    """One corruption's accuracy averaged over its severities (None when there are none)."""
    mean = mean_corruption_accuracy({"_": row}) if row else math.nan
    return None if math.isnan(mean) else mean


def _corruption_table(rows: list[dict[str, Any]], runs: Sequence[RunData]) -> str:
    """One table across runs: clean and worst-case robust accuracy beside the mean accuracy under
    each corruption (over severities 1-5) and overall."""
    names = _unique(name for d in runs for name in (d.metrics.get("corruptions") or {}))
    body = []
    for r, d in zip(rows, runs):
        table = d.metrics.get("corruptions") or {}
        body.append([(f"<b>{_e(r['title'])}</b>", False), (_e(percent(r["clean_accuracy"])), True),
                     (_e(percent(r["robust_accuracy"])), True),
                     (f"<b>{_e(percent(finite_number(d.metrics.get('mean_corruption_accuracy'))))}</b>", True),
                     *[(_e(percent(_corruption_mean(table.get(n)))), True) for n in names]])
    note = ('<p class="note">Natural robustness: accuracy on corrupted test images (mean over severities 1-5), '
            "beside the adversarial numbers: robustness to an eps-ball says little about noise, blur, contrast, "
            "brightness, rotation or shifts, so both are measured.</p>")
    return ("<h2>Adversarial and natural robustness</h2>"
            + _table(["run", "clean acc", "robust acc (worst)", "corruptions (mean)", *names], body) + note)


# --- sections per run: (page, run, file-name slug) -> html -----------------------------------
Render = Callable[[_Page, RunData, str], str]


def _accuracy(page: _Page, d: RunData, slug: str) -> str:
    if not d.history:
        return _missing("No history.jsonl: accuracy over epochs not available.")
    if not any(finite_number(h.get("clean_accuracy")) is not None for h in d.history):
        return _missing("history.jsonl has no test accuracies (trained without test data).")
    return page.figure(f"{slug}-accuracy", plots.plot_accuracy_history, d.history, adv_label=monitor_label(d),
                       alt=f"accuracy over epochs, {d.title}")


def _robustness_curves(page: _Page, d: RunData, slug: str) -> str:
    if len(d.eps_curve) > 1:
        eps = page.figure(f"{slug}-eps", plots.plot_eps_curve, d.eps_curve, clean_accuracy=finite_number(d.metrics.get("clean_accuracy")),
                          alt=f"robust accuracy vs eps, {d.title}")
    else:
        ev = d.evaluation
        one = f" (only eps={ev['eps']:g} evaluated)" if finite_number(ev.get("eps")) is not None else ""
        eps = _missing(f"No robust-accuracy curve over eps{one}; run robustlab evaluate RUN --eps 0.05,0.1,0.2.")
    if len(d.iterations_curve) > 1:
        steps = page.figure(f"{slug}-iterations", plots.plot_iterations_curve, d.iterations_curve,
                            alt=f"robust accuracy vs attack iterations, {d.title}")
    else:
        steps = _missing("No robust accuracy vs attack iterations recorded.")
    return eps + steps


def _corruptions(page: _Page, d: RunData, slug: str) -> str:
    table = d.metrics.get("corruptions")
    if not isinstance(table, dict) or not table:
        return _missing("No corruption table; run robustlab evaluate RUN --corruptions.")
    return page.figure(f"{slug}-corruptions", plots.plot_corruptions, table,
                       clean_accuracy=finite_number(d.metrics.get("evaluation_clean_accuracy", d.metrics.get("clean_accuracy"))),
                       alt=f"accuracy under common corruptions, {d.title}")


def _checks(page: _Page, d: RunData, slug: str) -> str:
    cs = d.checks
    if not cs:
        return _missing("No gradient-masking checks recorded in metrics.json.")
    body = []
    for c in cs:
        status = str(c.get("status", "?")).upper()
        colour = STATUS_COLOURS.get(status, "#6b7280")
        body.append([(_e(c.get("name", "")), False),
                     (f'<span class="badge" style="background:{colour}">{_e(status)}</span>', False),
                     (_e(c.get("evidence", "")), False)])
    n_warn = sum(1 for c in cs if str(c.get("status", "")).upper() != "PASS")
    verdict = (f'<p class="note">{n_warn} of {len(cs)} checks did not pass: the robust accuracy may be '
               "overestimated (gradient masking).</p>") if n_warn else f'<p class="note">All {len(cs)} checks passed.</p>'
    return _table(["check", "status", "evidence"], body) + verdict


def _artifact(d: RunData, key: str, what: str) -> dict[str, Any]:
    """The artifacts section ``key`` ({"meta", "data"}); raises _Missing naming ``what`` when absent."""
    if not d.artifacts:
        raise _Missing("No artifacts (run robustlab report without --no-artifacts, or robustlab.runs.artifacts.write_artifacts).")
    sec = d.artifacts[key]
    if "missing" in sec:
        raise _Missing(f"{what} not available: {sec['missing']}.")
    return sec


def _examples(page: _Page, d: RunData, slug: str) -> str:
    sec = _artifact(d, "examples", "Adversarial examples")
    caps = example_captions(sec["data"], d.class_names)
    img = page.figure(f"{slug}-examples", plots.plot_adversarial_examples, sec["data"], d.class_names,
                      eps=finite_number(d.artifacts["manifest"].get("eps")), alt=f"adversarial examples, {d.title}: " + "; ".join(caps))
    fooled = int(np.asarray(sec["data"]["success"]).sum())
    head = (f'<p class="note">{_e(sec["meta"].get("attack", "PGD"))} on {len(caps)} correctly classified test images '
            f"(test indices {_e(', '.join(str(i) for i in sec['meta'].get('indices', [])))}); {fooled} of {len(caps)} fooled. "
            "Captions: prediction and confidence before → after the attack.</p>")
    return head + img + '<ul class="caps">' + "".join(f"<li>{_e(c)}</li>" for c in caps) + "</ul>"


def _feature_maps(page: _Page, d: RunData, slug: str) -> str:
    sec = _artifact(d, "feature_maps", "Feature maps")
    layers = sec["meta"].get("layers") or []
    note = (f'<p class="note">Test image {_e(sec["meta"].get("index"))}; for each layer the channel whose activation the '
            "attack changes most. " + ("" if len(layers) > 1 else "No denoising block in this model.") + "</p>")
    return note + page.figure(f"{slug}-features", plots.plot_feature_maps, sec["data"], layers, alt=f"feature maps, {d.title}")


def _loss_surface(page: _Page, d: RunData, slug: str) -> str:
    sec = _artifact(d, "loss_surface", "Loss surface")
    meta, arr = sec["meta"], sec["data"]
    loss = np.asarray(arr["loss"])
    centre = loss[loss.shape[0] // 2, loss.shape[1] // 2]
    note = (f'<p class="note">Test image {_e(meta.get("index"))}, true class {_e(class_label(d, meta.get("label")))}: '
            f"loss {centre:.3f} at the clean input, max {loss.max():.3f} over the grid. A smooth bowl suggests honest "
            "gradients; a jagged or flat surface with a sharp rise away from the centre suggests gradient masking.</p>")
    return note + page.figure(f"{slug}-loss-surface", plots.plot_loss_surface, arr["coords"], loss,
                              eps=finite_number(d.artifacts["manifest"].get("eps")), alt=f"loss surface, {d.title}")


def _filters(page: _Page, d: RunData, slug: str) -> str:
    sec = _artifact(d, "filters", "First-layer filters")
    meta = sec["meta"]
    what = "first-layer filters" if meta.get("kind") != "linear" else "first-layer weights"
    return page.figure(f"{slug}-filters", plots.plot_filters, sec["data"]["weight"], title=f"{what} ({meta.get('layer', '')})",
                       alt=f"{what}, {d.title}")


def _class_visualisations(page: _Page, d: RunData, slug: str) -> str:
    sec = _artifact(d, "class_visualisations", "Class visualisations")
    return page.figure(f"{slug}-classes", plots.plot_class_visualisations, sec["data"]["images"], d.class_names,
                       probabilities=sec["meta"].get("target_probability"), alt=f"class visualisations, {d.title}")


def _safe(render: Render, page: _Page, d: RunData, slug: str) -> str:
    """``render``'s html, or a note when its data is missing or malformed."""
    try:
        return render(page, d, slug)
    except _Missing as e:
        return _missing(str(e))
    except Exception as e:  # malformed data costs one section, never the report
        return _missing(f"could not read this section's data: {type(e).__name__}: {e}")


def _model_runs(runs: Sequence[RunData], slugs: Sequence[str]) -> tuple[list[RunData], list[str]]:
    """The run and evaluation directories with their slugs: the experiments (detector, Noisy
    Student; report.experiments) have no model of their own to show per run."""
    kept = [(d, s) for d, s in zip(runs, slugs) if d.kind == "run"]
    return [d for d, _ in kept], [s for _, s in kept]


def _per_run(page: _Page, runs: Sequence[RunData], slugs: Sequence[str], heading: str, render: Render,
             wide: bool = False) -> str:
    """A heading over one card per run ("" when only experiment directories are given)."""
    runs, slugs = _model_runs(runs, slugs)
    if not runs:
        return ""
    cards = [f'<div class="card{" wide" if wide else ""}"><h3>{_e(d.title)}</h3>{_safe(render, page, d, slug)}</div>'
             for d, slug in zip(runs, slugs)]
    return "\n".join([f'<h2>{_e(heading)}</h2><div class="grid">', *cards, "</div>"])


def _learned_row(page: _Page, runs: Sequence[RunData], slugs: Sequence[str], label: str, render: Render) -> str:
    """One table row: ``render``'s html for each run."""
    return f"<tr><th>{label}</th>" + "".join(f"<td>{_safe(render, page, d, s)}</td>" for d, s in zip(runs, slugs)) + "</tr>"


def _learned_section(page: _Page, runs: Sequence[RunData], slugs: Sequence[str]) -> str:
    """First-layer filters and class visualisations, one column per run."""
    runs, slugs = _model_runs(runs, slugs)
    if not runs:
        return ""
    return "\n".join([
        "<h2>What the models learned: first-layer filters and class visualisations</h2>"
        '<p class="note">Filters: red positive, blue negative weights, each filter on its own scale. Class '
        "visualisations: the input that maximises each class's logit (gradient ascent from grey with an L2 "
        "penalty). Adversarially trained models tend to show smoother filters and more recognisable class images.</p>",
        '<table class="side"><thead><tr><th></th>' + "".join(f"<th>{_e(d.title)}</th>" for d in runs) + "</tr></thead><tbody>",
        _learned_row(page, runs, slugs, "filters", _filters),
        _learned_row(page, runs, slugs, "classes", _class_visualisations),
        "</tbody></table>",
    ])


# --- the page --------------------------------------------------------------------------------
def _titles(run_paths: Sequence[Path]) -> list[str]:
    """Each run's folder name ('parent/name' where two runs share a name)."""
    names = [p.name or str(p) for p in run_paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else n for p, n in zip(run_paths, names)]


def _resource(name: str) -> str:
    """A file shipped beside this module (the page template, the styles)."""
    return files("robustlab.report").joinpath(name).read_text(encoding="utf-8")


def build_report(runs: Sequence[str | Path], out_dir: str | Path, titles: Sequence[str] | None = None) -> Path:
    """Write the figures and a self-contained ``report.html`` for ``runs`` into ``out_dir``;
    returns the HTML's path. Missing data costs a one-line note, never the report."""
    run_paths = [Path(r) for r in runs]
    if not run_paths:
        raise ValueError("give at least one run directory")
    for p in run_paths:
        if not p.is_dir():
            raise ValueError(f"run directory not found: {p}")
    if titles is not None and len(titles) != len(run_paths):
        raise ValueError(f"{len(titles)} titles for {len(run_paths)} runs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = [read_run(p, t) for p, t in zip(run_paths, titles if titles is not None else _titles(run_paths))]
    rows = [run_summary(d) for d in data]
    slugs = [f"{i + 1:02d}-{_slug(d.title)}" for i, d in enumerate(data)]
    page = _Page(out)

    sections = [_summary_section(rows)]
    epochs = epochs_comparison_section(data, page.figure)  # two runs or more with histories: the course's figure first
    if epochs:
        sections.insert(0, epochs)
    if len(data) > 1:
        sections.append(_comparison_section(page, data, rows))
    sections.append(experiments_section(data, slugs, page.figure))  # offline, detector, Noisy Student ("" if none)
    sections.append(_per_run(page, data, slugs, "Accuracy over epochs", _accuracy))
    sections.append(_per_run(page, data, slugs, "Robust accuracy vs eps and attack iterations", _robustness_curves))
    if any(isinstance(d.metrics.get("corruptions"), dict) for d in data):
        sections.append(_corruption_table(rows, data))
        sections.append(_per_run(page, data, slugs, "Natural robustness: accuracy under common corruptions", _corruptions))
    sections.append(_per_run(page, data, slugs, "Gradient-masking checks", _checks))
    sections.append(_per_run(page, data, slugs, "Adversarial examples", _examples, wide=True))
    sections.append(_per_run(page, data, slugs, "Feature maps", _feature_maps))
    sections.append(_per_run(page, data, slugs, "Loss surface", _loss_surface, wide=True))
    sections.append(_learned_section(page, data, slugs))
    sections.append(visual_section(data, slugs, page.figure))  # decision regions, channels, neighbours ("" if none)
    generative = generative_section(data, slugs, page.figure)  # GAN / CycleGAN / AdvGAN runs only
    if generative:
        sections.append(generative)

    doc = Template(_resource("template.html")).substitute(
        title=_e(", ".join(d.title for d in data)),
        css=_resource("report.css"),
        n_runs=f"{len(data)} run{'s' if len(data) > 1 else ''}",
        generated=_e(time.strftime("%Y-%m-%d %H:%M")),
        run_list=", ".join(f"<b>{_e(d.title)}</b> (<code>{_e(d.path)}</code>)" for d in data),
        sections="\n".join(sections),
    )
    path = out / REPORT_FILE
    atomic_write_text(path, doc)
    return path
