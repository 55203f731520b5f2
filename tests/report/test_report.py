"""The report layer on small synthetic run directories (no model is built or loaded here)."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from robustlab import report as R

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


# --- synthetic runs ------------------------------------------------------------------------------
def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_artifacts_files(run: Path, n: int = 4, side: int = 8, eps: float = 0.1, seed: int = 0) -> None:
    """Artifact files shaped like robustlab.runs.artifacts writes them, with random content."""
    rng = np.random.default_rng(seed)
    art = run / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    x = rng.random((n, 1, side, side), dtype=np.float32)
    x_adv = np.clip(x + rng.uniform(-eps, eps, x.shape).astype(np.float32), 0, 1)
    save_file({
        "x": x, "x_adv": x_adv, "y": np.arange(n, dtype=np.int64) % 10, "index": np.arange(n, dtype=np.int64),
        "pred_clean": np.arange(n, dtype=np.int64) % 10, "conf_clean": np.full(n, 0.912, np.float32),
        "pred_adv": (np.arange(n, dtype=np.int64) + 2) % 10, "conf_adv": np.full(n, 0.885, np.float32),
        "success": np.ones(n, np.uint8),
    }, str(art / "examples.safetensors"))
    save_file({"input.clean": x[0], "input.adv": x_adv[0], "stage.clean": rng.random((side, side), dtype=np.float32),
               "stage.adv": rng.random((side, side), dtype=np.float32)}, str(art / "feature_maps.safetensors"))
    coords = (2 * eps * np.arange(-10, 11) / 10).astype(np.float32)
    a, b = np.meshgrid(coords, coords, indexing="ij")
    save_file({"loss": (1 + 20 * a + 5 * b * b).astype(np.float32), "coords": coords}, str(art / "loss_surface.safetensors"))
    save_file({"weight": rng.standard_normal((8, 1, 3, 3)).astype(np.float32)}, str(art / "filters.safetensors"))
    save_file({"images": rng.random((10, 1, side, side), dtype=np.float32)}, str(art / "class_visualisations.safetensors"))
    _write_json(art / "artifacts.json", {
        "schema_version": 1, "eps": eps, "norm": "linf", "class_names": CLASSES,
        "examples": {"file": "examples.safetensors", "attack": "PGD(norm=linf, eps=0.1, steps=20)", "indices": list(range(n)), "n": n},
        "feature_maps": {"file": "feature_maps.safetensors", "index": 0, "layers": [
            {"key": "stage", "module": "features.0.1", "class": "ReLU", "channel": 3, "channels": 8, "label": "first conv stage"}]},
        "loss_surface": {"file": "loss_surface.safetensors", "index": 0, "label": 0, "center_loss": 1.0},
        "filters": {"file": "filters.safetensors", "layer": "features.0.0", "kind": "conv"},
        "class_visualisations": {"file": "class_visualisations.safetensors", "target_probability": [0.9] * 10},
    })


def write_run(root: Path, name: str, *, defense: str = "clean", robust: float = 0.2, artifacts: bool = True,
              checks: bool = True) -> Path:
    run = root / name
    run.mkdir(parents=True)
    spec = {"dataset": "fashion-mnist", "model": "small-cnn", "model_options": {"channels": [8, 16]}, "defense": defense,
            "defense_options": {"eps": 0.1} if defense != "clean" else {},
            "monitor": {"attack": "pgd", "eps": 0.1, "norm": "linf", "steps": 20}}
    _write_json(run / "config.json", {"spec": spec, "training": {"epochs": 3}})
    _write_json(run / "model.json", {"format": "robustlab-model", "architecture": {"name": "small-cnn"},
                                     "dataset": {"name": "fashion-mnist", "class_names": CLASSES}})
    hist = [{"epoch": e, "clean_accuracy": 0.6 + 0.1 * e, "adv_accuracy": 0.1 * e, "train_loss": 1.0 / e, "seconds": 2.0}
            for e in (1, 2, 3)]
    (run / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))
    metrics = {
        "clean_accuracy": 0.9, "robust_accuracy": robust, "per_attack": {"fgsm": robust + 0.1, "pgd": robust},
        "eps": 0.1, "norm": "linf", "train_seconds": 6.0, "evaluate_seconds": 3.5,
        "eps_curve": [{"eps": e, "robust_accuracy": robust / e * 0.1,
                       "per_attack": {"fgsm": min(1, robust / e * 0.1 + 0.1), "pgd": robust / e * 0.1}}
                      for e in (0.05, 0.1, 0.2)],
        "iterations_curve": [{"steps": s, "robust_accuracy": robust + 0.1 / s} for s in (1, 10, 100)],
        "corruptions": {"gaussian_noise": {str(k): 0.9 - 0.1 * k for k in range(1, 6)},
                        "rotation": {str(k): 0.88 - 0.02 * k for k in range(1, 6)}},
        "mean_corruption_accuracy": 0.71,
    }
    if checks:
        metrics["checks"] = [{"name": "iterations help", "status": "PASS", "evidence": "pgd-100 < pgd-10"},
                             {"name": "black-box weaker", "status": "WARN", "evidence": "noise beats pgd <by> 3%"}]
    _write_json(run / "metrics.json", metrics)
    if artifacts:
        write_artifacts_files(run)
    return run


class _References(HTMLParser):
    """Image sources, and every tag or attribute by which a page could load something."""

    LOADING_TAGS = ("script", "link", "iframe", "frame", "object", "embed", "base")

    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs.get("src") or "")
        if tag in self.LOADING_TAGS:
            self.external.append(f"<{tag}>")
        for name in ("src", "href", "srcset", "poster", "data", "action"):
            value = (attrs.get(name) or "").strip()
            if name in attrs and not value.startswith(("data:", "#")):
                self.external.append(f"<{tag} {name}={value[:60]!r}>")


def _parse(doc: str) -> _References:
    p = _References()
    p.feed(doc)
    p.close()
    return p


def image_sources(doc: str) -> list[str]:
    return _parse(doc).srcs


def external_references(doc: str) -> list[str]:
    """What keeps ``doc`` from being one self-contained page ([] when nothing does): network
    addresses, tags or attributes that load another file, CSS imports and url()s, and images
    that are not PNG data URIs."""
    p = _parse(doc)
    found = [m.group(0) for m in re.finditer(r"https?://\S{0,40}", doc, re.I)]
    found += p.external
    found += [token for token in ("@import", "url(") if token in doc.lower()]
    for src in p.srcs:
        if not src.startswith("data:image/png;base64,"):
            found.append(f"image source {src[:60]!r}")
        elif not base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC):
            found.append(f"image data that is not a PNG: {src[:60]!r}")
    return found


# --- plot functions ----------------------------------------------------------------------------------
def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_accuracy_history_draws_one_line_per_series(tmp_path):
    hist = [{"epoch": e, "clean_accuracy": 0.5 + 0.1 * e, "adv_accuracy": 0.1 * e, "train_loss": 1 / e} for e in (1, 2, 3)]
    fig = R.plot_accuracy_history(hist, tmp_path / "a.png")
    acc = fig.axes[0]
    assert len(acc.lines) == 2 and acc.get_xlabel() == "epoch" and acc.get_ylabel() == "accuracy"
    assert list(acc.lines[0].get_xdata()) == [1, 2, 3] and acc.lines[1].get_ydata()[-1] == pytest.approx(0.3)
    assert fig.axes[1].get_ylabel() == "training loss" and len(fig.axes[1].lines) == 1
    assert _is_png(tmp_path / "a.png")
    fig = R.plot_accuracy_history([{"epoch": 1, "clean_accuracy": 0.7}], tmp_path / "b.png")  # no monitor, no loss
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 1 and _is_png(tmp_path / "b.png")


def test_eps_curve_worst_case_each_attack_and_clean(tmp_path):
    curve = [{"eps": e, "robust_accuracy": 0.5 - e, "per_attack": {"fgsm": 0.6 - e, "pgd": 0.5 - e}} for e in (0.2, 0.05, 0.1)]
    fig = R.plot_eps_curve(curve, tmp_path / "eps.png", clean_accuracy=0.9)
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # worst case, fgsm, pgd, clean reference
    assert list(ax.lines[0].get_xdata()) == [0.05, 0.1, 0.2]  # sorted by eps
    assert "eps" in ax.get_xlabel() and ax.get_ylabel() == "robust accuracy"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["worst case (all attacks)", "fgsm", "pgd", "clean"]
    assert _is_png(tmp_path / "eps.png")


def test_iterations_and_comparison_plots(tmp_path):
    fig = R.plot_iterations_curve([{"steps": s, "robust_accuracy": 0.3} for s in (1, 10, 100)], tmp_path / "it.png")
    ax = fig.axes[0]
    assert len(ax.lines) == 1 and ax.get_xlabel() == "attack iterations" and ax.get_xscale() == "log"
    rows = [{"title": "std $x$", "clean_accuracy": 0.9, "robust_accuracy": 0.0},
            {"title": "at", "clean_accuracy": 0.85, "robust_accuracy": None}]
    fig = R.plot_comparison(rows, tmp_path / "cmp.png")
    assert len(fig.axes[0].patches) == 4 and fig.axes[0].get_ylabel() == "accuracy"
    fig = R.plot_eps_comparison({"a": [{"eps": 0.1, "robust_accuracy": 0.2}, {"eps": 0.2, "robust_accuracy": 0.1}],
                                 "b": [{"eps": 0.1, "robust_accuracy": 0.5}, {"eps": 0.2, "robust_accuracy": 0.3}]}, tmp_path / "ce.png")
    assert len(fig.axes[0].lines) == 2
    assert all(_is_png(tmp_path / f) for f in ("it.png", "cmp.png", "ce.png"))


def test_corruption_plot_and_section(tmp_path):
    table = {"gaussian_noise": {"1": 0.8, "3": 0.5, "2": 0.7}, "shift": {"1": 0.9, "2": 0.85, "3": 0.6}}
    fig = R.plot_corruptions(table, tmp_path / "c.png", clean_accuracy=0.9)
    ax = fig.axes[0]
    assert len(ax.lines) == 3 and list(ax.lines[0].get_xdata()) == [1, 2, 3]  # sorted by severity, + clean line
    assert ax.get_xlabel() == "severity" and ax.get_ylabel() == "accuracy" and _is_png(tmp_path / "c.png")
    with_table = write_run(tmp_path, "a", artifacts=False)
    without = tmp_path / "b"
    without.mkdir()
    _write_json(without / "metrics.json", {"clean_accuracy": 0.8})
    doc = R.build_report([with_table, without], tmp_path / "out").read_text()
    section = doc.split("<h2>Adversarial and natural robustness</h2>")[1].split("</table>")[0]
    assert "gaussian_noise" in section and "rotation" in section
    assert "<b>71.0%</b>" in section  # the stored overall mean
    assert "60.0%" in section and "82.0%" in section  # each corruption's mean over severities 1-5
    assert "No corruption table" in doc  # the run without one says so
    assert (tmp_path / "out" / "01-a-corruptions.png").is_file()


def test_adversarial_examples_grid_and_captions(tmp_path):
    write_artifacts_files(tmp_path / "run", n=3)
    data = R.read_tensors(tmp_path / "run" / "artifacts" / "examples.safetensors")
    caps = R.example_captions(data, CLASSES)
    assert caps[0] == "T-shirt/top 91.2% → Pullover 88.5%"
    assert R.example_captions(data, [])[1] == "1 91.2% → 3 88.5%"  # no class names: indices
    fig = R.plot_adversarial_examples(data, CLASSES, tmp_path / "ex.png", eps=0.1)
    assert len(fig.axes) == 9 and all(len(ax.images) == 1 for ax in fig.axes)
    assert fig.axes[0].get_ylabel() == "original" and fig.axes[6].get_ylabel() == "adversarial"
    assert "Pullover" in fig.axes[6].get_xlabel()
    pert = fig.axes[3].images[0].get_array()  # amplified perturbation: centred at 0.5, within [0, 1]
    assert float(pert.min()) >= 0 and float(pert.max()) <= 1
    assert _is_png(tmp_path / "ex.png")


def test_feature_maps_loss_surface_filters_classes(tmp_path):
    write_artifacts_files(tmp_path / "run")
    art = R.read_artifacts(tmp_path / "run")
    fm = art["feature_maps"]
    fig = R.plot_feature_maps(fm["data"], fm["meta"]["layers"], tmp_path / "fm.png")
    assert sum(len(ax.images) for ax in fig.axes) == 6  # inputs row + one layer row, 3 each
    ls = art["loss_surface"]["data"]
    fig = R.plot_loss_surface(ls["coords"], ls["loss"], tmp_path / "ls.png", eps=0.1)
    assert fig.axes[0].get_xlabel().startswith("gradient-sign direction") and fig.axes[0].get_ylabel().startswith("random")
    assert any(ax.name == "3d" for ax in fig.axes)
    fig = R.plot_filters(art["filters"]["data"]["weight"], tmp_path / "f.png")
    assert sum(len(ax.images) for ax in fig.axes) == 8
    fig = R.plot_class_visualisations(art["class_visualisations"]["data"]["images"], CLASSES, tmp_path / "c.png", probabilities=[0.5] * 10)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 10 and shown[8].get_title() == "Bag\np=0.50"
    assert all(_is_png(tmp_path / f) for f in ("fm.png", "ls.png", "f.png", "c.png"))


# --- build_report -------------------------------------------------------------------------------------
def test_full_report_two_runs_is_self_contained(tmp_path):
    a = write_run(tmp_path, "standard", robust=0.0)
    b = write_run(tmp_path, "adv", defense="pgd-at", robust=0.6)
    path = R.build_report([a, b], tmp_path / "out", titles=["standard <script>alert(1)</script>", "PGD-AT & co"])
    assert path == tmp_path / "out" / "report.html"
    doc = path.read_text()
    assert external_references(doc) == []
    assert "<script>" not in doc and "standard &lt;script&gt;alert(1)&lt;/script&gt;" in doc
    assert "PGD-AT &amp; co" in doc and "noise beats pgd &lt;by&gt; 3%" in doc
    for heading in ("Summary", "Comparison", "Accuracy over epochs", "Robust accuracy vs eps", "Gradient-masking checks",
                    "Adversarial and natural robustness", "accuracy under common corruptions",
                    "Adversarial examples", "Feature maps", "Loss surface", "first-layer filters and class visualisations"):
        assert heading in doc, heading
    assert "T-shirt/top 91.2% → Pullover 88.5%" in doc
    assert 'style="background:#1a7f37">PASS' in doc and 'style="background:#b35900">WARN' in doc
    assert "+60.0 pts" in doc  # robust accuracy difference in the comparison table
    # per run: accuracy, eps, iterations, corruptions, examples, features, loss surface, filters, classes;
    # plus 2 comparison charts and the runs-compared figure (both runs have histories)
    assert len(image_sources(doc)) == 2 * 9 + 3
    assert len(list((tmp_path / "out").glob("*.png"))) == 21
    assert 'class="missing"' not in doc


def test_report_degrades_when_parts_are_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    partial = write_run(tmp_path, "partial", artifacts=False, checks=False)
    (partial / "history.jsonl").write_text("not json\n")
    broken = write_run(tmp_path, "broken")
    (broken / "artifacts" / "loss_surface.safetensors").write_bytes(b"garbage")
    (broken / "metrics.json").write_text("{truncated")
    save_file({"x": np.zeros((2, 1, 8, 8), np.float32)}, str(broken / "artifacts" / "examples.safetensors"))  # keys missing
    doc = R.build_report([empty, partial, broken], tmp_path / "out").read_text()
    assert external_references(doc) == []
    assert "No history.jsonl" in doc
    assert "No gradient-masking checks" in doc
    assert "No artifacts" in doc
    assert "Loss surface not available: loss_surface.safetensors unreadable" in doc
    assert "could not read this section&#x27;s data: KeyError" in doc
    assert "broken-features.png" in "".join(p.name for p in (tmp_path / "out").glob("*.png"))  # the rest still drawn
    assert "No attack evaluation" not in doc  # partial has one
    rows = doc.split("<h2>Summary</h2>")[1].split("</table>")[0]
    assert rows.count("<tr>") == 4 and "—" in rows
    # a run with nothing at all still gets a page
    doc = R.build_report([empty], tmp_path / "out2").read_text()
    assert external_references(doc) == []
    assert image_sources(doc) == []
    assert "No attack evaluation in any metrics.json" in doc


_PAGE = '<!DOCTYPE html><html><head><style>p{{color:red}}</style></head><body>{}</body></html>'
_PNG_URI = "data:image/png;base64," + base64.b64encode(PNG_MAGIC + b"rest").decode("ascii")


def test_external_references_passes_a_self_contained_page():
    assert external_references(_PAGE.format(f'<p>ok</p><img src="{_PNG_URI}" alt="x"><a href="#top">top</a>')) == []


@pytest.mark.parametrize("bad", [
    '<img src="http://example.com/a.png" alt="x">',
    '<img src="a.png" alt="x">',
    '<link rel="stylesheet" href="report.css">',
    '<link rel="icon" href="data:,">',
    "<script>alert(1)</script>",
    '<iframe srcdoc="x"></iframe>',
    '<a href="https://example.com">x</a>',
    '<img src="data:image/png;base64,' + base64.b64encode(b"GIF89a").decode("ascii") + '" alt="x">',
    '<div style="background:url(x.png)">x</div>',
    '<style>@import "x.css";</style>',
])
def test_external_references_finds_what_a_page_would_load(bad):
    assert external_references(_PAGE.format(f'<img src="{_PNG_URI}" alt="ok">' + bad)) != []


def test_demo_style_metrics_are_summarised(tmp_path):
    run = tmp_path / "demo"
    run.mkdir()
    _write_json(run / "metrics.json", {"clean_accuracy": 0.91, "demo_attacks": {
        "robust_accuracy": 0.05, "per_attack": {"fgsm": 0.3, "pgd": 0.06}, "threat": {"norm": "linf", "eps": 0.1}}})
    row = R.run_summary(R.read_run(run))
    assert row["robust_accuracy"] == 0.05 and row["per_attack"]["pgd"] == 0.06 and row["eps"] == 0.1


def test_summary_names_the_attacked_subset_and_how_attacks_were_counted(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    _write_json(sub / "metrics.json", {"clean_accuracy": 0.858, "test_samples": 10000, "robust_accuracy": 0.703,
                                       "per_attack": {"pgd": 0.73}, "eps": 0.1, "norm": "linf",
                                       "evaluation": {"n": 1000, "clean_accuracy": 0.867, "per_attack_mode": "independent"}})
    full = tmp_path / "full"
    full.mkdir()
    _write_json(full / "metrics.json", {"clean_accuracy": 0.9, "test_samples": 500, "robust_accuracy": 0.1,
                                        "per_attack": {"pgd": 0.2}, "eps": 0.1, "norm": "linf",
                                        "evaluation": {"n": 500, "clean_accuracy": 0.9, "per_attack_mode": "cumulative"}})
    doc = R.build_report([sub, full], tmp_path / "out").read_text()
    summary = doc.split("<h2>Summary</h2>")[1].split("</p>")[0]
    assert "n=10000" in summary and "n=1000<br>clean 86.7%" in summary  # a subset names its own clean accuracy
    assert "n=500</small>" in summary  # the full test set: no second clean number
    assert "sub: each attack on its own" in summary and "full: cumulative" in summary


def test_build_report_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        R.build_report([], tmp_path / "o")
    with pytest.raises(ValueError, match="not found"):
        R.build_report([tmp_path / "nope"], tmp_path / "o")
    run = write_run(tmp_path, "r", artifacts=False)
    with pytest.raises(ValueError, match="titles"):
        R.build_report([run], tmp_path / "o", titles=["a", "b"])


def test_cli_report_without_artifacts(tmp_path):
    from click.testing import CliRunner

    from robustlab.cli import main

    run = write_run(tmp_path, "r", artifacts=False)
    res = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "out"), "--no-artifacts"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith("report.html") and (tmp_path / "out" / "report.html").is_file()
    res = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "out"), "--eps", "0"])
    assert res.exit_code == 2 and "eps" in res.output
    res = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "out")])  # no model: report anyway
    assert res.exit_code == 0 and "without artifacts" in res.output
