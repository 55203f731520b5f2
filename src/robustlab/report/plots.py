"""The report's figures, from plain data (lists, dicts, numpy arrays; never a model).

Every ``plot_*`` function takes the data and an output PNG path, writes the PNG atomically and
returns the matplotlib :class:`~matplotlib.figure.Figure` (already detached from any GUI; inspect
its axes and lines in tests).
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # headless; never switch a backend someone else chose
    matplotlib.use("Agg")

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ..storage import atomic_write_bytes
from .data import example_captions, finite_number, percent

DPI = 100


def tex(s: Any) -> str:
    """Text for matplotlib: '$' would start mathtext."""
    return str(s).replace("$", r"\$")


def save_figure(fig: Figure, out: str | Path) -> Figure:
    """Write ``fig`` as a PNG (no software stamp, so the bytes depend on the data only)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    atomic_write_bytes(out, buf.getvalue())
    return fig


def _off(ax: Axes) -> None:
    """No ticks, no frame: an image panel."""
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def show_image(ax: Axes, arr: np.ndarray) -> None:
    """Show a (C, H, W) or (H, W) image in [0, 1]: grey for one channel (or the mean of an
    unusual count), colour for three."""
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] == 3:
        img, cmap = a.transpose(1, 2, 0), None
    else:
        img, cmap = (a.mean(0) if a.ndim == 3 else a), "gray"
    ax.imshow(np.clip(img, 0, 1), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")


def panel_grid(rows: int, cols: int, figsize: tuple[float, float], shown: int | None = None) -> tuple[Figure, np.ndarray]:
    """A figure holding a rows x cols grid of image panels (ticks and frames off); panels after
    the first ``shown`` (row-major) are hidden, for a grid the images do not fill."""
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        _off(ax)
        if shown is not None and i >= shown:
            ax.set_visible(False)
    return fig, axes


def _square_grid(n: int, max_cols: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for n panels, at most ``max_cols`` wide."""
    cols = min(max_cols, max(1, math.ceil(math.sqrt(n))))
    return math.ceil(n / cols), cols


def _accuracy_axes(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, a [0, 1] accuracy range, a light grid and the title."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)


def _points(xs: Sequence[Any], values: Sequence[Any]) -> tuple[list[Any], list[float]]:
    """The (x, value) pairs whose value is a finite number, as two lists."""
    kept_x, kept_v = [], []
    for x, v in zip(xs, values):
        if (f := finite_number(v)) is not None:
            kept_x.append(x)
            kept_v.append(f)
    return kept_x, kept_v


def plot_accuracy_history(history: Sequence[dict[str, Any]], out: str | Path, title: str | None = None,
                          adv_label: str | None = None) -> Figure:
    """Clean and adversarial (monitor) test accuracy per epoch; training loss on a panel below.
    The first axes holds one line per accuracy series present."""
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    series = [("clean_accuracy", "clean test accuracy", "#1f77b4", "o"),
              ("adv_accuracy", f"adversarial accuracy ({tex(adv_label or 'monitor attack')})", "#d62728", "s")]
    has_loss = any(finite_number(h.get("train_loss")) is not None for h in history)
    fig = Figure(figsize=(6.0, 5.4 if has_loss else 3.6), layout="constrained")
    if has_loss:
        ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    else:
        ax, ax2 = fig.add_subplot(1, 1, 1), None
    for key, label, colour, marker in series:
        xs, ys = _points(epochs, [h.get(key) for h in history])
        if xs:
            ax.plot(xs, ys, marker=marker, ms=4, color=colour, label=label)
    _accuracy_axes(ax, "epoch", "accuracy", "accuracy over epochs" if title is None else tex(title))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.lines:
        ax.legend(loc="lower right", fontsize=9)
    if ax2 is not None:
        ax2.plot(*_points(epochs, [h.get("train_loss") for h in history]), marker="o", ms=4, color="#555555")
        ax2.set_xlabel("epoch")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_ylabel("training loss")
        ax2.grid(alpha=0.3)
        ax.tick_params(labelbottom=True)
    return save_figure(fig, out)


def plot_eps_curve(curve: Sequence[dict[str, Any]], out: str | Path, clean_accuracy: float | None = None,
                   title: str | None = None) -> Figure:
    """Robust accuracy against eps: the per-sample worst case (thick) and each attack (thin);
    clean accuracy as a dashed reference line when given."""
    pts = sorted(curve, key=lambda c: float(c["eps"]))
    eps = [float(c["eps"]) for c in pts]
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(eps, [float(c["robust_accuracy"]) for c in pts], marker="o", lw=2.5, color="black", label="worst case (all attacks)")
    names = list(dict.fromkeys(k for c in pts for k in (c.get("per_attack") or {})))
    for name in names:
        xs, ys = _points(eps, [(c.get("per_attack") or {}).get(name) for c in pts])
        if xs:
            ax.plot(xs, ys, marker=".", lw=1.2, alpha=0.85, label=tex(name))
    if clean_accuracy is not None:
        ax.axhline(clean_accuracy, ls="--", color="#1f77b4", lw=1, label="clean")
    _accuracy_axes(ax, "eps (perturbation budget)", "robust accuracy", "robust accuracy vs eps" if title is None else tex(title))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncols=min(4, len(ax.lines)), frameon=False)
    return save_figure(fig, out)


def plot_iterations_curve(curve: Sequence[dict[str, Any]], out: str | Path, title: str | None = None) -> Figure:
    """Robust accuracy against the attack's iteration count (it should level off, not keep falling)."""
    pts = sorted(curve, key=lambda c: float(c["steps"]))
    steps = [float(c["steps"]) for c in pts]
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, [float(c["robust_accuracy"]) for c in pts], marker="o", color="#6a3d9a")
    if steps and min(steps) > 0 and max(steps) / min(steps) >= 20:
        ax.set_xscale("log")
    _accuracy_axes(ax, "attack iterations", "robust accuracy",
                   "robust accuracy vs attack iterations" if title is None else tex(title))
    return save_figure(fig, out)


def plot_corruptions(table: dict[str, dict[str, float]], out: str | Path, clean_accuracy: float | None = None,
                     title: str | None = None) -> Figure:
    """Accuracy against corruption severity, one line per corruption (natural robustness)."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for name, row in table.items():
        pts = sorted((int(k), float(v)) for k, v in row.items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=tex(name))
    if clean_accuracy is not None:
        ax.axhline(clean_accuracy, ls="--", lw=1, color="#1f77b4", label="clean")
    ax.set_xticks(sorted({int(k) for row in table.values() for k in row}))
    _accuracy_axes(ax, "severity", "accuracy", "accuracy under common corruptions" if title is None else tex(title))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncols=4, frameon=False)
    return save_figure(fig, out)


def plot_comparison(rows: Sequence[dict[str, Any]], out: str | Path) -> Figure:
    """Grouped bars per run: clean accuracy and worst-case robust accuracy (from run_summary rows)."""
    n = len(rows)
    fig = Figure(figsize=(max(5.5, 1.6 * n + 2.5), 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n)
    w = 0.38
    for off, key, label, colour in ((-w / 2, "clean_accuracy", "clean", "#1f77b4"),
                                    (w / 2, "robust_accuracy", "robust (worst case)", "#d62728")):
        vals = [r.get(key) for r in rows]
        bars = ax.bar(x + off, [v if v is not None else 0.0 for v in vals], w, color=colour, label=label)
        for b, v in zip(bars, vals):
            ax.annotate(percent(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                        fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, [tex(r.get("title", i)) for i, r in enumerate(rows)], fontsize=9)
    ax.set_ylabel("accuracy")
    ax.set_xlabel("run")
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncols=2)
    ax.set_title("clean vs robust accuracy")
    return save_figure(fig, out)


def plot_eps_comparison(curves: dict[str, Sequence[dict[str, Any]]], out: str | Path) -> Figure:
    """Worst-case robust accuracy against eps, one line per run."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for label, curve in curves.items():
        pts = sorted(curve, key=lambda c: float(c["eps"]))
        ax.plot([float(c["eps"]) for c in pts], [float(c["robust_accuracy"]) for c in pts], marker="o", label=tex(label))
    _accuracy_axes(ax, "eps (perturbation budget)", "robust accuracy (worst case)", "robust accuracy vs eps, all runs")
    ax.legend(fontsize=8)
    return save_figure(fig, out)


def plot_adversarial_examples(data: dict[str, np.ndarray], class_names: Sequence[str], out: str | Path,
                              eps: float | None = None) -> Figure:
    """Rows original | perturbation (amplified: 0.5 + delta / (2 eps), so ±eps is black/white) |
    adversarial; one column per example, captioned 'class conf → class conf' (red when fooled)."""
    x, xa = np.asarray(data["x"]), np.asarray(data["x_adv"])
    n = len(x)
    delta = xa - x
    scale = eps if eps else max(float(np.abs(delta).max()), 1e-12)
    rows = (("original", x), (f"perturbation\n(±{scale:g} → black/white)", 0.5 + delta / (2 * scale)), ("adversarial", xa))
    fig, axes = panel_grid(3, n, (max(4.0, 1.45 * n + 0.9), 5.4))
    for r, (label, imgs) in enumerate(rows):
        for ax, img in zip(axes[r], imgs):
            show_image(ax, img)
        axes[r][0].set_ylabel(label, fontsize=9)
    for c, caption in enumerate(example_captions(data, class_names)):
        before, _, after = caption.partition(" → ")
        fooled = int(data["pred_adv"][c]) != int(data["pred_clean"][c])
        axes[2][c].set_xlabel(f"{tex(before)}\n→ {tex(after)}", fontsize=9, color="#c62828" if fooled else "#1a7f37")
    return save_figure(fig, out)


def plot_feature_maps(data: dict[str, np.ndarray], layers: Sequence[dict[str, Any]], out: str | Path) -> Figure:
    """Top row: the clean input, the adversarial input and their amplified difference. One row
    per layer: the channel's map for clean and adversarial input (shared colour scale) and the
    absolute difference."""
    rows = [lay for lay in layers if f"{lay['key']}.clean" in data and f"{lay['key']}.adv" in data]
    fig, axes = panel_grid(len(rows) + 1, 3, (7.2, 2.3 * (len(rows) + 1)))
    xc, xa = data.get("input.clean"), data.get("input.adv")
    if xc is not None and xa is not None:
        d = np.asarray(xa) - np.asarray(xc)
        m = max(float(np.abs(d).max()), 1e-12)
        for ax, (img, t) in zip(axes[0], ((xc, "clean input"), (xa, "adversarial input"), (0.5 + d / (2 * m), "perturbation (amplified)"))):
            show_image(ax, img)
            ax.set_title(t, fontsize=9)
    else:
        for ax in axes[0]:
            ax.set_visible(False)
    for r, lay in enumerate(rows, start=1):
        a, b = np.asarray(data[f"{lay['key']}.clean"]), np.asarray(data[f"{lay['key']}.adv"])
        lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        hi = hi if hi > lo else lo + 1e-6
        for ax, (img, t) in zip(axes[r], ((a, "clean"), (b, "adversarial"))):
            im = ax.imshow(img, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(t, fontsize=9)
        diff = axes[r][2].imshow(np.abs(a - b), cmap="magma", interpolation="nearest")
        axes[r][2].set_title("|difference|", fontsize=9)
        fig.colorbar(im, ax=axes[r][1], shrink=0.8)
        fig.colorbar(diff, ax=axes[r][2], shrink=0.8)
        axes[r][0].set_ylabel(tex(f"{lay.get('label', lay['key'])}\n{lay.get('module', '')} ch {lay.get('channel', '?')}"), fontsize=9)
    return save_figure(fig, out)


def plot_loss_surface(coords: np.ndarray, loss: np.ndarray, out: str | Path, eps: float | None = None) -> Figure:
    """Contour map and 3-D surface of the loss on the (gradient sign, random orthogonal) plane.
    Axes are in units of eps when ``eps`` is given; the clean input is the centre."""
    c = np.asarray(coords, dtype=np.float64)
    z = np.asarray(loss, dtype=np.float64)
    u = c / eps if eps else c
    unit = " (× eps)" if eps else ""
    b_grid, a_grid = np.meshgrid(u, u)  # loss[i, j] is at a = coords[i], b = coords[j]
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    cs = ax.contourf(a_grid, b_grid, z, levels=20, cmap="viridis")
    ax.contour(a_grid, b_grid, z, levels=10, colors="white", linewidths=0.4, alpha=0.6)
    fig.colorbar(cs, ax=ax, label="cross-entropy loss")
    ax.plot([0], [0], marker="*", ms=12, color="red", label="clean input")
    if eps:
        ax.add_patch(Rectangle((-1, -1), 2, 2, fill=False, ls="--", ec="white", lw=1))
    ax.set_xlabel("gradient-sign direction" + unit)
    ax.set_ylabel("random orthogonal direction" + unit)
    ax.set_title("loss contours (dashed: the eps box)" if eps else "loss contours")
    ax.legend(fontsize=8, loc="lower left", framealpha=0.8)
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    ax3.plot_surface(a_grid, b_grid, z, cmap="viridis", linewidth=0, antialiased=True)
    ax3.set_xlabel("gradient sign" + unit, fontsize=8)
    ax3.set_ylabel("random" + unit, fontsize=8)
    ax3.set_title("loss surface (height: cross-entropy)")
    ax3.view_init(elev=30, azim=-135)
    return save_figure(fig, out)


def plot_filters(weight: np.ndarray, out: str | Path, title: str | None = None, max_filters: int = 64) -> Figure:
    """First-layer filters: each normalised on its own (single-channel: diverging map around 0;
    RGB: scaled to [0, 1]; other channel counts: the mean over input channels)."""
    w = np.asarray(weight, dtype=np.float32)[:max_filters]
    n = len(w)
    rows, cols = _square_grid(n, max_cols=8)
    fig, axes = panel_grid(rows, cols, (0.75 * cols + 0.6, 0.75 * rows + 0.7), shown=n)
    for ax, f in zip(axes.flat, w):
        if f.shape[0] == 3:
            lo, hi = float(f.min()), float(f.max())
            ax.imshow(((f - lo) / max(hi - lo, 1e-12)).transpose(1, 2, 0), interpolation="nearest")
        else:
            g = f.mean(0)
            m = max(float(np.abs(g).max()), 1e-12)
            ax.imshow(g, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
    fig.suptitle(tex(title) if title else f"first-layer filters ({n})", fontsize=10)
    return save_figure(fig, out)


def plot_class_visualisations(images: np.ndarray, class_names: Sequence[str], out: str | Path,
                              probabilities: Sequence[float] | None = None, title: str | None = None) -> Figure:
    """One image per class (activation maximisation), titled with the class name (and the
    model's probability for it)."""
    imgs = np.asarray(images, dtype=np.float32)
    n = len(imgs)
    rows, cols = _square_grid(n, max_cols=5)
    fig, axes = panel_grid(rows, cols, (1.45 * cols + 0.4, 1.65 * rows + 0.5), shown=n)
    for i, (ax, img) in enumerate(zip(axes.flat, imgs)):
        show_image(ax, img)
        label = class_names[i] if i < len(class_names) else str(i)
        if probabilities is not None and i < len(probabilities):
            label = f"{label}\np={float(probabilities[i]):.2f}"
        ax.set_title(tex(label), fontsize=8)
    fig.suptitle(tex(title) if title else "class visualisations", fontsize=10)
    return save_figure(fig, out)


def plot_attack_examples(x: np.ndarray, x_adv: np.ndarray, labels: Sequence[str], clean: Sequence[tuple[str, float]],
                         adversarial: Sequence[tuple[str, float]], out: str | Path, title: str = "") -> Figure:
    """The panda-to-gibbon figure for a batch: per column the original (true label, prediction and
    confidence), the perturbation magnified to the full grey range (zero is mid-grey; the factor
    is in the row title) and the adversarial example with its prediction and confidence.
    ``x``/``x_adv``: (N, C, H, W) arrays in [0, 1]."""
    n = len(x)
    if n == 0 or len(x_adv) != n or not (len(labels) == len(clean) == len(adversarial) == n):
        raise ValueError(f"plot_attack_examples needs matching non-empty inputs, got {n} and {len(x_adv)} images")
    delta = x_adv - x
    peak = float(np.abs(delta).max())
    factor = 0.5 / peak if peak > 0 else 1.0
    fig, axes = panel_grid(3, n, (1.5 * n + 0.6, 5.2))
    for j in range(n):
        show_image(axes[0][j], x[j])
        axes[0][j].set_title(f"{labels[j]}\n→ {clean[j][0]} {clean[j][1]:.0%}", fontsize=7)
        show_image(axes[1][j], 0.5 + factor * delta[j])
        show_image(axes[2][j], x_adv[j])
        ok = adversarial[j][0] == clean[j][0]
        axes[2][j].set_title(f"→ {adversarial[j][0]} {adversarial[j][1]:.0%}", fontsize=7,
                             color="#1a7f37" if ok else "#c62828")
    axes[0][0].set_ylabel("original")
    axes[1][0].set_ylabel(f"perturbation x{factor:.1f}")
    axes[2][0].set_ylabel("adversarial")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, out)
