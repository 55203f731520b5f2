"""Measured effects of the defences on real Fashion-MNIST (eps = 0.1 Linf).

The fast tests train on the session's 12k-image subset (a few epochs, well under a minute on 2
cores) and compare against the session's standard model of the same architecture. The ``slow``
tests reproduce the issue's full-data thresholds; each gives the CLI command that reproduces it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from robustlab import ThreatModel
from robustlab.attacks import PGD
from robustlab.evaluation import clean_accuracy, evaluate
from robustlab.models import build_model
from robustlab.training import TrainConfig, build_objective, train

EPS = 0.1
N = 500


def _pgd20(model, x, y) -> float:
    threat = ThreatModel("linf", EPS)
    return evaluate(model, x, y, threat, [PGD(threat, steps=20, rel_step_size=0.1, seed=0)], progress=False).robust_accuracy


def _train_subset(fmnist_subset, defense: str, epochs: int, **options):
    xtr, ytr, _, _, _ = fmnist_subset
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, channels=(16, 32), hidden=64)  # the fmnist_model architecture
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=3e-3, schedule="onecycle", seed=0, progress=False)
    train(model, build_objective(defense, **options), (xtr, ytr), None, cfg)
    return model.eval()


@pytest.fixture(scope="module")
def measured(fmnist_subset, fmnist_model):
    """Clean and PGD-20 accuracy of the standard, a fast-AT and a noise-trained model (same data)."""
    _, _, xte, yte, _ = fmnist_subset
    x, y = xte[:N], yte[:N]
    models = {"standard": fmnist_model,
              "fast-at": _train_subset(fmnist_subset, "fast-at", epochs=3, eps=EPS),
              "noise": _train_subset(fmnist_subset, "noise", epochs=3, alpha=EPS)}
    return {k: {"clean": clean_accuracy(m, x, y), "pgd": _pgd20(m, x, y)} for k, m in models.items()}


def test_fast_adversarial_training_raises_robust_accuracy(measured):
    # measured on this machine: standard 88.6% / 9.0%, fast-at 79.6% / 62.8%
    std, fat = measured["standard"], measured["fast-at"]
    assert std["pgd"] <= 0.15, measured  # the standard model is not robust
    assert fat["clean"] >= 0.70, measured
    assert fat["pgd"] >= std["pgd"] + 0.35, measured  # robust accuracy up by tens of points


def test_noise_training_is_no_adversarial_defence(measured):
    """The control: random signs of the same size keep clean accuracy but buy far less robustness
    than the same budget of adversarial training (measured: 86.4% / 24.8%)."""
    noise, fat = measured["noise"], measured["fast-at"]
    assert noise["clean"] >= 0.75, measured
    assert noise["pgd"] <= fat["pgd"] - 0.20, measured


# --- slow: the issue's thresholds on all 60,000 training and 10,000 test images -------------------
def _cli_train_and_pgd20(tmp_path, *args: str) -> tuple[float, float]:
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "robustlab", "train", "--dataset", "fashion-mnist", "--quiet",
                    "--monitor-n", "200", "--out", str(run), *args], check=True)
    subprocess.run([sys.executable, "-m", "robustlab", "evaluate", str(run), "--attacks", "pgd", "--steps", "20",
                    "--eps", str(EPS), "--quiet"], check=True)
    m = json.loads((run / "metrics.json").read_text())
    print(f"{' '.join(args)}: clean {m['clean_accuracy']:.4f}, PGD-20 {m['robust_accuracy']:.4f} on 10,000 test images")
    return m["clean_accuracy"], m["robust_accuracy"]


@pytest.mark.slow
def test_fast_at_full_data_reaches_the_issue_thresholds(tmp_path):
    """About 10 minutes on 2 cores. Reproduce: robustlab train --defense fast-at --eps 0.125
    --epochs 10 --lr 3e-3 --schedule onecycle --out RUN; robustlab evaluate RUN --attacks pgd
    --steps 20 --eps 0.1"""
    clean, pgd = _cli_train_and_pgd20(tmp_path, "--defense", "fast-at", "--eps", "0.125", "--epochs", "10",
                                      "--lr", "3e-3", "--schedule", "onecycle")
    assert clean >= 0.80 and pgd >= 0.75, (clean, pgd)


@pytest.mark.slow
def test_pgd_at_full_data_reaches_the_issue_thresholds(tmp_path):
    """About 35 minutes on 2 cores. Reproduce: robustlab train --defense pgd-at --eps 0.125
    --defense-option steps=5 --defense-option rel_step_size=0.5 --epochs 10 --lr 3e-3 --schedule
    onecycle --out RUN; robustlab evaluate RUN --attacks pgd --steps 20 --eps 0.1"""
    clean, pgd = _cli_train_and_pgd20(tmp_path, "--defense", "pgd-at", "--eps", "0.125", "--defense-option", "steps=5",
                                      "--defense-option", "rel_step_size=0.5", "--epochs", "10", "--lr", "3e-3",
                                      "--schedule", "onecycle")
    assert clean >= 0.80 and pgd >= 0.75, (clean, pgd)
