"""robustlab compare (report.compare): clean and adversarial accuracy per epoch of several runs in
one figure, its data in compare.json, and the report's first section on several runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustlab.report.compare import (
    FALLBACK_NOTE,
    plot_run_comparison,
    write_comparison,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(root: Path, name: str, history: list[dict], *, defense: str = "clean", batchnorm: bool | None = False,
         activation: str = "relu", model: str = "small-cnn") -> Path:
    run = root / name
    run.mkdir(parents=True)
    spec = {"dataset": "digits", "model": model, "model_options": {}, "defense": defense,
            "defense_options": {"eps": 0.1} if defense != "clean" else {},
            "monitor": {"attack": "pgd", "eps": 0.1, "norm": "linf", "steps": 20}}
    arch = {"name": model, "activation": activation, **({"batchnorm": batchnorm} if batchnorm is not None else {})}
    (run / "config.json").write_text(json.dumps({"spec": spec, "training": {"epochs": len(history)}}))
    (run / "model.json").write_text(json.dumps({"format": "robustlab-model", "architecture": arch, "spec": spec}))
    (run / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return run


def _history(clean: list[float], on_correct: list[float] | None, over_all: list[float] | None) -> list[dict]:
    out = []
    for i, c in enumerate(clean):
        h = {"epoch": i + 1, "clean_accuracy": c, "train_loss": 1.0}
        if on_correct is not None:
            h["adv_accuracy_on_correct"] = on_correct[i]
        if over_all is not None:
            h["adv_accuracy"] = over_all[i]
        out.append(h)
    return out


def test_one_series_per_run_with_the_history_values_and_the_fallback_said(tmp_path):
    a = _run(tmp_path, "plain", _history([0.7, 0.8, 0.9], [0.1, 0.05, 0.02], [0.07, 0.04, 0.018]))
    b = _run(tmp_path, "bn-gelu-at", _history([0.6, 0.7], [0.5, 0.6], [0.3, 0.42]), defense="pgd-at", batchnorm=True,
             activation="gelu")
    old = _run(tmp_path, "old", _history([0.5, 0.55, 0.6, 0.65], None, [0.2, 0.25, 0.3, 0.35]), model="resnet18",
               batchnorm=None)
    doc = write_comparison([a, b, old], tmp_path / "cmp")
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text()) == doc
    runs = doc["runs"]
    assert [r["title"] for r in runs] == ["plain", "bn-gelu-at", "old"]
    # the series are the histories' numbers: on-correct where recorded, else (older run) over all images
    assert runs[0]["clean_accuracy"] == [0.7, 0.8, 0.9] and runs[0]["adv_accuracy"] == [0.1, 0.05, 0.02]
    assert runs[1]["epochs"] == [1, 2] and runs[1]["adv_accuracy"] == [0.5, 0.6]
    assert [r["adv_measure"] for r in runs] == ["adv_accuracy_on_correct"] * 2 + ["adv_accuracy"]
    assert runs[2]["adv_accuracy"] == [0.2, 0.25, 0.3, 0.35]
    # the legend names defense, BatchNorm and activation (resnet18 always normalises)
    assert runs[0]["label"] == "plain: clean, BN off, relu"
    assert runs[1]["label"] == "bn-gelu-at: pgd-at (eps=0.1), BN on, gelu"
    assert runs[2]["label"] == "old: clean, BN on, relu"

    fig = plot_run_comparison(runs, tmp_path / "again.png")
    left, right = fig.axes[:2]
    assert len(left.lines) == 3 and len(right.lines) == 3  # one line per run in each panel
    for line, r in zip(left.lines, runs):
        assert list(line.get_ydata()) == r["clean_accuracy"] and line.get_label() == r["label"]
    for line, r in zip(right.lines, runs):
        assert list(line.get_ydata()) == r["adv_accuracy"]
        assert list(line.get_xdata()) == r["epochs"]
    assert FALLBACK_NOTE in right.lines[2].get_label() and FALLBACK_NOTE not in right.lines[0].get_label()
    assert left.lines[1].get_color() == right.lines[1].get_color()  # a run keeps its colour across panels


def test_a_run_without_monitor_has_no_adversarial_line(tmp_path):
    a = _run(tmp_path, "a", _history([0.7, 0.8], [0.1, 0.2], [0.1, 0.2]))
    b = _run(tmp_path, "b", _history([0.6, 0.9], None, None))
    doc = write_comparison([a, b], tmp_path / "cmp")
    assert doc["runs"][1]["adv_measure"] is None and doc["runs"][1]["adv_accuracy"] == [None, None]
    fig = plot_run_comparison(doc["runs"], tmp_path / "x.png")
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[1].lines) == 1


def test_adv_accuracy_on_correct_equals_a_hand_count(tmp_path):
    """A tiny digits run trained with a PGD monitor: compare's last adversarial value is the
    count, by hand, of the monitor images that stay correct under the same attack among those the
    final model classifies correctly."""
    from robustlab.attacks import PGD
    from robustlab.data import load_dataset
    from robustlab.runs import RunSpec, train_run
    from robustlab.storage import load_model
    from robustlab.threat import ThreatModel
    from robustlab.training import TrainConfig

    monitor = {"attack": "pgd", "eps": 0.15, "norm": "linf", "steps": 5, "rel_step_size": 0.25, "seed": 0}
    spec = RunSpec(dataset="digits", train_limit=400, test_limit=120, model_options={"channels": [8, 16], "hidden": 32},
                   monitor=monitor)
    train_run(spec, tmp_path / "run", TrainConfig(epochs=2, batch_size=32, lr=1e-2, progress=False, monitor_n=80), device="cpu")
    doc = write_comparison([tmp_path / "run"], tmp_path / "cmp")
    series = doc["runs"][0]
    assert series["adv_measure"] == "adv_accuracy_on_correct" and len(series["adv_accuracy"]) == 2

    model = load_model(tmp_path / "run").eval()
    x, y, _ = load_dataset("digits", "test")
    x, y = x[:80], y[:80]
    attack = PGD(ThreatModel("linf", 0.15), steps=5, rel_step_size=0.25, seed=0)
    x_adv = attack(model, x, y)
    with torch.no_grad():
        clean_pred, adv_pred = model(x).argmax(1), model(x_adv).argmax(1)
    clean_right = both_right = 0
    for i in range(len(y)):
        if clean_pred[i] == y[i]:
            clean_right += 1
            if adv_pred[i] == y[i]:
                both_right += 1
    assert 0 < both_right < clean_right  # the attack breaks some, not all: the count is informative
    assert series["adv_accuracy"][-1] == pytest.approx(both_right / clean_right, abs=1e-12)
    assert series["clean_accuracy"][-1] != pytest.approx(both_right / clean_right)


def test_cli_compare_and_its_errors(tmp_path):
    from click.testing import CliRunner

    from robustlab.cli import main

    a = _run(tmp_path, "a", _history([0.7, 0.8], [0.1, 0.2], [0.1, 0.2]))
    b = _run(tmp_path, "b", _history([0.6, 0.9], None, [0.3, 0.4]))
    res = CliRunner().invoke(main, ["compare", str(a), str(b), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[-1] == str(tmp_path / "cmp" / "compare.png")
    assert "a: clean, BN off, relu" in res.output and "0.2000" in res.output and "older run" in lines[2]
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(main, ["compare", str(a), str(empty), "--out", str(tmp_path / "cmp2")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "empty has no test accuracies" in res.output
    res = CliRunner().invoke(main, ["compare", "--out", str(tmp_path / "cmp3")])
    assert res.exit_code == 2 and "RUNS" in res.output


def test_report_on_several_runs_opens_with_the_comparison(tmp_path):
    from robustlab.report import build_report

    a = _run(tmp_path, "a", _history([0.7, 0.8], [0.1, 0.2], [0.1, 0.2]))
    b = _run(tmp_path, "b", _history([0.6, 0.9], [0.3, 0.4], [0.3, 0.4]), batchnorm=True)
    doc = build_report([a, b], tmp_path / "out").read_text()
    first = doc.index("<h2>")
    assert doc[first:].startswith("<h2>Runs compared: clean and adversarial accuracy per epoch</h2>")
    assert doc.index("Runs compared") < doc.index("<h2>Summary</h2>")
    assert (tmp_path / "out" / "compare.png").read_bytes()[:8] == PNG_MAGIC
    section = doc.split("<h2>Runs compared")[1].split("<h2>")[0]
    assert "80.0%" in section and "40.0%" in section  # each run's last-epoch clean / adv numbers
    # one run: no such section
    doc = build_report([a], tmp_path / "one").read_text()
    assert "Runs compared" not in doc
