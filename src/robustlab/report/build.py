"""Reports a person reads: PNG figures and one self-contained HTML page, from run directories.

This module reads files, never models: ``config.json``, ``model.json``, ``history.jsonl``,
``metrics.json`` and the ``artifacts/`` that :func:`robustlab.artifacts.write_artifacts` computed.
Every ``plot_*`` function takes plain data and an output PNG path, writes the PNG atomically and
returns the matplotlib :class:`~matplotlib.figure.Figure` (already detached from any GUI; inspect
its axes and lines in tests). :func:`build_report` writes the PNGs and ``report.html`` -- images
inlined as ``data:`` URIs, styles inline, no scripts, fonts or network references -- with a
one-line note in place of any section whose data is missing.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # headless; never switch a backend someone else chose
    matplotlib.use("Agg")

import matplotlib.patches  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..storage.checkpoint import atomic_write_bytes, atomic_write_text  # noqa: E402
from ..evaluation.corruptions import mean_corruption_accuracy  # noqa: E402

ARTIFACTS_DIR = "artifacts"  # the same names as robustlab.artifacts (not imported: it needs torch models)
MANIFEST = "artifacts.json"
REPORT_FILE = "report.html"
DPI = 100
STATUS_COLOURS = {"PASS": "#1a7f37", "WARN": "#b35900", "FAIL": "#c62828"}


# --- reading ---------------------------------------------------------------------------------
def read_json(path: str | Path) -> Any | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """``history.jsonl`` as a list of dicts (unreadable lines skipped; [] when missing)."""
    try:
        text = (Path(run_dir) / "history.jsonl").read_text()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in text.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict):
            out.append(d)
    return out


def read_tensors(path: str | Path) -> dict[str, np.ndarray] | None:
    """A safetensors file as numpy arrays, or None when missing or unreadable."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception:  # noqa: BLE001 - any broken file is "missing" to a report
        return None


def read_artifacts(run_dir: str | Path) -> dict[str, Any]:
    """The artifacts manifest and, per section it lists, ``{"meta": ..., "data": arrays}``;
    sections the manifest marks missing, or whose file is unreadable, get ``{"missing": reason}``."""
    base = Path(run_dir) / ARTIFACTS_DIR
    manifest = read_json(base / MANIFEST)
    if not isinstance(manifest, dict):
        return {}
    out: dict[str, Any] = {"manifest": manifest}
    for section in ("examples", "feature_maps", "loss_surface", "filters", "class_visualisations"):
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

    @property
    def class_names(self) -> list[str]:
        names = (self.model_meta.get("dataset") or {}).get("class_names")
        if not names:
            names = (self.artifacts.get("manifest") or {}).get("class_names")
        return [str(n) for n in names] if isinstance(names, list) else []

    @property
    def evaluation(self) -> dict[str, Any]:
        """The latest attack evaluation in metrics.json (``robustlab evaluate``, else the demo's)."""
        m = self.metrics
        if "robust_accuracy" in m or "per_attack" in m:
            ev = m.get("evaluation") if isinstance(m.get("evaluation"), dict) else {}
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
        found = self.metrics.get("checks")
        if not found:
            found = self.evaluation.get("details", {}).get("checks")
        return [c for c in (found or []) if isinstance(c, dict)]

    @property
    def eps_curve(self) -> list[dict[str, Any]]:
        curve = self.metrics.get("eps_curve") or []
        return [c for c in curve if isinstance(c, dict) and _num(c.get("eps")) is not None
                and _num(c.get("robust_accuracy")) is not None]

    @property
    def iterations_curve(self) -> list[dict[str, Any]]:
        curve = self.metrics.get("iterations_curve") or self.evaluation.get("details", {}).get("iterations_curve") or []
        return [c for c in curve if isinstance(c, dict) and _num(c.get("steps")) is not None
                and _num(c.get("robust_accuracy")) is not None]


def read_run(run_dir: str | Path, title: str | None = None) -> RunData:
    """Read one run directory (missing files give empty fields)."""
    p = Path(run_dir)
    cfg, meta, metrics = read_json(p / "config.json"), read_json(p / "model.json"), read_json(p / "metrics.json")
    return RunData(
        path=p,
        title=title if title is not None else (p.name or str(p)),
        config=cfg if isinstance(cfg, dict) else {},
        model_meta=meta if isinstance(meta, dict) else {},
        metrics=metrics if isinstance(metrics, dict) else {},
        history=read_history(p),
        artifacts=read_artifacts(p),
    )


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def monitor_label(run: RunData) -> str | None:
    """'pgd-20, linf eps 0.1': the attack behind history's adv_accuracy (from the run's spec)."""
    spec = run.config.get("spec") or run.model_meta.get("spec") or {}
    m = spec.get("monitor")
    if not isinstance(m, dict):
        return None
    name = str(m.get("attack", "pgd"))
    if m.get("steps") is not None:
        name += f"-{m['steps']}"
    eps = _num(m.get("eps"))
    return f"{name}, {m.get('norm', 'linf')} eps {eps:g}" if eps is not None else name


def run_summary(run: RunData) -> dict[str, Any]:
    """One summary-table row: dataset, model, defence, epochs, accuracies, eps, wall time."""
    spec = run.config.get("spec") or run.model_meta.get("spec") or {}
    arch = run.model_meta.get("architecture") or {}
    training = run.config.get("training") or run.model_meta.get("training") or {}
    dataset = spec.get("dataset") or (run.model_meta.get("dataset") or {}).get("name")
    model = spec.get("model") or arch.get("name")
    opts = spec.get("model_options") or {}
    if model and opts:
        model = f"{model} ({', '.join(f'{k}={v}' for k, v in opts.items())})"
    defense = spec.get("defense") or (run.model_meta.get("objective") or {}).get("name")
    dopts = spec.get("defense_options") or {}
    if defense and dopts:
        defense = f"{defense} ({', '.join(f'{k}={v}' for k, v in dopts.items())})"
    planned = training.get("epochs") or run.metrics.get("epochs")
    done = len(run.history) or None
    ev = run.evaluation
    details = ev.get("details") or {}
    train_s = _num(run.metrics.get("train_seconds"))
    if train_s is None and run.history:
        train_s = sum(_num(h.get("seconds")) or 0.0 for h in run.history)
    last = run.history[-1] if run.history else {}
    return {
        "title": run.title,
        "dataset": dataset,
        "model": model,
        "defense": defense,
        "epochs": planned if done is None else (done if planned in (None, done) else f"{done}/{planned}"),
        "clean_accuracy": _num(run.metrics.get("clean_accuracy", last.get("clean_accuracy"))),
        "robust_accuracy": _num(ev.get("robust_accuracy")),
        "per_attack": {str(k): _num(v) for k, v in (ev.get("per_attack") or {}).items()},
        "eps": _num(ev.get("eps")),
        "norm": ev.get("norm"),
        "monitor_adv_accuracy": _num(run.metrics.get("monitor_adv_accuracy", last.get("adv_accuracy"))),
        "monitor": monitor_label(run),
        "train_seconds": train_s,
        "evaluate_seconds": _num(run.metrics.get("evaluate_seconds")),
        "test_samples": run.metrics.get("test_samples"),
        "per_attack_mode": details.get("per_attack_mode"),
        # the attacked subset, which may be smaller than the clean-accuracy test set
        "robust_n": details.get("n", run.metrics.get("evaluated_samples")),
        "robust_clean_accuracy": _num(details.get("clean_accuracy", run.metrics.get("evaluation_clean_accuracy"))),
    }


# --- figures ---------------------------------------------------------------------------------
def _tex(s: Any) -> str:
    """Text for matplotlib: '$' would start mathtext."""
    return str(s).replace("$", r"\$")


def _save(fig: Figure, out: str | Path) -> Figure:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    atomic_write_bytes(out, buf.getvalue())
    return fig


def _image(arr: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(H, W) or (H, W, 3) from a (C, H, W) image in [0, 1], with the colormap to show it."""
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] == 1:
        return np.clip(a[0], 0, 1), "gray"
    if a.ndim == 3 and a.shape[0] == 3:
        return np.clip(a.transpose(1, 2, 0), 0, 1), None
    if a.ndim == 3:
        return np.clip(a.mean(0), 0, 1), "gray"
    return np.clip(a, 0, 1), "gray"


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _pct(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def plot_accuracy_history(history: Sequence[dict[str, Any]], out: str | Path, title: str | None = None,
                          adv_label: str | None = None) -> Figure:
    """Clean and adversarial (monitor) test accuracy per epoch; training loss on a panel below.
    The first axes holds one line per accuracy series present."""
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    series = [("clean_accuracy", "clean test accuracy", "#1f77b4", "o"),
              ("adv_accuracy", f"adversarial accuracy ({_tex(adv_label or 'monitor attack')})", "#d62728", "s")]
    has_loss = any(_num(h.get("train_loss")) is not None for h in history)
    fig = Figure(figsize=(6.0, 5.4 if has_loss else 3.6), layout="constrained")
    if has_loss:
        ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    else:
        ax, ax2 = fig.add_subplot(1, 1, 1), None
    for key, label, colour, marker in series:
        pts = [(e, _num(h.get(key))) for e, h in zip(epochs, history)]
        pts = [(e, v) for e, v in pts if v is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ms=4, color=colour, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("accuracy over epochs" if title is None else _tex(title))
    if ax.lines:
        ax.legend(loc="lower right", fontsize=9)
    if ax2 is not None:
        pts = [(e, _num(h.get("train_loss"))) for e, h in zip(epochs, history)]
        pts = [(e, v) for e, v in pts if v is not None]
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, color="#555555")
        ax2.set_xlabel("epoch")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_ylabel("training loss")
        ax2.grid(alpha=0.3)
        ax.tick_params(labelbottom=True)
    return _save(fig, out)


def plot_eps_curve(curve: Sequence[dict[str, Any]], out: str | Path, clean_accuracy: float | None = None,
                   title: str | None = None) -> Figure:
    """Robust accuracy against eps: the per-sample worst case (thick) and each attack (thin);
    clean accuracy as a dashed reference line when given."""
    pts = sorted(curve, key=lambda c: float(c["eps"]))
    eps = [float(c["eps"]) for c in pts]
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(eps, [float(c["robust_accuracy"]) for c in pts], marker="o", lw=2.5, color="black", label="worst case (all attacks)")
    names: list[str] = []
    for c in pts:
        for k in (c.get("per_attack") or {}):
            if k not in names:
                names.append(k)
    for name in names:
        xy = [(float(c["eps"]), _num((c.get("per_attack") or {}).get(name))) for c in pts]
        xy = [p for p in xy if p[1] is not None]
        if xy:
            ax.plot([p[0] for p in xy], [p[1] for p in xy], marker=".", lw=1.2, alpha=0.85, label=_tex(name))
    if clean_accuracy is not None:
        ax.axhline(clean_accuracy, ls="--", color="#1f77b4", lw=1, label="clean")
    ax.set_xlabel("eps (perturbation budget)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("robust accuracy vs eps" if title is None else _tex(title))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncols=min(4, len(ax.lines)), frameon=False)
    return _save(fig, out)


def plot_iterations_curve(curve: Sequence[dict[str, Any]], out: str | Path, title: str | None = None) -> Figure:
    """Robust accuracy against the attack's iteration count (it should level off, not keep falling)."""
    pts = sorted(curve, key=lambda c: float(c["steps"]))
    steps = [float(c["steps"]) for c in pts]
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, [float(c["robust_accuracy"]) for c in pts], marker="o", color="#6a3d9a")
    if steps and min(steps) > 0 and max(steps) / min(steps) >= 20:
        ax.set_xscale("log")
    ax.set_xlabel("attack iterations")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("robust accuracy vs attack iterations" if title is None else _tex(title))
    return _save(fig, out)


def plot_corruptions(table: dict[str, dict[str, float]], out: str | Path, clean_accuracy: float | None = None,
                     title: str | None = None) -> Figure:
    """Accuracy against corruption severity, one line per corruption (natural robustness)."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for name, row in table.items():
        pts = sorted((int(k), float(v)) for k, v in row.items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_tex(name))
    if clean_accuracy is not None:
        ax.axhline(clean_accuracy, ls="--", lw=1, color="#1f77b4", label="clean")
    ax.set_xticks(sorted({int(k) for row in table.values() for k in row}))
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("accuracy under common corruptions" if title is None else _tex(title))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncols=4, frameon=False)
    return _save(fig, out)


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
            ax.annotate(_pct(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                        fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, [_tex(r.get("title", i)) for i, r in enumerate(rows)], fontsize=9)
    ax.set_ylabel("accuracy")
    ax.set_xlabel("run")
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncols=2)
    ax.set_title("clean vs robust accuracy")
    return _save(fig, out)


def plot_eps_comparison(curves: dict[str, Sequence[dict[str, Any]]], out: str | Path) -> Figure:
    """Worst-case robust accuracy against eps, one line per run."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for label, curve in curves.items():
        pts = sorted(curve, key=lambda c: float(c["eps"]))
        ax.plot([float(c["eps"]) for c in pts], [float(c["robust_accuracy"]) for c in pts], marker="o", label=_tex(label))
    ax.set_xlabel("eps (perturbation budget)")
    ax.set_ylabel("robust accuracy (worst case)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("robust accuracy vs eps, all runs")
    return _save(fig, out)


def example_captions(data: dict[str, np.ndarray], class_names: Sequence[str]) -> list[str]:
    """'Shirt 91.2% → Bag 88.5%' per adversarial example."""
    def name(k: int) -> str:
        return str(class_names[k]) if 0 <= k < len(class_names) else str(k)

    out = []
    for pc, cc, pa, ca in zip(data["pred_clean"], data["conf_clean"], data["pred_adv"], data["conf_adv"]):
        out.append(f"{name(int(pc))} {100 * float(cc):.1f}% → {name(int(pa))} {100 * float(ca):.1f}%")
    return out


def plot_adversarial_examples(data: dict[str, np.ndarray], class_names: Sequence[str], out: str | Path,
                              eps: float | None = None) -> Figure:
    """Rows original | perturbation (amplified: 0.5 + delta / (2 eps), so ±eps is black/white) |
    adversarial; one column per example, captioned 'class conf → class conf' (red when fooled)."""
    x, xa = np.asarray(data["x"]), np.asarray(data["x_adv"])
    n = len(x)
    delta = xa - x
    scale = eps if eps else max(float(np.abs(delta).max()), 1e-12)
    pert = 0.5 + delta / (2 * scale)
    caps = example_captions(data, class_names)
    fig = Figure(figsize=(max(4.0, 1.45 * n + 0.9), 5.4), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    rows = (("original", x), (f"perturbation\n(±{scale:g} → black/white)", pert), ("adversarial", xa))
    for r, (label, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            img, cmap = _image(imgs[c])
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            _off(ax)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    for c in range(n):
        before, _, after = caps[c].partition(" → ")
        fooled = int(data["pred_adv"][c]) != int(data["pred_clean"][c])
        axes[2][c].set_xlabel(f"{_tex(before)}\n→ {_tex(after)}", fontsize=9, color="#c62828" if fooled else "#1a7f37")
    return _save(fig, out)


def plot_feature_maps(data: dict[str, np.ndarray], layers: Sequence[dict[str, Any]], out: str | Path) -> Figure:
    """Top row: the clean input, the adversarial input and their amplified difference. One row
    per layer: the channel's map for clean and adversarial input (shared colour scale) and the
    absolute difference."""
    rows = [lay for lay in layers if f"{lay['key']}.clean" in data and f"{lay['key']}.adv" in data]
    fig = Figure(figsize=(7.2, 2.3 * (len(rows) + 1)), layout="constrained")
    axes = fig.subplots(len(rows) + 1, 3, squeeze=False)
    xc, xa = data.get("input.clean"), data.get("input.adv")
    if xc is not None and xa is not None:
        d = np.asarray(xa) - np.asarray(xc)
        m = max(float(np.abs(d).max()), 1e-12)
        for ax, (img, t) in zip(axes[0], ((xc, "clean input"), (xa, "adversarial input"), (0.5 + d / (2 * m), "perturbation (amplified)"))):
            im, cmap = _image(img)
            ax.imshow(im, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(t, fontsize=9)
            _off(ax)
    else:
        for ax in axes[0]:
            ax.set_visible(False)
    for r, lay in enumerate(rows, start=1):
        a, b = np.asarray(data[f"{lay['key']}.clean"]), np.asarray(data[f"{lay['key']}.adv"])
        lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        hi = hi if hi > lo else lo + 1e-6
        for c, (img, t) in enumerate(((a, "clean"), (b, "adversarial"))):
            ax = axes[r][c]
            im = ax.imshow(img, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(t, fontsize=9)
            _off(ax)
        ax = axes[r][2]
        diff = ax.imshow(np.abs(a - b), cmap="magma", interpolation="nearest")
        ax.set_title("|difference|", fontsize=9)
        _off(ax)
        fig.colorbar(im, ax=axes[r][1], shrink=0.8)
        fig.colorbar(diff, ax=axes[r][2], shrink=0.8)
        axes[r][0].set_ylabel(_tex(f"{lay.get('label', lay['key'])}\n{lay.get('module', '')} ch {lay.get('channel', '?')}"), fontsize=9)
    return _save(fig, out)


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
        ax.add_patch(matplotlib.patches.Rectangle((-1, -1), 2, 2, fill=False, ls="--", ec="white", lw=1))
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
    return _save(fig, out)


def _grid_shape(n: int, max_cols: int = 8) -> tuple[int, int]:
    cols = min(max_cols, max(1, math.ceil(math.sqrt(n))))
    return math.ceil(n / cols), cols


def plot_filters(weight: np.ndarray, out: str | Path, title: str | None = None, max_filters: int = 64) -> Figure:
    """First-layer filters: each normalised on its own (single-channel: diverging map around 0;
    RGB: scaled to [0, 1]; other channel counts: the mean over input channels)."""
    w = np.asarray(weight, dtype=np.float32)[:max_filters]
    n = len(w)
    rows, cols = _grid_shape(n)
    fig = Figure(figsize=(0.75 * cols + 0.6, 0.75 * rows + 0.7), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        _off(ax)
        if i >= n:
            ax.set_visible(False)
            continue
        f = w[i]
        if f.shape[0] == 3:
            lo, hi = float(f.min()), float(f.max())
            ax.imshow(((f - lo) / max(hi - lo, 1e-12)).transpose(1, 2, 0), interpolation="nearest")
        else:
            g = f.mean(0)
            m = max(float(np.abs(g).max()), 1e-12)
            ax.imshow(g, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
    fig.suptitle(_tex(title) if title else f"first-layer filters ({n})", fontsize=10)
    return _save(fig, out)


def plot_class_visualisations(images: np.ndarray, class_names: Sequence[str], out: str | Path,
                              probabilities: Sequence[float] | None = None, title: str | None = None) -> Figure:
    """One image per class (activation maximisation), titled with the class name (and the
    model's probability for it)."""
    imgs = np.asarray(images, dtype=np.float32)
    n = len(imgs)
    rows, cols = _grid_shape(n, max_cols=5)
    fig = Figure(figsize=(1.45 * cols + 0.4, 1.65 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        _off(ax)
        if i >= n:
            ax.set_visible(False)
            continue
        img, cmap = _image(imgs[i])
        ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        label = class_names[i] if i < len(class_names) else str(i)
        if probabilities is not None and i < len(probabilities):
            label = f"{label}\np={float(probabilities[i]):.2f}"
        ax.set_title(_tex(label), fontsize=8)
    fig.suptitle(_tex(title) if title else "class visualisations", fontsize=10)
    return _save(fig, out)


# --- HTML ------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;
     background:#f6f7f9;color:#1d2228;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:1.7em;margin:0 0 4px}
h2{font-size:1.25em;margin:34px 0 10px;padding-bottom:4px;border-bottom:2px solid #d8dde3}
h3{font-size:1em;margin:0 0 8px;color:#333}
p.meta{color:#5b6570;margin:0 0 18px;font-size:.9em}
p.missing{color:#6b7280;font-style:italic;margin:6px 0}
p.note{color:#4b5563;font-size:.9em;margin:4px 0 10px}
table{border-collapse:collapse;background:#fff;font-size:.88em;margin:6px 0 12px}
th,td{border:1px solid #d8dde3;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto}
.grid{display:flex;flex-wrap:wrap;gap:16px}
.card{background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:12px 14px;flex:1 1 440px;min-width:0}
.card.wide{flex-basis:100%}
.card img{max-width:100%;height:auto;display:block}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600;font-size:.85em}
table.side{width:100%;table-layout:fixed}
table.side th:first-child{width:88px}
table.side img{max-width:100%;height:auto;display:block;margin:0 auto}
ul.caps{margin:6px 0 0;padding-left:18px;font-size:.85em;columns:2}
code{font-size:.92em;background:#eef1f4;padding:0 3px;border-radius:3px}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _seconds(v: float | None) -> str:
    if v is None:
        return "—"
    if v < 90:
        return f"{v:.1f} s"
    m, s = divmod(int(round(v)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _table(headers: Sequence[str], rows: Sequence[Sequence[tuple[str, bool]]]) -> str:
    """rows of (already-escaped cell html, numeric?)"""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if num else f"<td>{c}</td>" for c, num in r) + "</tr>"
                   for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s[:40] or "run"


class _Page:
    """Collects sections; figures are written to ``out_dir`` and inlined."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.parts: list[str] = []
        self.figures: list[Path] = []

    def figure(self, name: str, plot, *args, alt: str, **kwargs) -> str:
        path = self.out_dir / f"{name}.png"
        try:
            plot(*args, path, **kwargs)
        except Exception as e:  # noqa: BLE001 - a malformed file must cost one figure, not the report
            return _missing(f"could not draw {alt}: {type(e).__name__}: {e}")
        self.figures.append(path)
        return _img_tag(path, alt)


def _n_note(n: Any, clean: float | None = None) -> str:
    """'n=1000' under an accuracy (and the clean accuracy on that subset when it differs)."""
    if not isinstance(n, int) or isinstance(n, bool):
        return ""
    extra = f"<br>clean {_e(_pct(clean))}" if clean is not None else ""
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


def _corruption_mean(row: dict[str, Any] | None) -> float | None:
    """One corruption's accuracy averaged over its severities (None when there are none)."""
    mean = mean_corruption_accuracy({"_": row}) if row else math.nan
    return None if math.isnan(mean) else mean


def _corruption_table(rows: list[dict[str, Any]], data: Sequence[Any]) -> str:
    """One table across runs: clean and worst-case robust accuracy beside the mean accuracy under
    each corruption (over severities 1-5) and overall."""
    names: list[str] = []
    for d in data:
        for name in (d.metrics.get("corruptions") or {}):
            if name not in names:
                names.append(name)
    body = []
    for r, d in zip(rows, data):
        table = d.metrics.get("corruptions") or {}
        body.append([(f"<b>{_e(r['title'])}</b>", False), (_e(_pct(r["clean_accuracy"])), True),
                     (_e(_pct(r["robust_accuracy"])), True),
                     (f"<b>{_e(_pct(_num(d.metrics.get('mean_corruption_accuracy'))))}</b>", True),
                     *[(_e(_pct(_corruption_mean(table.get(n)))), True) for n in names]])
    note = ('<p class="note">Natural robustness: accuracy on corrupted test images (mean over severities 1-5), '
            "beside the adversarial numbers: robustness to an eps-ball says little about noise, blur, contrast, "
            "brightness, rotation or shifts, so both are measured.</p>")
    return ("<h2>Adversarial and natural robustness</h2>"
            + _table(["run", "clean acc", "robust acc (worst)", "corruptions (mean)", *names], body) + note)


def _summary_section(rows: list[dict[str, Any]]) -> str:
    attacks: list[str] = []
    for r in rows:
        for k in r["per_attack"]:
            if k not in attacks:
                attacks.append(k)
    headers = ["run", "dataset", "model", "defence", "epochs", "clean acc", "robust acc (worst)",
               *[f"{a}" for a in attacks], "eps", "monitor adv acc", "wall time"]
    body = []
    for r in rows:
        eps = "—" if r["eps"] is None else f"{r['norm'] or ''} {r['eps']:g}".strip()
        wall = []
        if r["train_seconds"] is not None:
            wall.append(f"train {_seconds(r['train_seconds'])}")
        if r["evaluate_seconds"] is not None:
            wall.append(f"evaluate {_seconds(r['evaluate_seconds'])}")
        body.append([
            (f"<b>{_e(r['title'])}</b>", False), (_e(r["dataset"] or "—"), False), (_e(r["model"] or "—"), False),
            (_e(r["defense"] or "—"), False), (_e(r["epochs"] if r["epochs"] is not None else "—"), True),
            (_e(_pct(r["clean_accuracy"])) + _n_note(r.get("test_samples")), True),
            (f"<b>{_e(_pct(r['robust_accuracy']))}</b>" + _n_note(r.get("robust_n"), r.get("robust_clean_accuracy")
                                                                 if r.get("robust_n") != r.get("test_samples") else None), True),
            *[(_e(_pct(r["per_attack"].get(a))), True) for a in attacks],
            (_e(eps), True),
            (_e(_pct(r["monitor_adv_accuracy"])) + (f'<br><small>{_e(r["monitor"])}</small>' if r["monitor"] and r["monitor_adv_accuracy"] is not None else ""), True), (_e(", ".join(wall) or "—"), False),
        ])
    note = ('<p class="note">Robust accuracy is the per-sample worst case over all attacks at the given eps, '
            "on the n test images attacked (with the clean accuracy on those same images when they are a subset); "
            f"per-attack columns: {_e(_modes(rows))}. "
            "Monitor adv acc is the attack measured during training on a test subset.</p>")
    if not any(r["robust_accuracy"] is not None for r in rows):
        note += _missing("No attack evaluation in any metrics.json (run robustlab evaluate RUN --attacks fgsm,pgd).")
    return "<h2>Summary</h2>" + _table(headers, body) + note


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
    if titles is None:
        names = [p.name or str(p) for p in run_paths]
        titles = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else n for p, n in zip(run_paths, names)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = [read_run(p, t) for p, t in zip(run_paths, titles)]
    rows = [run_summary(d) for d in data]
    slugs = [f"{i + 1:02d}-{_slug(d.title)}" for i, d in enumerate(data)]
    page = _Page(out)
    P = page.parts

    P.append(f"<h1>robustlab report</h1><p class=\"meta\">{len(data)} run{'s' if len(data) > 1 else ''}, generated "
             f"{_e(time.strftime('%Y-%m-%d %H:%M'))}: " + ", ".join(f"<b>{_e(d.title)}</b> (<code>{_e(d.path)}</code>)" for d in data) + "</p>")
    P.append(_summary_section(rows))

    # comparison
    if len(data) > 1:
        P.append("<h2>Comparison</h2>")
        if any(r["clean_accuracy"] is not None or r["robust_accuracy"] is not None for r in rows):
            P.append('<div class="grid"><div class="card">' + page.figure("comparison", plot_comparison, rows, alt="clean vs robust accuracy per run") + "</div>")
            curves = {d.title: d.eps_curve for d in data if len(d.eps_curve) > 1}
            if len(curves) > 1:
                P.append('<div class="card">' + page.figure("comparison-eps", plot_eps_comparison, curves, alt="robust accuracy vs eps for all runs") + "</div>")
            P.append("</div>")
            base = rows[0]

            def delta(v: float | None, ref: float | None) -> str:
                return "—" if v is None or ref is None else f"{100 * (v - ref):+.1f} pts"

            body = [[(f"<b>{_e(r['title'])}</b>", False), (_e(_pct(r["clean_accuracy"])), True),
                     (_e(delta(r["clean_accuracy"], base["clean_accuracy"])), True),
                     (_e(_pct(r["robust_accuracy"])), True), (_e(delta(r["robust_accuracy"], base["robust_accuracy"])), True),
                     (_e("—" if r["eps"] is None else f"{r['eps']:g}"), True)] for r in rows]
            P.append(_table(["run", "clean acc", f"Δ clean vs {base['title']}", "robust acc (worst)",
                             f"Δ robust vs {base['title']}", "eps"], body))
        else:
            P.append(_missing("No accuracies recorded in any run's metrics.json."))

    def safe(render, d: RunData, slug: str) -> str:
        try:
            return render(d, slug)
        except Exception as e:  # noqa: BLE001 - malformed data costs one section, never the report
            return _missing(f"could not read this section's data: {type(e).__name__}: {e}")

    def per_run(heading: str, render, wide: bool = False) -> None:
        P.append(f"<h2>{_e(heading)}</h2><div class=\"grid\">")
        for d, slug in zip(data, slugs):
            P.append(f'<div class="card{" wide" if wide else ""}"><h3>{_e(d.title)}</h3>{safe(render, d, slug)}</div>')
        P.append("</div>")

    def accuracy(d: RunData, slug: str) -> str:
        if not d.history:
            return _missing("No history.jsonl: accuracy over epochs not available.")
        if not any(_num(h.get("clean_accuracy")) is not None for h in d.history):
            return _missing("history.jsonl has no test accuracies (trained without test data).")
        return page.figure(f"{slug}-accuracy", plot_accuracy_history, d.history, adv_label=monitor_label(d),
                           alt=f"accuracy over epochs, {d.title}")

    def eps_curve(d: RunData, slug: str) -> str:
        parts = []
        curve = d.eps_curve
        if len(curve) > 1:
            parts.append(page.figure(f"{slug}-eps", plot_eps_curve, curve, clean_accuracy=_num(d.metrics.get("clean_accuracy")),
                                     alt=f"robust accuracy vs eps, {d.title}"))
        else:
            ev = d.evaluation
            one = f" (only eps={ev['eps']:g} evaluated)" if _num(ev.get("eps")) is not None else ""
            parts.append(_missing(f"No robust-accuracy curve over eps{one}; run robustlab evaluate RUN --eps 0.05,0.1,0.2."))
        if len(d.iterations_curve) > 1:
            parts.append(page.figure(f"{slug}-iterations", plot_iterations_curve, d.iterations_curve,
                                     alt=f"robust accuracy vs attack iterations, {d.title}"))
        else:
            parts.append(_missing("No robust accuracy vs attack iterations recorded."))
        return "".join(parts)

    def corruptions(d: RunData, slug: str) -> str:
        table = d.metrics.get("corruptions")
        if not isinstance(table, dict) or not table:
            return _missing("No corruption table; run robustlab evaluate RUN --corruptions.")
        return page.figure(f"{slug}-corruptions", plot_corruptions, table,
                           clean_accuracy=_num(d.metrics.get("evaluation_clean_accuracy", d.metrics.get("clean_accuracy"))),
                           alt=f"accuracy under common corruptions, {d.title}")

    def checks(d: RunData, slug: str) -> str:
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

    def artifact_note(d: RunData) -> str | None:
        if not d.artifacts:
            return "No artifacts (run robustlab report without --no-artifacts, or robustlab.artifacts.write_artifacts)."
        return None

    def examples(d: RunData, slug: str) -> str:
        if (msg := artifact_note(d)) is not None:
            return _missing(msg)
        sec = d.artifacts["examples"]
        if "missing" in sec:
            return _missing(f"Adversarial examples not available: {sec['missing']}.")
        man = d.artifacts["manifest"]
        eps = _num(man.get("eps"))
        caps = example_captions(sec["data"], d.class_names)
        img = page.figure(f"{slug}-examples", plot_adversarial_examples, sec["data"], d.class_names, eps=eps,
                          alt=f"adversarial examples, {d.title}: " + "; ".join(caps))
        fooled = int(np.asarray(sec["data"]["success"]).sum())
        head = (f'<p class="note">{_e(sec["meta"].get("attack", "PGD"))} on {len(caps)} correctly classified test images '
                f"(test indices {_e(', '.join(str(i) for i in sec['meta'].get('indices', [])))}); {fooled} of {len(caps)} fooled. "
                "Captions: prediction and confidence before → after the attack.</p>")
        return head + img + '<ul class="caps">' + "".join(f"<li>{_e(c)}</li>" for c in caps) + "</ul>"

    def fmaps(d: RunData, slug: str) -> str:
        if (msg := artifact_note(d)) is not None:
            return _missing(msg)
        sec = d.artifacts["feature_maps"]
        if "missing" in sec:
            return _missing(f"Feature maps not available: {sec['missing']}.")
        layers = sec["meta"].get("layers") or []
        note = (f'<p class="note">Test image {_e(sec["meta"].get("index"))}; for each layer the channel whose activation the '
                "attack changes most. " + ("" if len(layers) > 1 else "No denoising block in this model.") + "</p>")
        return note + page.figure(f"{slug}-features", plot_feature_maps, sec["data"], layers, alt=f"feature maps, {d.title}")

    def surface(d: RunData, slug: str) -> str:
        if (msg := artifact_note(d)) is not None:
            return _missing(msg)
        sec = d.artifacts["loss_surface"]
        if "missing" in sec:
            return _missing(f"Loss surface not available: {sec['missing']}.")
        meta, arr = sec["meta"], sec["data"]
        eps = _num(d.artifacts["manifest"].get("eps"))
        loss = np.asarray(arr["loss"])
        centre = loss[loss.shape[0] // 2, loss.shape[1] // 2]
        note = (f'<p class="note">Test image {_e(meta.get("index"))}, true class {_e(_class(d, meta.get("label")))}: '
                f"loss {centre:.3f} at the clean input, max {loss.max():.3f} over the grid. A smooth bowl suggests honest "
                "gradients; a jagged or flat surface with a sharp rise away from the centre suggests gradient masking.</p>")
        return note + page.figure(f"{slug}-loss-surface", plot_loss_surface, arr["coords"], loss, eps=eps,
                                  alt=f"loss surface, {d.title}")

    def filters(d: RunData, slug: str) -> str:
        if (msg := artifact_note(d)) is not None:
            return _missing(msg)
        sec = d.artifacts["filters"]
        if "missing" in sec:
            return _missing(f"First-layer filters not available: {sec['missing']}.")
        meta = sec["meta"]
        what = "first-layer filters" if meta.get("kind") != "linear" else "first-layer weights"
        return page.figure(f"{slug}-filters", plot_filters, sec["data"]["weight"], title=f"{what} ({meta.get('layer', '')})",
                           alt=f"{what}, {d.title}")

    def classvis(d: RunData, slug: str) -> str:
        if (msg := artifact_note(d)) is not None:
            return _missing(msg)
        sec = d.artifacts["class_visualisations"]
        if "missing" in sec:
            return _missing(f"Class visualisations not available: {sec['missing']}.")
        return page.figure(f"{slug}-classes", plot_class_visualisations, sec["data"]["images"], d.class_names,
                           probabilities=sec["meta"].get("target_probability"), alt=f"class visualisations, {d.title}")

    per_run("Accuracy over epochs", accuracy)
    per_run("Robust accuracy vs eps and attack iterations", eps_curve)
    if any(isinstance(d.metrics.get("corruptions"), dict) for d in data):
        P.append(_corruption_table(rows, data))
        per_run("Natural robustness: accuracy under common corruptions", corruptions)
    per_run("Gradient-masking checks", checks)
    per_run("Adversarial examples", examples, wide=True)
    per_run("Feature maps", fmaps)
    per_run("Loss surface", surface, wide=True)
    P.append("<h2>What the models learned: first-layer filters and class visualisations</h2>"
             '<p class="note">Filters: red positive, blue negative weights, each filter on its own scale. Class '
             "visualisations: the input that maximises each class's logit (gradient ascent from grey with an L2 "
             "penalty). Adversarially trained models tend to show smoother filters and more recognisable class images.</p>")
    P.append('<table class="side"><thead><tr><th></th>' + "".join(f"<th>{_e(d.title)}</th>" for d in data)
             + "</tr></thead><tbody>")
    P.append("<tr><th>filters</th>" + "".join(f"<td>{safe(filters, d, s)}</td>" for d, s in zip(data, slugs)) + "</tr>")
    P.append("<tr><th>classes</th>" + "".join(f"<td>{safe(classvis, d, s)}</td>" for d, s in zip(data, slugs)) + "</tr>")
    P.append("</tbody></table>")

    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
           f"<title>robustlab report: {_e(', '.join(d.title for d in data))}</title><style>{_CSS}</style></head>"
           "<body><main>" + "\n".join(page.parts) + "</main></body></html>\n")
    path = out / REPORT_FILE
    atomic_write_text(path, doc)
    return path


def _class(d: RunData, k: Any) -> str:
    names = d.class_names
    try:
        i = int(k)
    except (TypeError, ValueError):
        return "?"
    return f"{names[i]} ({i})" if 0 <= i < len(names) and names[i] != str(i) else str(i)


__all__ = [
    "RunData",
    "build_report",
    "example_captions",
    "plot_accuracy_history",
    "plot_adversarial_examples",
    "plot_class_visualisations",
    "plot_comparison",
    "plot_eps_comparison",
    "plot_eps_curve",
    "plot_feature_maps",
    "plot_filters",
    "plot_iterations_curve",
    "plot_corruptions",
    "plot_loss_surface",
    "read_artifacts",
    "read_history",
    "read_json",
    "read_run",
    "read_tensors",
    "run_summary",
]
