"""The report's CNN visualisations: decision regions around one input, conv-channel
visualisations (activation maximisation) and nearest neighbours in pixel vs feature space.

Plot functions take plain data (numpy arrays from ``RUN/artifacts/``, see
:mod:`robustlab.runs.visual_artifacts`) and an output PNG path, like :mod:`.plots`;
:func:`visual_section` renders the HTML given the page's ``figure`` function
(``figure(name, plot, *args, alt=..., **kwargs) -> html``), and returns "" when no run has any of
these artifacts (older artifacts, evaluation directories).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..storage.layout import VISUAL_ARTIFACTS
from .data import RunData, finite_number, percent
from .markup import escape as _e
from .plots import panel_grid, save_figure, show_image, tex

Figure_ = Callable[..., str]
SAME, OTHER = "#1a7f37", "#c62828"  # a neighbour of the query's class / of another class



def _name(class_names: Sequence[str], k: Any) -> str:
    i = int(k)
    return str(class_names[i]) if 0 <= i < len(class_names) else str(i)


def class_colours(n: int) -> ListedColormap:
    """One distinct colour per class index 0..n-1 (tab10, or tab20 for up to 20 classes)."""
    base = colormaps["tab10" if n <= 10 else "tab20"]
    return ListedColormap([base(i % base.N) for i in range(max(n, 1))])


# --- plots -------------------------------------------------------------------------------------
def plot_decision_regions(pred: np.ndarray, coords: np.ndarray, class_names: Sequence[str], out: str | Path,
                          x: np.ndarray | None = None, eps: float | None = None, label: int | None = None) -> Figure:
    """The predicted class per grid point as a coloured map (``pred[i, j]`` at ``a = coords[i]``
    along the gradient direction, ``b = coords[j]`` along the random one), with a legend of the
    classes present, the input marked at the centre and, with ``eps``, the eps box dashed. The
    input image itself is shown on the left when ``x`` is given."""
    p = np.asarray(pred, dtype=np.int64)
    c = np.asarray(coords, dtype=np.float64)
    u = c / eps if eps else c
    n = max(len(class_names), int(p.max()) + 1)
    fig = Figure(figsize=(9.0 if x is not None else 6.6, 4.4), layout="constrained")
    if x is not None:
        ax_img, ax = fig.subplots(1, 2, width_ratios=[1, 2.2])
        show_image(ax_img, x)
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        ax_img.set_title("input" + (f" (class {tex(_name(class_names, label))})" if label is not None else ""), fontsize=9)
    else:
        ax = fig.add_subplot(1, 1, 1)
    step = (u[1] - u[0]) / 2 if len(u) > 1 else 0.5
    ax.imshow(p.T, origin="lower", cmap=class_colours(n), vmin=-0.5, vmax=n - 0.5, interpolation="nearest",
              extent=(u[0] - step, u[-1] + step, u[0] - step, u[-1] + step), aspect="equal")
    ax.plot([0], [0], marker="*", ms=14, color="white", mec="black", label="input")
    if eps and abs(u[-1]) > 1:
        ax.add_patch(Rectangle((-1, -1), 2, 2, fill=False, ls="--", ec="black", lw=1))
    unit = " (× eps)" if eps else ""
    ax.set_xlabel("gradient direction" + unit)
    ax.set_ylabel("random orthogonal direction" + unit)
    ax.set_title("predicted class (points clamped to the input bounds)" + ("; dashed: the eps box" if eps else ""), fontsize=9)
    cmap = class_colours(n)
    handles = [Patch(color=cmap(int(k)), label=tex(_name(class_names, k))) for k in np.unique(p)]
    handles.append(ax.lines[0])
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return save_figure(fig, out)


def plot_channel_visualisations(images: np.ndarray, channels: Sequence[int], out: str | Path, layer: str = "",
                                start_activation: Sequence[float] | None = None,
                                activation: Sequence[float] | None = None) -> Figure:
    """One optimised image per channel, titled 'ch k' with its mean activation before → after."""
    imgs = np.asarray(images, dtype=np.float32)
    n = len(imgs)
    cols = min(8, n)
    rows = -(-n // cols)
    fig, axes = panel_grid(rows, cols, (1.25 * cols + 0.4, 1.55 * rows + 0.6), shown=n)
    for i, (ax, img) in enumerate(zip(axes.flat, imgs)):
        show_image(ax, img)
        title = f"ch {channels[i] if i < len(channels) else i}"
        if start_activation is not None and activation is not None and i < min(len(start_activation), len(activation)):
            title += f"\n{float(start_activation[i]):.2f} → {float(activation[i]):.2f}"
        ax.set_title(title, fontsize=8)
    fig.suptitle(tex(f"inputs maximising each channel's mean activation ({layer})" if layer else "channel visualisations"),
                 fontsize=10)
    return save_figure(fig, out)


def plot_nearest_neighbours(data: dict[str, np.ndarray], class_names: Sequence[str], out: str | Path,
                            pixel_share: float | None = None, feature_share: float | None = None) -> Figure:
    """One row per query: the query, its ``k`` nearest images in pixel space, then its ``k`` nearest
    in feature space (three panels side by side), each labelled with its class (green: the
    query's class, red: another)."""
    q, ql = np.asarray(data["query"]), np.asarray(data["query_label"])
    spaces = [("pixel", pixel_share, np.asarray(data["pixel_images"]), np.asarray(data["pixel_labels"])),
              ("feature", feature_share, np.asarray(data["feature_images"]), np.asarray(data["feature_labels"]))]
    n, k = len(q), spaces[0][2].shape[1]
    fig = Figure(figsize=(1.05 * (1 + 2 * k) + 0.8, 1.3 * n + 0.8), layout="constrained")
    subfigs: Any = fig.subfigures(1, 3, width_ratios=[1, k, k], wspace=0.04)
    left, groups = subfigs[0], subfigs[1:]
    axes = left.subplots(n, 1, squeeze=False)[:, 0]
    left.suptitle("query", fontsize=9)
    for r, ax in enumerate(axes):
        show_image(ax, q[r])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(tex(_name(class_names, ql[r])), fontsize=8)
    for sub, (space, share, imgs, labels) in zip(groups, spaces):
        grid = sub.subplots(n, k, squeeze=False)
        sub.suptitle(f"{k} nearest in {space} space" + (f": {percent(share)} same class (sample)" if share is not None else ""),
                     fontsize=9)
        for r in range(n):
            for j in range(k):
                ax = grid[r][j]
                show_image(ax, imgs[r, j])
                ax.set_xticks([])
                ax.set_yticks([])
                same = int(labels[r, j]) == int(ql[r])
                ax.set_xlabel(tex(_name(class_names, labels[r, j])), fontsize=8, color=SAME if same else OTHER)
    return save_figure(fig, out)


# --- the section -------------------------------------------------------------------------------
class _Missing(Exception):
    """A card's data is absent: the card shows this message as a note instead."""


def _sec(run: RunData, key: str) -> dict[str, Any] | None:
    sec = run.artifacts.get(key)
    return sec if isinstance(sec, dict) else None


def has_visuals(run: RunData) -> bool:
    """Whether the run's artifacts manifest lists any of the CNN visualisations (computed or not)."""
    manifest = run.artifacts.get("manifest") or {}
    return any(isinstance(manifest.get(k), dict) for k in VISUAL_ARTIFACTS)


def _regions_card(run: RunData, slug: str, figure: Figure_) -> str:
    sec = _sec(run, "decision_regions")
    if sec is None or "missing" in sec:
        raise _Missing(f"Decision regions not available: {(sec or {}).get('missing', 'not computed')}.")
    meta, arr = sec["meta"], sec["data"]
    eps = finite_number(meta.get("eps"))
    radius = finite_number(meta.get("radius"))
    span = f"±{radius:g}" + (f" (±{radius / eps:g} eps)" if radius and eps else "") if radius is not None else ""
    classes = ", ".join(_name(run.class_names, k) for k in meta.get("classes_seen", []))
    note = (f'<p class="note">Test image {_e(meta.get("index"))} (class {_e(_name(run.class_names, meta.get("label", -1)))}): '
            f"the class the model predicts at x + a·g + b·r for a, b in {_e(span)} on a {_e(meta.get('grid'))}×"
            f"{_e(meta.get('grid'))} grid, g the {_e(meta.get('direction_a', 'gradient direction'))}, r a random "
            "direction orthogonal to g with the same L2 norm; every point is clamped to the input bounds. "
            f"Classes on the grid: {_e(classes or '—')}. A boundary close to the star along g but far along r is what "
            "lets a small attack succeed.</p>")
    return note + figure(f"{slug}-regions", plot_decision_regions, arr["pred"], arr["coords"], run.class_names,
                         x=arr.get("x"), eps=eps, label=meta.get("label"), alt=f"decision regions, {run.title}")


def _channels_card(run: RunData, slug: str, figure: Figure_) -> str:
    sec = _sec(run, "channel_visualisations")
    if sec is None or "missing" in sec:
        raise _Missing(f"Channel visualisations not available: {(sec or {}).get('missing', 'not computed')}.")
    meta, arr = sec["meta"], sec["data"]
    note = (f'<p class="note">For channels {_e(", ".join(str(c) for c in meta.get("channels", [])))} of layer '
            f"<code>{_e(meta.get('layer'))}</code>: the input that maximises the channel's mean activation, by "
            f"{_e(meta.get('steps'))} steps of gradient ascent (Adam) from a {_e(meta.get('start', 'grey'))} image, kept "
            "inside the input bounds. Titles: the mean activation at the start → at the end.</p>")
    return note + figure(f"{slug}-channels", plot_channel_visualisations, arr["images"], meta.get("channels", []),
                         layer=str(meta.get("layer", "")), start_activation=arr.get("start_activation"),
                         activation=arr.get("activation"), alt=f"channel visualisations, {run.title}")


def _neighbours_card(run: RunData, slug: str, figure: Figure_) -> str:
    sec = _sec(run, "nearest_neighbours")
    if sec is None or "missing" in sec:
        raise _Missing(f"Nearest neighbours not available: {(sec or {}).get('missing', 'not computed')}.")
    meta, arr = sec["meta"], sec["data"]
    pix, feat = finite_number(meta.get("pixel_share")), finite_number(meta.get("feature_share"))
    note = (f'<p class="note">The {_e(meta.get("k"))} nearest images (Euclidean) among {_e(meta.get("bank"))}, in pixel '
            f"space and in the model's feature space ({_e(meta.get('features'))}). Over {_e(meta.get('n_sample'))} test "
            f"images, <b>{_e(percent(pix))}</b> of the pixel-space neighbours and <b>{_e(percent(feat))}</b> of the "
            "feature-space neighbours share the query's class. Labels: green the query's class, red another.</p>")
    return note + figure(f"{slug}-neighbours", plot_nearest_neighbours, arr, run.class_names, pixel_share=pix,
                         feature_share=feat, alt=f"nearest neighbours in pixel and feature space, {run.title}")


SECTIONS = (
    ("Decision regions around one input", _regions_card, True),
    ("Conv channel visualisations (activation maximisation)", _channels_card, True),
    ("Nearest neighbours: pixel space vs feature space", _neighbours_card, True),
)


def visual_section(runs: Sequence[RunData], slugs: Sequence[str], figure: Figure_) -> str:
    """The HTML of the CNN visualisations ("" when no run has them): per visualisation a heading
    over one card per run; a card whose data is missing or malformed shows a note instead."""
    kept = [(r, s) for r, s in zip(runs, slugs) if getattr(r, "kind", "run") == "run"]  # not experiment directories
    if not any(has_visuals(r) for r, _ in kept):
        return ""
    parts = []
    for heading, card, wide in SECTIONS:
        cards = []
        for run, slug in kept:
            try:
                body = card(run, slug, figure)
            except _Missing as e:
                body = f'<p class="missing">{_e(e)}</p>'
            except Exception as e:  # malformed data costs one card, never the report
                body = '<p class="missing">' + _e(f"could not read this section's data: {type(e).__name__}: {e}") + "</p>"
            cards.append(f'<div class="card{" wide" if wide else ""}"><h3>{_e(run.title)}</h3>{body}</div>')
        parts.append(f'<h2>{_e(heading)}</h2><div class="grid">' + "".join(cards) + "</div>")
    return "\n".join(parts)


__all__ = ["class_colours", "has_visuals", "plot_channel_visualisations", "plot_decision_regions", "plot_nearest_neighbours",
           "visual_section"]
