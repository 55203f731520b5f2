"""The report's generative section: sample grids over epochs, IS / FD and loss curves of a GAN run,
code arithmetic, unrestricted examples, CycleGAN translations, AdvGAN examples with their
perturbations and confidences.

Plot functions take plain data (history lines, numpy arrays) and an output PNG path, like
:mod:`.plots`; :func:`generative_section` renders the HTML for the runs that are generative
(``networks.json`` present), given the page's ``figure`` function
(``figure(name, plot, *args, alt=..., **kwargs) -> html``), and returns "" when none is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..storage.layout import ADVGAN_EXAMPLES, ARTIFACTS_DIR, CYCLEGAN_TRANSLATIONS, GAN_SAMPLES, NETWORKS_META, read_json
from .data import RunData, finite_number, percent, read_tensors
from .markup import card_section
from .markup import escape as _e
from .markup import missing as _missing
from .plots import panel_grid, save_figure, show_image, tex

Figure_ = Callable[..., str]



def _num(v: Any, digits: int = 2) -> str:
    f = finite_number(v)
    return "—" if f is None else f"{f:.{digits}f}"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'



# --- plots -------------------------------------------------------------------------------------
def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[Any], list[float]]:
    xs, ys = [], []
    for i, h in enumerate(history):
        v = finite_number(h.get(key))
        if v is not None:
            xs.append(h.get("epoch", i + 1))
            ys.append(v)
    return xs, ys


def plot_gan_curves(history: Sequence[dict[str, Any]], out: str | Path, real_inception_score: float | None = None) -> Figure:
    """Three panels over epochs: G and D losses, Inception Score (real test images dashed), Fréchet distance."""
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for key, label in (("d_loss", "D loss"), ("g_loss", "G loss"), ("d_real", "D(x)"), ("d_fake", "D(G(z))")):
        xs, ys = _series(history, key)
        if xs:
            ax1.plot(xs, ys, marker="o", ms=3, label=label, ls="-" if "loss" in key else ":")
    ax1.set_title("losses and D's outputs")
    ax1.legend(fontsize=8)
    xs, ys = _series(history, "inception_score")
    ax2.plot(xs, ys, marker="o", ms=3, color="#1f77b4", label="generated")
    if real_inception_score is not None:
        ax2.axhline(real_inception_score, ls="--", color="black", lw=1, label="real test images")
        ax2.axhline(0.8 * real_inception_score, ls=":", color="gray", lw=1, label="80% of real")
    ax2.set_title("Inception Score (classifier-based)")
    ax2.legend(fontsize=8)
    xs, ys = _series(history, "frechet_distance")
    ax3.plot(xs, ys, marker="o", ms=3, color="#d62728")
    ax3.set_title("Fréchet distance to real test features")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


def plot_sample_grids(grids: dict[str, np.ndarray], out: str | Path, per_grid: int = 16) -> Figure:
    """One row per recorded epoch (``epoch_N`` keys): the first ``per_grid`` samples from fixed codes."""
    keys = sorted(grids, key=lambda k: int(k.split("_")[-1]))
    fig, axes = panel_grid(len(keys), per_grid, (0.55 * per_grid + 0.8, 0.6 * len(keys) + 0.3))
    for r, k in enumerate(keys):
        for ax, img in zip(axes[r], grids[k][:per_grid]):
            show_image(ax, img)
        axes[r][0].set_ylabel(k.replace("_", " "), fontsize=8)
    return save_figure(fig, out)


def plot_image_rows(rows: Sequence[tuple[str, np.ndarray]], out: str | Path, captions: Sequence[str] | None = None) -> Figure:
    """Labelled rows of images (translations, arithmetic, unrestricted examples); captions under the last row."""
    cols = max(len(imgs) for _, imgs in rows)
    fig, axes = panel_grid(len(rows), cols, (max(4.0, 1.1 * cols + 0.9), 1.25 * len(rows) + 0.4))
    for r, (label, imgs) in enumerate(rows):
        for c in range(cols):
            if c < len(imgs):
                show_image(axes[r][c], imgs[c])
            else:
                axes[r][c].set_visible(False)
        axes[r][0].set_ylabel(tex(label), fontsize=8)
    for c, cap in enumerate(captions or []):
        if c < cols:
            axes[-1][c].set_xlabel(tex(cap), fontsize=7)
    return save_figure(fig, out)


def plot_advgan_examples(data: dict[str, np.ndarray], class_names: Sequence[str], out: str | Path, eps: float | None = None) -> Figure:
    """Original | perturbation (±eps as black/white) | adversarial, captioned with class and confidence."""
    x, xa = np.asarray(data["x"]), np.asarray(data["x_adv"])
    scale = eps or max(float(np.abs(xa - x).max()), 1e-12)

    def name(k: Any) -> str:
        k = int(k)
        return class_names[k] if 0 <= k < len(class_names) else str(k)

    caps = [f"{name(a)} {float(ca):.2f}\n→ {name(b)} {float(cb):.2f}"
            for a, ca, b, cb in zip(data["pred_clean"], data["conf_clean"], data["pred_adv"], data["conf_adv"])]
    return plot_image_rows([("original", x), (f"perturbation ±{scale:g}", 0.5 + (xa - x) / (2 * scale)), ("AdvGAN", xa)], out, caps)


def plot_class_histogram(hist: Sequence[int], class_names: Sequence[str], out: str | Path,
                         real: Sequence[int] | None = None) -> Figure:
    """Predicted classes of generated samples (bars) beside real test images' (outline): mode collapse shows."""
    k = len(hist)
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    total = max(sum(hist), 1)
    ax.bar(np.arange(k), np.asarray(hist) / total, color="#1f77b4", label="generated")
    if real:
        ax.bar(np.arange(k), np.asarray(real) / max(sum(real), 1), fill=False, edgecolor="black", label="real test")
    ax.set_xticks(np.arange(k), [tex(class_names[i]) if i < len(class_names) else str(i) for i in range(k)],
                  rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("fraction of samples")
    ax.legend(fontsize=8)
    ax.set_title("classifier's class histogram of samples")
    return save_figure(fig, out)


# --- the section -------------------------------------------------------------------------------
def is_generative(run: RunData) -> bool:
    """Whether the run directory holds a generative run (``networks.json``)."""
    return (Path(run.path) / NETWORKS_META).is_file()


def _tensors(run: RunData, name: str) -> dict[str, np.ndarray] | None:
    return read_tensors(Path(run.path) / ARTIFACTS_DIR / name)


def _names(run: RunData) -> list[str]:
    meta = read_json(Path(run.path) / NETWORKS_META) or {}
    names = (meta.get("dataset") or {}).get("class_names") if isinstance(meta, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else run.class_names


def _gan_card(run: RunData, slug: str, figure: Figure_) -> str:
    parts = []
    m = run.metrics
    evaluation = m.get("evaluation")
    ev: dict[str, Any] = evaluation if isinstance(evaluation, dict) else {}
    scored = [h for h in run.history if finite_number(h.get("inception_score")) is not None]
    last = scored[-1] if scored else {}
    real = finite_number(m.get("real_inception_score")) or finite_number(last.get("real_inception_score"))
    is_, fd = finite_number(last.get("inception_score")), finite_number(last.get("frechet_distance"))
    if is_ is not None:
        ratio = f" = {is_ / real:.2f} x real" if real else ""
        parts.append(_note(f"After epoch {last.get('epoch')}: Inception Score {is_:.2f} (real test images "
                           f"{_num(real)}){ratio}; Fréchet distance {_num(fd)}."))
    if ev:
        parts.append(_note(f"robustlab gan evaluate ({ev.get('n')} samples, judged by {ev.get('classifier')}): Inception Score "
                           f"{_num(ev.get('inception_score'))} vs {_num(ev.get('real_inception_score'))} on real "
                           f"test images; Fréchet distance {_num(ev.get('frechet_distance'))}."))
    parts.append(_note("IS and FD here are classifier-based analogues (a robustlab classifier's softmax and penultimate "
                       "features), not comparable with ImageNet-Inception IS / FID values."))
    if run.history:
        parts.append(figure(f"{slug}-gan-curves", plot_gan_curves, run.history, real_inception_score=real or ev.get("real_inception_score"),
                            alt=f"GAN losses, Inception Score and Fréchet distance over epochs, {run.title}"))
    grids = _tensors(run, GAN_SAMPLES)
    parts.append(figure(f"{slug}-gan-samples", plot_sample_grids, grids, alt=f"samples from fixed codes per epoch, {run.title}")
                 if grids else _missing("No sample grids recorded."))
    hist = ev.get("class_histogram") or last.get("class_histogram")
    if isinstance(hist, list) and hist:
        parts.append(figure(f"{slug}-gan-hist", plot_class_histogram, hist, _names(run), real=ev.get("real_class_histogram"),
                            alt=f"class histogram of samples, {run.title}"))
    arith = _tensors(run, "arithmetic.safetensors")
    if arith:
        rows = [("concepts c1, c2, c3", arith["concepts"]), ("c1 - c2 + c3 (+ noise)", arith["result"])]
        parts.append("<h4>Code arithmetic</h4>" + figure(f"{slug}-gan-arith", plot_image_rows, rows, alt="code arithmetic"))
    unr = _tensors(run, "unrestricted.safetensors")
    if unr:
        names = _names(run)
        caps = [names[int(p)] if int(p) < len(names) else str(int(p)) for p in unr["pred_adv"][:10]]
        s = m.get("unrestricted") or {}
        parts.append("<h4>Unrestricted adversarial examples</h4>"
                     + _note(f"source {s.get('source')}, target {s.get('target')}: "
                             f"success {percent(finite_number(s.get('success_rate')))}; "
                             f"the second classifier still sees the source class in "
                             f"{percent(finite_number(s.get('second_sees_source_in_successes')))} of the successes.")
                     + figure(f"{slug}-gan-unrestricted", plot_image_rows,
                              [("start G(z0, K)", unr["x_start"][:10]), ("found G(z, K)", unr["x_adv"][:10])], captions=caps,
                              alt="unrestricted adversarial examples"))
    return "".join(parts)


def _cyclegan_card(run: RunData, slug: str, figure: Figure_) -> str:
    m = run.metrics
    doms = m.get("domains") or ["A", "B"]
    parts = [_note(f"{doms[0]} → {doms[1]}: translated-domain accuracy {percent(finite_number(m.get('translated_accuracy_a_to_b')))}, "
                   f"{doms[1]} → {doms[0]}: {percent(finite_number(m.get('translated_accuracy_b_to_a')))}; cycle reconstruction "
                   f"error (mean |pixel|) {finite_number(m.get('cycle_error_a'))} / {finite_number(m.get('cycle_error_b'))}.")]
    t = _tensors(run, CYCLEGAN_TRANSLATIONS)
    if not t:
        return "".join(parts) + _missing("No translations recorded.")
    rows = [(str(doms[0]), t["a"]), (f"→ {doms[1]}", t["a_to_b"]), ("cycle", t["a_cycle"]),
            (str(doms[1]), t["b"]), (f"→ {doms[0]}", t["b_to_a"]), ("cycle", t["b_cycle"])]
    return "".join(parts) + figure(f"{slug}-cyclegan", plot_image_rows, rows, alt=f"CycleGAN translations, {run.title}")


def _advgan_card(run: RunData, slug: str, figure: Figure_) -> str:
    m = run.metrics
    parts = [_note(f"Target {m.get('target')}, {m.get('norm')} eps {m.get('eps')}: AdvGAN fools "
                   f"{percent(finite_number(m.get('success_rate')))} of {m.get('monitor_n')} correctly classified test images "
                   "(one generator forward pass each).")]
    t = _tensors(run, ADVGAN_EXAMPLES)
    if t:
        parts.append(figure(f"{slug}-advgan", plot_advgan_examples, t, _names(run), eps=finite_number(m.get("eps")),
                            alt=f"AdvGAN examples, {run.title}"))
    if run.history:
        xs, ys = _series(run.history, "success_rate")
        parts.append(_note("success rate per epoch: " + ", ".join(f"{x}: {percent(y)}" for x, y in zip(xs, ys))))
    return "".join(parts)


CARDS = {"gan": _gan_card, "cyclegan": _cyclegan_card, "advgan": _advgan_card}


def generative_section(runs: Sequence[RunData], slugs: Sequence[str], figure: Figure_) -> str:
    """The HTML of the generative section ("" when no run is generative): one card per such run."""
    cards = []
    for run, slug in zip(runs, slugs):
        if not is_generative(run):
            continue
        meta = read_json(Path(run.path) / NETWORKS_META)
        kind = meta.get("kind") if isinstance(meta, dict) else None
        render = CARDS.get(str(kind))
        try:
            body = render(run, slug, figure) if render else _missing(f"unknown generative run kind {kind!r}")
        except Exception as e:  # malformed data costs one card, never the report
            body = _missing(f"could not read this run's generative data: {type(e).__name__}: {e}")
        cards.append(f'<div class="card wide"><h3>{_e(run.title)} ({_e(kind)})</h3>{body}</div>')
    return card_section("Generative models and generative adversarial examples", cards)


__all__ = ["generative_section", "is_generative", "plot_advgan_examples", "plot_class_histogram", "plot_gan_curves",
           "plot_image_rows", "plot_sample_grids"]
