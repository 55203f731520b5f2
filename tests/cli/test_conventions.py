"""Command-line conventions: budgets as fractions, per-image targets, attacking the predictions,
the attack figure, progress that stays out of logs, --quiet that keeps results, TensorBoard."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from robustlab import load_model


def cli(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "robustlab", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small digits run trained through the CLI (with --quiet and --tensorboard), and its output."""
    root = tmp_path_factory.mktemp("conv")
    run, board = root / "run", root / "tb"
    r = cli("train", "--dataset", "digits", "--model-option", "channels=[8,16]", "--model-option", "hidden=32",
            "--epochs", "3", "--batch-size", "64", "--lr", "3e-3", "--out", run, "--quiet", "--device", "cpu",
            "--monitor-n", "50", "--tensorboard", board)
    assert r.returncode == 0, r.stderr
    return run, board, r


def test_quiet_keeps_the_epoch_results_and_logs_have_no_carriage_returns(trained):
    _, _, r = trained
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("epoch=")]
    assert [ln.split(",")[0] for ln in lines] == ["epoch=1", "epoch=2", "epoch=3"]
    assert all("clean_accuracy=" in ln and "adv_accuracy_on_correct=" in ln for ln in lines)
    assert "\r" not in r.stdout + r.stderr


def test_progress_in_a_log_is_plain_lines(tmp_path):
    """Without --quiet and without a terminal: progress as whole lines, never tqdm's redraws."""
    r = cli("train", "--dataset", "digits", "--model-option", "channels=[8,16]", "--epochs", "1", "--out",
            tmp_path / "r", "--device", "cpu", "--monitor-attack", "none")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\x1b[" not in r.stderr
    assert "epoch 1/1: done" in r.stderr  # the closing progress line
    assert "epoch=1" in r.stdout


def test_tensorboard_scalars_match_the_history(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, board, _ = trained
    acc = EventAccumulator(str(board))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/train_loss", "test/clean_accuracy", "test/adv_accuracy", "lr"} <= tags
    history = [json.loads(ln) for ln in (run / "history.jsonl").read_text().splitlines()]
    logged = [e.value for e in acc.Scalars("test/clean_accuracy")]
    assert [e.step for e in acc.Scalars("test/clean_accuracy")] == [1, 2, 3]
    assert logged == pytest.approx([h["clean_accuracy"] for h in history], abs=1e-6)


def test_eps_as_a_fraction(trained, tmp_path):
    run, _, _ = trained
    r = cli("attack", run, "--attack", "fgsm", "--eps", "8/255", "--n", "40", "--out", tmp_path / "a", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["threat"]["eps"] == pytest.approx(8 / 255)
    t = load_file(str(tmp_path / "a" / "adversarial.safetensors"))
    assert float((t["x_adv"] - t["x"]).abs().max()) <= 8 / 255 + 1e-6
    r = cli("evaluate", run, "--attacks", "fgsm", "--eps", "4/255,8/255", "--n", "40", "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    for bad in ("8/0", "eight", "1/x"):
        r = cli("attack", run, "--eps", bad, "--out", tmp_path / "b")
        assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("mode", ["random", "least-likely"])
def test_per_image_targets(trained, tmp_path, mode):
    run, _, _ = trained
    out = tmp_path / mode
    r = cli("attack", run, "--attack", "pgd", "--eps", "0.3", "--steps", "10", "--target", mode, "--n", "60",
            "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    t = load_file(str(out / "adversarial.safetensors"))
    s = json.loads((out / "summary.json").read_text())
    target = t["target"]
    assert s["target"] == mode
    assert s["target_hit_rate"] == int((t["pred_adv"] == target).sum()) / 60
    assert s["target_hit_rate"] > 0.3  # a targeted attack, not an untargeted one
    model = load_model(run).eval()
    with torch.no_grad():
        logits = model(t["x"])
    if mode == "least-likely":
        assert torch.equal(target, logits.argmin(1))
    else:
        assert not bool((target == t["y"]).any())  # never the image's own class
        assert len(set(target.tolist())) >= 5  # spread over the classes, not one fixed class
    assert (out / "adversarial.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attack_the_predictions(trained, tmp_path):
    run, _, _ = trained
    out = tmp_path / "pred"
    r = cli("attack", run, "--attack", "pgd", "--eps", "0.2", "--steps", "5", "--labels", "predicted", "--n", "60",
            "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    t = load_file(str(out / "adversarial.safetensors"))
    s = json.loads((out / "summary.json").read_text())
    changed = int((t["pred_adv"] != t["clean_pred"]).sum()) / 60
    assert s["labels"] == "predicted" and s["prediction_changed"] == changed and changed > 0.3
    r = cli("attack", run, "--labels", "guess", "--out", tmp_path / "x")
    assert r.returncode == 2 and "guess" in r.stderr


def test_bad_target_is_one_line(trained, tmp_path):
    run, _, _ = trained
    for bad in ("most-likely", "42"):
        r = cli("attack", run, "--target", bad, "--n", "10", "--out", tmp_path / "t")
        assert r.returncode == 2 and "--target" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
