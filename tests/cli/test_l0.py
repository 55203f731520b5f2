"""The L0 threat model from the command line: ``--norm l0 --eps K`` (K pixels) with Sparse-RS in
``attack`` and ``evaluate``; suites and the gradient-masking checks refuse it before any work."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from robustlab import ThreatModel
from robustlab.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits_model):
    from robustlab.storage import save_model

    d = tmp_path_factory.mktemp("l0") / "run"
    save_model(digits_model, d)
    return d


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_evaluate_and_attack_with_sparse_rs(run, tmp_path, digits):
    res = cli("evaluate", run, "--dataset", "digits", "--n", 40, "--attacks", "sparse-rs", "--norm", "l0", "--eps", 4,
              "--out", tmp_path / "e", "--quiet", "--json", "--device", "cpu")
    assert res.exit_code == 0, (res.output, res.exception)
    doc = json.loads(res.stdout)
    assert doc["threat"]["norm"] == "l0" and doc["threat"]["eps"] == 4
    assert "SparseRS(norm=l0, eps=4" in doc["attacks"]["sparse-rs"]["settings"]
    assert doc["robust_accuracy"] < doc["clean_accuracy"]  # 4 of 64 pixels break some digits
    res = cli("attack", run, "--dataset", "digits", "--n", 20, "--attack", "sparse-rs", "--norm", "l0", "--eps", 2,
              "--out", tmp_path / "a", "--device", "cpu")
    assert res.exit_code == 0, (res.output, res.exception)
    from safetensors.torch import load_file

    saved = load_file(str(next((tmp_path / "a").glob("*.safetensors"))))
    adv = next(v for v in saved.values() if v.dim() == 4)
    _, _, x, _ = digits
    assert (ThreatModel("l0", 2).distance(adv.float(), x[:20]) <= 2).all()


@pytest.mark.parametrize("args, message", [
    (["--suite", "standard"], "suite has no L0 attack"),
    (["--attacks", "sparse-rs", "--checks"], "l0 threat model has none"),
    (["--attacks", "pgd"], "does not support the l0 threat model"),
    (["--attacks", "sparse-rs", "--eps", "2.5"], "whole number"),
])
def test_what_l0_cannot_do_is_refused(run, tmp_path, args, message):
    base = ["evaluate", run, "--dataset", "digits", "--n", 20, "--norm", "l0", "--out", tmp_path / "x", "--device", "cpu"]
    res = cli(*base, *(["--eps", 3] if "--eps" not in args else []), *args)
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert message in res.stderr
    assert not (tmp_path / "x").exists()


def test_training_refuses_l0(tmp_path):
    res = cli("train", "--dataset", "digits", "--defense", "pgd-at", "--norm", "l0", "--eps", 3, "--epochs", 1,
              "--out", tmp_path / "t", "--device", "cpu")
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "does not support the l0 threat model" in res.stderr, res.stderr
    assert not (tmp_path / "t").exists()


def test_every_adversarial_objective_and_advgan_refuse_l0():
    from robustlab.generative.advgan import AdvGanConfig
    from robustlab.training import build_objective

    for name in ("pgd-at", "trades", "fast-at", "alp"):
        with pytest.raises(ValueError, match="l0"):
            build_objective(name, eps=3, norm="l0")
    with pytest.raises(ValueError, match="AdvGAN does not support the l0 threat model"):
        AdvGanConfig(norm="l0", eps=3)
