"""``robustlab leaderboard`` on small synthetic directories: evaluation directories, run
directories (evaluated or not), zoo cards; grouped by threat model, sorted by robust accuracy,
missing numbers shown as a dash (never a crash), Markdown and HTML written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from robustlab.cli import main
from robustlab.models import build_model
from robustlab.report.leaderboard import collect_rows, format_markdown, grouped

ARCH = {"name": "small-cnn", "num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [4, 8], "hidden": 16}


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _evaluation(d: Path, clean, robust, n=1000, norm="linf", eps=0.1, suite="standard", run=None) -> Path:
    model = {"architecture": ARCH} | ({"run": str(run)} if run else {})
    _write(d / "evaluation.json", {"kind": "robustlab-evaluation", "schema_version": 1, "clean_accuracy": clean,
                                   "robust_accuracy": robust, "n": n, "threat": {"norm": norm, "eps": eps},
                                   "suite": suite, "model": model})
    return d


def _run(d: Path, metrics: dict | None, model_json: bool = True) -> Path:
    if metrics is not None:
        _write(d / "metrics.json", metrics)
    if model_json:
        _write(d / "model.json", {"architecture": ARCH})
    return d


@pytest.fixture()
def sources(tmp_path):
    trained = _run(tmp_path / "runs" / "pgd-at", {"clean_accuracy": 0.85, "test_samples": 10000, "train_seconds": 1200})
    return {
        "ev_a": _evaluation(tmp_path / "ev_a", 0.85, 0.70, run=trained),  # the run gives time and name
        "ev_b": _evaluation(tmp_path / "ev_b", 0.90, 0.75, suite=None),  # no suite, no run: dashes
        "ev_l2": _evaluation(tmp_path / "ev_l2", 0.88, 0.60, norm="l2", eps=1.5),
        "run_eval": _run(tmp_path / "run_eval", {"clean_accuracy": 0.80, "test_samples": 10000, "train_seconds": 30,
                                                 "robust_accuracy": 0.72, "evaluated_samples": 500, "eps": 0.1,
                                                 "norm": "linf", "suite": "quick"}),
        "run_plain": _run(tmp_path / "run_plain", {"clean_accuracy": 0.91, "test_samples": 10000}),
        "run_bare": _run(tmp_path / "run_bare", None),  # a model but no metrics at all
        "trained": trained,
    }


def test_rows_are_grouped_by_threat_and_sorted_by_robust_accuracy(sources):
    paths = [str(sources[k]) for k in ("run_plain", "ev_a", "ev_l2", "run_bare", "ev_b", "run_eval")]
    groups = grouped(collect_rows(paths))
    assert [label for label, _ in groups] == ["L2, eps = 1.5", "Linf, eps = 0.1", "not evaluated (no robust accuracy)"]
    linf = groups[1][1]
    assert [r["robust"] for r in linf] == [0.75, 0.72, 0.70]  # by hand: ev_b, run_eval, ev_a
    assert [r["model"] for r in linf] == ["ev_b", "run_eval", "pgd-at"]
    assert [r["model"] for r in groups[2][1]] == ["run_plain", "run_bare"]  # clean 0.91 first, then none
    params = sum(p.numel() for p in build_model("small-cnn", 10, 1, input_size=8, channels=(4, 8), hidden=16).parameters())
    assert all(r["parameters"] == params for _, rows in groups for r in rows)
    ev_a = linf[2]
    assert ev_a["train_seconds"] == 1200 and ev_a["robust_n"] == 1000 and ev_a["missing"] == []
    assert set(linf[0]["missing"]) == {"suite", "train_seconds"}
    assert set(groups[2][1][1]["missing"]) == {"clean", "robust", "suite", "train_seconds"}


def test_cli_prints_and_writes_markdown_and_html(sources, tmp_path):
    md, page = tmp_path / "out" / "board.md", tmp_path / "out" / "board.html"
    (tmp_path / "out").mkdir()
    args = [str(sources[k]) for k in ("ev_a", "ev_b", "run_bare")]
    r = CliRunner().invoke(main, ["leaderboard", *args, "--markdown", str(md), "--html", str(page), "--title", "FMNIST"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    first, second = (next(i for i, s in enumerate(lines) if s.startswith(p)) for p in ("1  ev_b", "2  pgd-at"))
    assert first < second
    assert "75.00% (n=1000)" in r.output and "20.0 min" in r.output
    assert "note: run_bare" in r.output and "has no clean, robust" in r.output
    text = md.read_text()
    assert text.startswith("# FMNIST") and "## Linf, eps = 0.1" in text
    assert "| 1 | ev_b | 90.00% (n=1000) | 75.00% (n=1000) | — | linf 0.1 |" in text
    assert text == format_markdown(collect_rows(args), "FMNIST")
    html = page.read_text()
    assert html.startswith("<!doctype html>") and "<td>pgd-at</td>" in html and html.count("<table>") == 2


def test_zoo_cards_are_rows(tmp_path, monkeypatch):
    card = {"kind": "robustlab-zoo-card", "clean_accuracy": 0.88, "clean_n": 10000, "robust_accuracy": 0.79,
            "robust_n": 1000, "suite": "autoattack", "threat": {"norm": "linf", "eps": 0.1}, "parameters": 1234,
            "train_seconds": 1500}
    _write(tmp_path / "zoo" / "best" / "card.json", card)
    _write(tmp_path / "zoo" / "best" / "model.json", {"architecture": ARCH})
    _write(tmp_path / "zoo" / "broken" / "model.json", {"architecture": ARCH})  # no card: a row of dashes
    monkeypatch.setenv("ROBUSTLAB_ZOO", str(tmp_path / "zoo"))
    rows = collect_rows(["zoo"])
    assert [(r["model"], r["robust"], r["parameters"], r["suite"]) for r in rows] == [
        ("zoo:best", 0.79, 1234, "autoattack"), ("zoo:broken", None, None, None)]
    assert len(rows[1]["missing"]) == 5
    assert collect_rows(["zoo:best"])[0]["source"] == "zoo:best"
    r = CliRunner().invoke(main, ["leaderboard", "zoo:broken"])
    assert r.exit_code == 2 and "has no card.json" in r.output


def test_a_source_that_is_nothing_is_a_one_line_error(tmp_path):
    r = CliRunner().invoke(main, ["leaderboard", str(tmp_path)])
    assert r.exit_code == 2 and "neither an evaluation directory" in r.output
