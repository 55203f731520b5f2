"""The CNN visualisations end to end: computed into a tiny digits run's artifacts
(robustlab.runs.visual_artifacts through write_artifacts), cached by refresh_artifacts, drawn
and captioned in the report (robustlab.report.visual)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from robustlab.report import build_report, read_run
from robustlab.report.data import percent
from robustlab.report.visual import (
    class_colours,
    plot_channel_visualisations,
    plot_decision_regions,
    plot_nearest_neighbours,
    visual_section,
)
from robustlab.runs.artifacts import read_manifest, refresh_artifacts, write_artifacts
from robustlab.runs.visual_artifacts import write_visual_artifacts
from robustlab.storage import load_model
from robustlab.storage.layout import VISUAL_ARTIFACTS
from robustlab.threat import ThreatModel

N_TRAIN, N_TEST = 400, 150
HEADINGS = ("Decision regions around one input", "Conv channel visualisations", "Nearest neighbours: pixel space vs feature space")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from robustlab.runs import RunSpec, train_run
    from robustlab.training import TrainConfig

    run = tmp_path_factory.mktemp("visual") / "digits"
    spec = RunSpec(dataset="digits", train_limit=N_TRAIN, test_limit=N_TEST, model_options={"channels": [8, 16], "hidden": 32},
                   monitor=None)
    train_run(spec, run, TrainConfig(epochs=3, batch_size=32, lr=1e-2, progress=False), device="cpu")
    write_artifacts(run, n_examples=4, eps=0.1, device="cpu")
    return run


def _data(run: Path, split: str):
    from robustlab.runs import load_run_data

    x, y, _ = load_run_data(run, split, "cpu")
    return x, y


def _art(run: Path, section: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "artifacts" / VISUAL_ARTIFACTS[section]))


def _visual_html(runs: list[Path], out: Path) -> str:
    """Only the visualisations' HTML (build_report would draw every other figure too)."""
    out.mkdir(parents=True, exist_ok=True)

    def figure(name, plot, *args, alt, **kwargs):
        plot(*args, out / f"{name}.png", **kwargs)
        return f'<img alt="{alt}">'

    return visual_section([read_run(r) for r in runs], [f"{i + 1:02d}" for i in range(len(runs))], figure)


def test_decision_regions_of_the_loss_surface_image(tiny_run):
    man = read_manifest(tiny_run)
    meta, arr = man["decision_regions"], _art(tiny_run, "decision_regions")
    x, y = _data(tiny_run, "test")
    assert meta["index"] == man["loss_surface"]["index"] and meta["label"] == int(y[meta["index"]])
    assert meta["radius"] == pytest.approx(0.3) and meta["grid"] == 41 and meta["direction"] == "sign"
    assert arr["pred"].shape == (41, 41) and arr["coords"][20] == 0 and torch.equal(arr["x"], x[meta["index"]])
    with torch.no_grad():
        assert int(arr["pred"][20, 20]) == int(load_model(tiny_run)(x[meta["index"]][None]).argmax(1))


def test_channel_images_raise_their_channels(tiny_run):
    meta, arr = read_manifest(tiny_run)["channel_visualisations"], _art(tiny_run, "channel_visualisations")
    assert meta["layer"] == "features.1.0" and meta["channels"] == list(range(8))
    assert arr["images"].shape == (8, 1, 8, 8) and float(arr["images"].min()) >= 0 and float(arr["images"].max()) <= 1
    assert bool((arr["activation"] > arr["start_activation"]).all())
    assert meta["activation"] == [round(float(v), 4) for v in arr["activation"]]


def test_neighbours_and_shares_match_a_numpy_search(tiny_run):
    meta, arr = read_manifest(tiny_run)["nearest_neighbours"], _art(tiny_run, "nearest_neighbours")
    x, y = _data(tiny_run, "test")
    xb, yb = _data(tiny_run, "train")
    assert meta["n_sample"] == N_TEST and meta["k"] == 5 and meta["bank"] == f"the first {N_TRAIN} training images"
    d = ((x.numpy().reshape(N_TEST, 1, -1) - xb.numpy().reshape(1, N_TRAIN, -1)).astype(np.float64) ** 2).sum(-1)
    nn_idx = np.argsort(d, axis=1, kind="stable")[:, :5]
    same = (yb.numpy()[nn_idx] == y.numpy()[:, None]).sum()
    assert meta["pixel_share"] == same / (N_TEST * 5)
    shown = meta["query_indices"]
    assert len(shown) == 4 and len({int(y[i]) for i in shown}) == 4  # one class per shown query
    assert torch.equal(arr["query"], x[shown]) and torch.equal(arr["query_label"], y[shown])
    assert torch.equal(arr["pixel_images"], xb[torch.as_tensor(nn_idx[shown])])
    assert torch.equal(arr["pixel_labels"], yb[torch.as_tensor(nn_idx[shown])])
    assert 0 <= meta["feature_share"] <= 1 and arr["feature_images"].shape == (4, 5, 1, 8, 8)


def test_report_shows_and_captions_them(tiny_run, tmp_path):
    doc = build_report([tiny_run], tmp_path / "out").read_text()
    man = read_manifest(tiny_run)
    parts = [doc.split(f"<h2>{h}")[1].split("<h2>")[0] for h in HEADINGS]
    assert all(p.count("<img ") == 1 and 'class="missing"' not in p for p in parts)
    assert "clamped to the input bounds" in parts[0] and "±0.3 (±3 eps)" in parts[0]
    assert "<code>features.1.0</code>" in parts[1] and "64 steps of gradient ascent" in parts[1]
    nn_meta = man["nearest_neighbours"]
    assert f"<b>{percent(nn_meta['pixel_share'])}</b> of the pixel-space" in parts[2]
    assert f"<b>{percent(nn_meta['feature_share'])}</b> of the" in parts[2]
    assert {p.name for p in (tmp_path / "out").glob("*.png")} >= {"01-digits-regions.png", "01-digits-channels.png",
                                                                  "01-digits-neighbours.png"}


def _resave_weights(run: Path, change) -> None:
    path = run / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    state = load_file(str(path))
    change(state)
    save_file(state, str(path), metadata=metadata)


def test_refresh_recomputes_when_the_model_or_a_section_changes(tiny_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    status = [d["status"] for d in refresh_artifacts([run], n_examples=4, eps=0.1)]
    assert status == ["fresh"]
    manifest = json.loads((run / "artifacts" / "artifacts.json").read_text())
    del manifest["nearest_neighbours"]  # artifacts written before the visualisations existed
    (run / "artifacts" / "artifacts.json").write_text(json.dumps(manifest))
    assert [d["status"] for d in refresh_artifacts([run], n_examples=4, eps=0.1)] == ["written"]
    assert "nearest_neighbours" in read_manifest(run)
    before = read_manifest(run)["model_sha256"]

    def retrain(state):  # the same architecture, other weights
        state["features.1.0.weight"] = -state["features.1.0.weight"]

    _resave_weights(run, retrain)
    assert [d["status"] for d in refresh_artifacts([run], n_examples=4, eps=0.1)] == ["written"]
    after = read_manifest(run)
    assert after["model_sha256"] != before
    assert after["channel_visualisations"]["activation"] != read_manifest(tiny_run)["channel_visualisations"]["activation"]
    assert [d["status"] for d in refresh_artifacts([run], n_examples=4, eps=0.1)] == ["fresh"]


def test_a_model_without_conv_gets_a_note(tiny_run, tmp_path):
    x, y = _data(tiny_run, "test")
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    out = tmp_path / "mlp" / "artifacts"
    entries = write_visual_artifacts(mlp, out, x[:40], y[:40], 3, ThreatModel("linf", 0.1), (1, 8, 8))
    assert entries["channel_visualisations"] == {"missing": "the model has no nn.Conv2d layer to visualise"}
    assert entries["decision_regions"]["index"] == 3 and (out / VISUAL_ARTIFACTS["decision_regions"]).is_file()
    nn_meta = entries["nearest_neighbours"]  # no training set: the other images are the bank
    assert nn_meta["n_sample"] == 20 and nn_meta["bank"] == "20 other images of the data (no training set)"
    (out / "artifacts.json").write_text(json.dumps({"eps": 0.1, "class_names": [str(i) for i in range(10)], **entries}))
    doc = _visual_html([tmp_path / "mlp"], tmp_path / "out")
    assert "Channel visualisations not available: the model has no nn.Conv2d layer to visualise." in doc
    assert all(h in doc for h in HEADINGS)


def test_old_artifacts_show_no_visualisation_section(tiny_run, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    manifest = json.loads((run / "artifacts" / "artifacts.json").read_text())
    for key in VISUAL_ARTIFACTS:
        del manifest[key]
    (run / "artifacts" / "artifacts.json").write_text(json.dumps(manifest))
    assert _visual_html([run], tmp_path / "out") == ""
    both = _visual_html([tiny_run, run], tmp_path / "out2")  # beside a run that has them: a note
    assert both.count("Decision regions not available: not computed.") == 1


# --- the plots, on hand-made data ------------------------------------------------------------------
NAMES = ["zero", "one", "two", "three"]


def test_decision_region_map_legend_and_marker(tmp_path):
    pred = np.zeros((5, 5), dtype=np.int64)
    pred[3:, :] = 2  # a > 0: class 2
    pred[:, 4] = 3
    coords = np.linspace(-0.2, 0.2, 5)
    fig = plot_decision_regions(pred, coords, NAMES, tmp_path / "r.png", x=np.zeros((1, 8, 8)), eps=0.1, label=0)
    ax = fig.axes[1]
    shown = np.asarray(ax.images[0].get_array())
    assert np.array_equal(shown, pred.T)  # rows: b (random), columns: a (gradient)
    assert ax.images[0].get_extent() == pytest.approx([-2.5, 2.5, -2.5, 2.5])  # in eps, half a cell beyond the ends
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["zero", "two", "three", "input"]
    cmap = class_colours(4)
    assert [to_hex(h.get_facecolor()) for h in legend.legend_handles[:3]] == [to_hex(cmap(k)) for k in (0, 2, 3)]
    assert list(ax.lines[0].get_xydata()[0]) == [0, 0]
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_neighbour_figure_colours_labels_by_class(tmp_path):
    rng = np.random.default_rng(0)
    data = {"query": rng.random((2, 1, 4, 4)), "query_label": np.array([1, 2]),
            "pixel_images": rng.random((2, 3, 1, 4, 4)), "pixel_labels": np.array([[1, 0, 1], [3, 3, 2]]),
            "feature_images": rng.random((2, 3, 1, 4, 4)), "feature_labels": np.array([[1, 1, 1], [2, 2, 0]])}
    fig = plot_nearest_neighbours(data, NAMES, tmp_path / "n.png", pixel_share=0.5, feature_share=5 / 6)
    labels = [ax.xaxis.label for ax in fig.axes if ax.images]
    assert len(labels) == 2 * (1 + 2 * 3)
    green = sum(to_hex(t.get_color()) == "#1a7f37" for t in labels)
    red = sum(to_hex(t.get_color()) == "#c62828" for t in labels)
    assert (green, red) == (3 + 5, 3 + 1)  # pixel: 2 + 1 same, feature: 3 + 2 same
    titles = [sf.get_suptitle() for sf in fig.subfigs]
    assert titles[1] == "3 nearest in pixel space: 50.0% same class (sample)" and "83.3%" in titles[2]


def test_channel_figure_titles(tmp_path):
    fig = plot_channel_visualisations(np.full((3, 1, 4, 4), 0.5), [4, 9, 2], tmp_path / "c.png", layer="conv2",
                                      start_activation=[0.1, -0.2, 0.0], activation=[1.5, 0.25, 2.0])
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles == ["ch 4\n0.10 → 1.50", "ch 9\n-0.20 → 0.25", "ch 2\n0.00 → 2.00"]
    assert "conv2" in fig.get_suptitle()
