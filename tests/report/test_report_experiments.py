"""The report's experiments (report.experiments): an offline retraining run's stage table, a
train-detector directory's ROC curves (roc.json) and detection rates, a noisy-student directory's
generations; all on tiny real runs on digits, next to an ordinary run."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from robustlab.cli import main
from robustlab.report import build_report, read_run
from robustlab.report.data import percent
from robustlab.report.experiments import (
    OFFLINE_STAGES,
    ROC_FILE,
    experiment_kind,
    plot_roc,
)

SMALL = {"channels": [8, 16], "hidden": 32}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """An ordinary run, an offline run, a detector directory on the ordinary run and a Noisy
    Student directory, each as small as still meaningful (seconds in all)."""
    from robustlab.runs import RunSpec, train_run
    from robustlab.training import TrainConfig

    root = tmp_path_factory.mktemp("experiments")
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, progress=False, monitor_n=60)
    train_run(RunSpec(dataset="digits", train_limit=400, test_limit=120, model_options=SMALL,
                      monitor={"attack": "pgd", "eps": 0.1, "steps": 3, "seed": 0}), root / "run", cfg, device="cpu")
    train_run(RunSpec(dataset="digits", train_limit=300, test_limit=100, model_options=SMALL, defense="offline",
                      defense_options={"eps": 0.1}, monitor=None), root / "offline", cfg, device="cpu")
    r = CliRunner().invoke(main, ["train-detector", str(root / "run"), "--steps", "3", "--eval-steps", "3", "--n-train", "200",
                                  "--n-test", "80", "--epochs", "5", "--device", "cpu", "--out", str(root / "det")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["noisy-student", "--dataset", "digits", "--labelled", "150", "--unlabelled", "150",
                                  "--epochs", "1", "--teacher-option", "channels=[8,16]", "--teacher-option", "hidden=32",
                                  "--eval-n", "20", "--pgd-steps", "2", "--test-limit", "60", "--device", "cpu", "--quiet",
                                  "--out", str(root / "ns")])
    assert r.exit_code == 0, r.output
    return {"run": root / "run", "offline": root / "offline", "det": root / "det", "ns": root / "ns"}


def _section(doc: str, heading: str) -> str:
    return doc.split(f"<h2>{heading}")[1].split("<h2>")[0]


def _cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]


def _rows(table_html: str) -> list[list[str]]:
    body = table_html.split("<tbody>")[1].split("</tbody>")[0]
    return [_cells(r) for r in body.split("</tr>") if "<td" in r]


def test_the_kinds_are_told_apart(dirs):
    assert experiment_kind(dirs["det"]) == "detector" and experiment_kind(dirs["ns"]) == "noisy-student"
    assert experiment_kind(dirs["run"]) is None and experiment_kind(dirs["offline"]) is None
    assert read_run(dirs["det"]).kind == "detector" and read_run(dirs["run"]).kind == "run"
    from robustlab.detection.detector import DETECTOR_FORMAT
    from robustlab.report import experiments
    from robustlab.runs import detector

    assert experiments.ROC_FILE == detector.ROC_FILE and experiments.DETECTOR_FORMAT == DETECTOR_FORMAT


def test_offline_stage_table_holds_the_pipelines_numbers(dirs, tmp_path):
    """The table's accuracies are metrics.json's, and those are what the saved models score
    (recomputed here from the first and the retrained model)."""
    from robustlab.attacks import FGSM
    from robustlab.data import load_dataset
    from robustlab.storage import load_model
    from robustlab.threat import ThreatModel

    run = dirs["offline"]
    m = json.loads((run / "metrics.json").read_text())
    x, y, _ = load_dataset("digits", "test")
    x, y = x[:100], y[:100]
    first, retrained = load_model(run / "stage1").eval(), load_model(run).eval()
    with torch.no_grad():
        assert m["stage1_clean_accuracy"] == pytest.approx(float((first(x).argmax(1) == y).float().mean()))
        assert m["retrained_clean_accuracy"] == pytest.approx(float((retrained(x).argmax(1) == y).float().mean()))
    fresh = FGSM(ThreatModel("linf", 0.1))(retrained, x, y)
    with torch.no_grad():
        assert m["retrained_fgsm_fresh_accuracy"] == pytest.approx(float((retrained(fresh).argmax(1) == y).float().mean()))

    doc = build_report([run], tmp_path / "out").read_text()
    card = _section(doc, "Experiments")
    assert "offline (offline adversarial retraining)" in card
    rows = _rows(card)
    keys = [k for k, _, _ in OFFLINE_STAGES if k in m]
    assert len(rows) == len(keys) >= 5
    for row, key in zip(rows, keys):
        assert row[0] == ("1" if key.startswith("stage1") else "2") and row[-1] == percent(m[key])
    assert "fresh FGSM against the retrained model" in rows[-1][2]


def test_detector_roc_points_are_consistent_with_its_metrics(dirs):
    """roc.json's curves run from (0, 0) to (1, 1), their trapezoid area is the Mann-Whitney AUC in
    metrics.json (for the adaptive attack too, whose examples train-detector makes a second time),
    and the detector's operating point (actual FPR, detection rate) is a corner of the curve."""
    m = json.loads((dirs["det"] / "metrics.json").read_text())
    roc = json.loads((dirs["det"] / ROC_FILE).read_text())
    for name in ("plain", "adaptive"):
        fpr, tpr = np.array(roc[name]["fpr"]), np.array(roc[name]["tpr"])
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
        assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        assert area == pytest.approx(m[name]["roc_auc"], abs=1e-5)
        assert roc[name]["n_clean"] == roc[name]["n_adversarial"] == m["n"] == 80
        corner = np.abs(fpr - m["false_positive_rate"]) + np.abs(tpr - m[name]["detection_rate"])
        assert corner.min() < 1e-5


def test_detector_card_roc_figure_and_table(dirs, tmp_path):
    m = json.loads((dirs["det"] / "metrics.json").read_text())
    roc = json.loads((dirs["det"] / ROC_FILE).read_text())
    fig = plot_roc({k: roc[k] for k in ("plain", "adaptive")}, tmp_path / "roc.png",
                   operating={"plain": (m["false_positive_rate"], m["plain"]["detection_rate"])})
    ax = fig.axes[0]
    assert len(ax.lines) == 3  # two curves and the chance diagonal
    assert list(ax.lines[0].get_ydata()) == roc["plain"]["tpr"] and list(ax.lines[1].get_xdata()) == roc["adaptive"]["fpr"]
    assert len(ax.collections) == 1  # one operating point given, one marker

    doc = build_report([dirs["det"]], tmp_path / "out").read_text()
    card = _section(doc, "Experiments")
    assert "det (detector experiment)" in card and card.count("<img") == 1
    rows = _rows(card)
    assert [r[0] for r in rows] == ["plain", "adaptive"]
    for row, name in zip(rows, ("plain", "adaptive")):
        assert row[2:] == [percent(m[name][k]) for k in ("success_rate", "roc_auc", "detection_rate",
                                                         "detection_rate_on_successful", "fool_and_evade")]
    summary = _rows(_section(doc, "Summary"))
    assert summary[0][:4] == ["det", "digits", "detector on run (classifier.4)", "detector (train-detector)"]
    assert "Accuracy over epochs" not in doc and "Loss surface" not in doc  # no per-run model sections for it

    older = tmp_path / "older"
    shutil.copytree(dirs["det"], older)
    (older / ROC_FILE).unlink()
    doc = build_report([older], tmp_path / "out2").read_text()
    assert "No roc.json: run robustlab train-detector again" in doc and "plain" in _section(doc, "Experiments")


def test_noisy_student_generations_side_by_side(dirs, tmp_path):
    m = json.loads((dirs["ns"] / "metrics.json").read_text())
    gens = m["generations"]
    doc = build_report([dirs["ns"]], tmp_path / "out").read_text()
    card = _section(doc, "Experiments")
    assert "PGD-2 acc (linf eps 0.1)" in card
    rows = _rows(card)
    assert [r[1] for r in rows] == ["teacher", "student_1"] == [g["role"] for g in gens]
    for row, g in zip(rows, gens):
        assert row[2] == str(g["parameters"]) and row[6] == percent(g["clean_accuracy"])
        assert row[8] == percent(g["pgd2_accuracy"])
    assert rows[1][7] == f"{100 * (gens[1]['clean_accuracy'] - gens[0]['clean_accuracy']):+.1f} pts"
    assert rows[1][5] == percent(gens[1]["pseudo_label_agreement_with_truth"])
    # without a robust number (evaluated with --pgd-steps 0) the column says so
    bare = tmp_path / "bare"
    bare.mkdir()
    m2 = {**m, "config": {**m["config"], "eval_steps": 0},
          "generations": [{k: v for k, v in g.items() if k != "pgd2_accuracy"} for g in gens]}
    (bare / "metrics.json").write_text(json.dumps(m2))
    doc = build_report([bare], tmp_path / "out2").read_text()
    assert "No robust accuracy was recorded" in doc and _rows(_section(doc, "Experiments"))[0][8] == "—"


def test_a_report_on_all_kinds_together(dirs, tmp_path):
    doc = build_report([dirs[k] for k in ("run", "offline", "det", "ns")], tmp_path / "out").read_text()
    assert "http://" not in doc and "https://" not in doc and "<script" not in doc
    assert all(s.startswith("data:image/png;base64,") for s in re.findall(r'<img src="([^"]*)"', doc))
    assert len(_rows(_section(doc, "Summary"))) == 4
    assert _section(doc, "Experiments").count('<div class="card wide"><h3>') == 3  # offline, detector, Noisy Student
    assert _section(doc, "Accuracy over epochs").count("<h3>") == 2  # the two runs with a model
    assert doc.index("<h2>Runs compared") < doc.index("<h2>Summary")  # run and offline both have histories
    assert 'class="missing">could not' not in doc
