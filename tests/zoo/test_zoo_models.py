"""The model zoo against a tiny zoo in a temporary folder (``ROBUSTLAB_ZOO``): adding a run with
its card, ``zoo list`` / ``zoo show``, ``load_model("zoo:NAME")``, evaluating ``zoo:NAME`` (on the
command line and as a library RUN), and the refusals."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import robustlab
from robustlab.cli import main
from robustlab.pretrained import ZOO_ENV, entry_names, list_cards, read_card
from robustlab.pretrained.cards import add_to_zoo, check_card
from robustlab.runs import RunSpec, evaluate_run, train_run
from robustlab.training import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
NAME = "tiny-digits"


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """A zoo with one entry: a small CNN trained 3 epochs on digits, evaluated with FGSM."""
    base = tmp_path_factory.mktemp("zoo")
    run, ev, zoo = base / "run", base / "eval", base / "zoo"
    spec = RunSpec(dataset="digits", model="small-cnn", model_options={"channels": [8, 16], "hidden": 32}, monitor=None)
    train_run(spec, run, TrainConfig(epochs=3, batch_size=64, lr=3e-3, progress=False, verbose=False), device="cpu")
    evaluate_run(run, attacks=["fgsm"], eps=[0.1], n=100, out=ev, device="cpu", progress=False)
    add_to_zoo(run, NAME, ev, zoo=zoo, description="a test model")
    return run, ev, zoo


@pytest.fixture()
def use_zoo(tiny_zoo, monkeypatch):
    monkeypatch.setenv(ZOO_ENV, str(tiny_zoo[2]))
    return tiny_zoo


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum()) / len(y)


def test_the_card_is_complete_and_its_numbers_are_the_runs(use_zoo, digits):
    run, ev, zoo = use_zoo
    card = read_card(f"zoo:{NAME}")
    assert check_card(card) == []
    metrics = json.loads((run / "metrics.json").read_text())
    doc = json.loads((ev / "evaluation.json").read_text())
    assert (card["clean_accuracy"], card["clean_n"]) == (metrics["clean_accuracy"], 450)
    assert (card["robust_accuracy"], card["robust_n"], card["suite"]) == (doc["robust_accuracy"], 100, "attacks: fgsm")
    assert card["threat"] == {"norm": "linf", "eps": 0.1} and card["dataset"] == "digits"
    model = robustlab.load_model(run)
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    _, _, xte, yte = digits
    assert card["spot_check"] == {"n": 450, "accuracy": pytest.approx(_accuracy(model, xte, yte), abs=1e-9)}
    assert card["checks"]["status"] == "not run"
    assert "--dataset digits" in card["training_command"] and "--epochs 3" in card["training_command"]
    assert (zoo / "tiny-digits" / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()


def test_load_model_zoo_name_is_the_runs_model(use_zoo):
    run = use_zoo[0]
    a, b = robustlab.load_model(f"zoo:{NAME}"), robustlab.load_model(run)
    assert not a.training
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match=r"no model 'other' in the zoo .* \(it has: tiny-digits"):
        robustlab.load_model("zoo:other")
    with pytest.raises(ValueError, match="bad zoo model name"):
        robustlab.load_model("zoo:../run")


def test_zoo_list_and_show(use_zoo):
    r = CliRunner().invoke(main, ["zoo", "list"])
    assert r.exit_code == 0, r.output
    card = read_card(NAME)
    line = next(s for s in r.output.splitlines() if s.startswith(NAME))
    for shown in ("digits", "linf 0.1", "small-cnn", f"{card['parameters']:,}", f"{100 * card['clean_accuracy']:.2f}",
                  f"{100 * card['robust_accuracy']:.2f}", f"{card['train_seconds'] / 60:.1f}"):
        assert shown in line, shown
    assert f"trained with: {card['training_command']}" in r.output
    r = CliRunner().invoke(main, ["zoo", "list", "--json"])
    assert [c["name"] for c in json.loads(r.output)] == [NAME]
    r = CliRunner().invoke(main, ["zoo", "show", f"zoo:{NAME}"])
    assert json.loads(r.output)["weights_sha256"] == card["weights_sha256"]


def test_evaluate_a_zoo_model_from_the_command_line_and_as_a_run(use_zoo, digits, tmp_path):
    _, _, xte, yte = digits
    out = tmp_path / "ev"
    r = CliRunner().invoke(main, ["evaluate", "--model", f"zoo:{NAME}", "--dataset", "digits", "--attacks", "fgsm",
                                  "--n", "60", "--quiet", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["model"]["zoo"] == NAME and doc["n"] == 60
    model = robustlab.load_model(f"zoo:{NAME}")
    assert doc["clean_accuracy"] == pytest.approx(_accuracy(model, xte[:60], yte[:60]), abs=1e-4)
    # as the RUN of the library call: the data is the zoo model's own test set
    doc2 = evaluate_run(f"zoo:{NAME}", attacks=["fgsm"], n=60, out=tmp_path / "ev2", device="cpu", progress=False)
    assert (doc2["clean_accuracy"], doc2["robust_accuracy"]) == (doc["clean_accuracy"], doc["robust_accuracy"])
    assert doc2["data"]["from_run"] == f"zoo:{NAME}"
    r = CliRunner().invoke(main, ["evaluate", "--model", f"zoo:{NAME}", "--weights", str(use_zoo[0] / "model.safetensors"),
                                  "--dataset", "digits", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "is a complete model" in r.output


def test_adding_refuses_other_weights_and_an_existing_name(use_zoo, tmp_path):
    run, ev, zoo = use_zoo
    with pytest.raises(ValueError, match="already has 'tiny-digits'"):
        add_to_zoo(run, NAME, ev, zoo=zoo)
    doc = json.loads((ev / "evaluation.json").read_text())
    doc["model"]["weights_sha256"] = "0" * 64
    other = tmp_path / "other-eval"
    other.mkdir()
    (other / "evaluation.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="evaluated other weights"):
        add_to_zoo(run, "second", other, zoo=zoo)
    with pytest.raises(ValueError, match="bad zoo model name"):
        add_to_zoo(run, "Bad Name", ev, zoo=zoo)
    assert entry_names(zoo) == [NAME]


def test_the_zoo_add_script_adds_an_entry_and_writes_the_table(tiny_zoo, tmp_path, capsys):
    run, ev, _ = tiny_zoo
    zoo = tmp_path / "zoo"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "zoo_add.py"), str(run), "--name", "copy",
                        "--evaluation", str(ev), "--zoo", str(zoo), "--command", "robustlab train --recipe x --out RUN"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [c["name"] for c in list_cards(zoo)] == ["copy"]
    assert read_card("copy", zoo)["training_command"] == "robustlab train --recipe x --out RUN"
    table = (zoo / "README.md").read_text()
    assert "| 1 | zoo:copy |" in table and "attacks: fgsm" in table
    script = runpy.run_path(str(ROOT / "scripts" / "zoo_add.py"))  # again, in this process: refused
    assert script["main"]([str(run), "--name", "copy", "--evaluation", str(ev), "--zoo", str(zoo)]) == 2
    assert "--overwrite" in capsys.readouterr().err
