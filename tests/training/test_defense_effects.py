"""Measured effects of the defenses on real Fashion-MNIST (eps = 0.1 Linf).

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


def test_noise_training_is_no_adversarial_defense(measured):
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


# --- every adversarial objective, on digits, in CI ------------------------------------------------
# 1,347 digits training images (8x8), 3 epochs of a small CNN per objective (~1 s each on 2 cores),
# the same recipe as a clean-trained standard model; robust accuracy under one FIXED attack:
# PGD-10 (seed 0) at Linf eps 0.1 on the 450 digits test images. Measured on this machine
# (clean / PGD-10):
#   standard 75.3% / 27.3%
#   fgsm-at  72.7% / 38.0%   (+10.7)     trades   79.6% / 42.7%   (+15.4)
#   pgd-at   67.3% / 42.4%   (+15.1)     alp      74.4% / 46.9%   (+19.6)
#   mix      67.1% / 36.0%   (+8.7)      adv-reg  72.7% / 38.0%   (+10.7)
#   fast-at  64.4% / 44.9%   (+17.6)
# The margin asserted is 5 points for every objective (at least 3.7 points of room below the
# smallest measured gain; 450 test images make one point 4.5 images). Noise training is the
# control here (measured 75.1% / 25.1%: no gain on digits); its gain is checked on
# Fashion-MNIST above, where the measured values give it one.
DIGITS_EPS = 0.1
DIGITS_MARGIN = 0.05
DIGITS_OBJECTIVES = {
    "fgsm-at": {"eps": DIGITS_EPS},
    "pgd-at": {"eps": DIGITS_EPS, "steps": 3},
    "mix": {"eps": DIGITS_EPS, "steps": 3},
    "fast-at": {"eps": DIGITS_EPS},
    "trades": {"eps": DIGITS_EPS, "steps": 3},
    "alp": {"eps": DIGITS_EPS, "steps": 3},
    "adv-reg": {"eps": DIGITS_EPS, "multiplier": 1.0},
}


def _digits_model(digits, name: str, options: dict):
    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, seed=0, progress=False)
    train(model, build_objective(name, **options), (xtr, ytr), None, cfg)
    return model.eval()


def _fixed_pgd10(model, x, y) -> tuple[float, float]:
    threat = ThreatModel("linf", DIGITS_EPS)
    res = evaluate(model, x, y, threat, [PGD(threat, steps=10, seed=0)], progress=False)
    return res.clean_accuracy, res.robust_accuracy


@pytest.fixture(scope="module")
def digits_effects(digits):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, _, xte, yte = digits
        out = {"standard": _fixed_pgd10(_digits_model(digits, "clean", {}), xte, yte)}
        for name, options in DIGITS_OBJECTIVES.items():
            out[name] = _fixed_pgd10(_digits_model(digits, name, options), xte, yte)
        return out
    finally:
        torch.set_num_threads(before)


def test_every_adversarial_objective_is_covered():
    from robustlab.training import OBJECTIVES

    # nsl-graph is a regulariser, not an adversarial defense (tests/training/test_nsl_graph.py measures
    # its effect); advprop needs a BatchNorm model (tests/training/test_advprop.py)
    assert set(OBJECTIVES) - {"clean"} == set(DIGITS_OBJECTIVES) | {"noise", "nsl-graph", "advprop"}


@pytest.mark.parametrize("name", list(DIGITS_OBJECTIVES))
def test_each_objective_beats_the_standard_model_under_a_fixed_attack(digits_effects, name):
    std_clean, std_pgd = digits_effects["standard"]
    clean, pgd = digits_effects[name]
    assert std_pgd <= 0.35, digits_effects  # the standard model is far from robust
    assert clean >= 0.55, digits_effects  # still a classifier
    assert pgd >= std_pgd + DIGITS_MARGIN, (name, digits_effects)


def test_noise_training_buys_some_robustness_on_fashion_mnist(measured):
    """Measured: standard 9.0%, noise 24.8% PGD-20 accuracy (+15.8 points); asserted: +8."""
    assert measured["noise"]["pgd"] >= measured["standard"]["pgd"] + 0.08, measured
