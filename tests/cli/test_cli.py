"""The command line, driven through subprocess as a user would."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file


def cli(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "robustlab", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    r = cli("train", "--dataset", "digits", "--model", "small-cnn", "--model-option", "channels=[16,32]",
            "--model-option", "hidden=64", "--epochs", "12", "--batch-size", "64", "--lr", "3e-3",
            "--seed", "0", "--out", run, "--quiet", "--device", "cpu", "--monitor-n", "100")
    assert r.returncode == 0, r.stderr
    assert "run written to" in r.stdout
    return run


def test_train_writes_a_complete_run(digits_run):
    names = {p.name for p in digits_run.iterdir()}
    assert {"model.safetensors", "model.json", "history.jsonl", "metrics.json", "config.json"} <= names
    history = [json.loads(line) for line in (digits_run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 12 and "adv_accuracy" in history[-1]
    assert json.loads((digits_run / "metrics.json").read_text())["clean_accuracy"] >= 0.9


def test_evaluate_json_and_attacks(digits_run):
    r = cli("evaluate", digits_run, "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["clean_accuracy"] >= 0.9
    r = cli("evaluate", digits_run, "--attacks", "noise,fgsm,pgd", "--eps", "0.1,0.3", "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "robust (worst)" in r.stdout
    m = json.loads((digits_run / "metrics.json").read_text())
    assert set(m["per_attack"]) == {"noise", "fgsm", "pgd"}
    curve = m["eps_curve"]
    assert [c["eps"] for c in curve] == [0.1, 0.3]
    assert curve[1]["robust_accuracy"] <= curve[0]["robust_accuracy"]
    assert m["robust_accuracy"] <= min(m["per_attack"].values())


def test_evaluate_iterations_curve_and_corruptions(digits_run):
    r = cli("evaluate", digits_run, "--attacks", "pgd", "--steps", "10", "--iterations", "1,5,20", "--corruptions",
            "--n", "200", "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "robust accuracy vs iterations (pgd-ce" in r.stdout and "mean corruption accuracy" in r.stdout
    m = json.loads((digits_run / "metrics.json").read_text())
    curve = m["iterations_curve"]
    assert [c["steps"] for c in curve] == [1, 5, 20]
    assert curve[-1]["robust_accuracy"] < curve[0]["robust_accuracy"] <= m["evaluation_clean_accuracy"]
    table = m["corruptions"]
    assert set(table) == {"gaussian_noise", "gaussian_blur", "contrast", "brightness", "rotation", "shift"}
    assert all(list(row) == ["1", "2", "3", "4", "5"] for row in table.values())
    # the strongest noise costs accuracy; the mean is the mean of the table
    assert table["gaussian_noise"]["5"] < m["evaluation_clean_accuracy"] - 0.1
    vals = [a for row in table.values() for a in row.values()]
    assert m["mean_corruption_accuracy"] == pytest.approx(sum(vals) / len(vals))
    # a later evaluation replaces the earlier one: nothing of it is mixed into the new numbers
    r = cli("evaluate", digits_run, "--attacks", "fgsm", "--n", "50", "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    m = json.loads((digits_run / "metrics.json").read_text())
    assert "iterations_curve" not in m and "corruptions" not in m and m["evaluated_samples"] == 50


def test_attack_saves_examples_and_summary(digits_run, tmp_path):
    out = tmp_path / "adv"
    r = cli("attack", digits_run, "--attack", "pgd", "--eps", "0.2", "--steps", "20", "--target", "3", "--n", "100",
            "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    t = load_file(str(out / "adversarial.safetensors"))
    assert t["x_adv"].shape == t["x"].shape == (100, 1, 8, 8)
    assert float((t["x_adv"] - t["x"]).abs().max()) <= 0.2 + 1e-6
    assert s["target"] == 3 and s["n"] == 100
    assert float((t["pred_adv"] == 3).float().mean()) > 0.5


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--dataset", "nope", "--out", "{tmp}/x"], "unknown dataset"),
        (["train", "--dataset", "digits", "--model", "vgg", "--out", "{tmp}/x", "--epochs", "1"], "unknown model"),
        (["train", "--dataset", "digits", "--epochs", "0", "--out", "{tmp}/x"], "epochs must be"),
        (["train", "--dataset", "digits", "--defense", "madry", "--epochs", "1", "--out", "{tmp}/x"], "unknown defense"),
        (["train", "--resume", "{tmp}/none"], "cannot resume"),
        (["train", "--dataset", "mnist", "--out", "{tmp}/x"], "root"),
        (["evaluate", "{tmp}"], "not found"),
        (["evaluate", "{run}", "--eps", "-1", "--attacks", "pgd"], "eps must be"),
        (["evaluate", "{run}", "--eps", "0.1,-1", "--attacks", "pgd"], "eps must be"),  # before any work
        (["train", "--dataset", "digits", "--monitor-eps", "0", "--out", "{tmp}/x"], "--monitor-eps must be > 0"),
        (["evaluate", "{run}", "--attacks", "fgsmm"], "unknown attack"),
        (["evaluate", "{run}", "--iterations", "10,0"], "--iterations must be whole numbers >= 1"),
        (["evaluate", "{run}", "--iterations", "ten"], "--iterations must be a comma-separated list"),
        (["evaluate", "{run}", "--iterations", "10,inf"], "--iterations must be whole numbers >= 1"),
        (["evaluate", "{run}", "--iterations", "nan"], "--iterations must be whole numbers >= 1"),
        (["evaluate", "{run}", "--attacks", "pgd", "--suite", "quick"], "not both"),
        (["evaluate", "{run}", "--norm", "l3", "--attacks", "pgd"], "unknown norm"),
        (["attack", "{run}", "--target", "12", "--out", "{tmp}/a", "--n", "5"], "--target 12"),
        (["train", "--dataset", "digits", "--device", "cuda", "--out", "{tmp}/x"], "CUDA is not available"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, digits_run, tmp_path):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = cli(*[a.format(tmp=tmp_path, run=digits_run) for a in args])
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_version_and_module_entry_point():
    r = cli("--version")
    assert r.returncode == 0 and "robustlab" in r.stdout


def test_resume_refuses_changed_settings(tmp_path):
    """--resume continues with the saved settings: a changed one is an error, not ignored."""
    from click.testing import CliRunner

    from robustlab.cli import main

    res = CliRunner().invoke(main, ["train", "--resume", str(tmp_path), "--epochs", "20", "--model", "mlp"])
    assert res.exit_code == 2
    assert "--model, --epochs cannot be changed" in res.output


def test_evaluate_and_attack_are_library_functions(digits_run, tmp_path):
    """What the commands print comes from robustlab.runs: plain dicts, also written to the run."""
    from robustlab.runs import attack_run, evaluate_run
    from robustlab.storage.layout import ATTACK_SUMMARY, EVALUATION_FILE, METRICS_FILE

    m = evaluate_run(digits_run, attacks=["fgsm"], eps=[0.1, 0.2], n=60, device="cpu", progress=False)
    assert m["evaluated_samples"] == 60 and set(m["per_attack"]) == {"fgsm"} and "clean_accuracy" not in m
    assert [c["eps"] for c in m["eps_curve"]] == [0.1, 0.2]
    saved = json.loads((digits_run / METRICS_FILE).read_text())
    assert saved["per_attack"] == m["per_attack"] and saved["robust_accuracy"] == m["robust_accuracy"]
    assert json.loads((digits_run / EVALUATION_FILE).read_text())["n"] == 60
    s = attack_run(digits_run, tmp_path / "adv", attack="fgsm", eps=0.1, n=30, device="cpu")
    assert s == json.loads((tmp_path / "adv" / ATTACK_SUMMARY).read_text()) and s["n"] == 30


def test_train_detector_steps_rule_comes_from_the_registry():
    """Gradient attacks with a 'steps' option get --steps / --eval-steps; the others are built as
    they are; every attack with a seed gets --seed for training and --seed + 1 for testing."""
    from robustlab.attacks import ATTACKS
    from robustlab.runs.detector import detector_attacks, iterative_whitebox
    from robustlab.threat import ThreatModel

    iterative = {n for n in ATTACKS if iterative_whitebox(n)}
    assert {"pgd", "mim", "cw", "apgd"} <= iterative and not iterative & {"fgsm", "noise", "square", "nes", "transfer"}
    assert not iterative_whitebox("no-such-attack")
    threat = ThreatModel("linf", 0.1)
    train, test = detector_attacks("PGD", threat, steps=3, eval_steps=7, seed=5)
    assert (train.steps, train.seed, test.steps, test.seed) == (3, 5, 7, 6)
    train, test = detector_attacks("fgsm", threat, steps=3, eval_steps=7, options={"loss": "margin"}, seed=2)
    assert not hasattr(train, "steps") and (train.seed, test.seed) == (2, 3)


def test_monitor_spec():
    from robustlab.runs import monitor_spec

    assert monitor_spec("none", 0.1) is None and monitor_spec(None) is None
    assert monitor_spec("pgd", None, 0.3, "l2") == {"attack": "pgd", "eps": 0.3, "norm": "l2", "steps": 20,
                                                   "rel_step_size": 0.1, "seed": 0}
    assert monitor_spec("fgsm") == {"attack": "fgsm", "eps": 0.1, "norm": "linf"}
    with pytest.raises(ValueError, match="--monitor-eps must be > 0"):
        monitor_spec("pgd", 0.0)


def testargv_without_nproc():
    from robustlab.cli import argv_without_nproc

    assert argv_without_nproc(["train", "--nproc", "2", "--out", "r", "--nproc=3", "--quiet"]) == [
        "train", "--out", "r", "--quiet"]
