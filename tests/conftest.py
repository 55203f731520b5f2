"""Shared fixtures: small models trained once per test session on real data.

Training happens here once (seconds on 2 cores), so tests of attacks, evaluation and defenses
measure real effects on real data without paying for training each time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One thread: the small models here gain nothing from more, and a busy machine punishes them.
torch.set_num_threads(1)


def _train(model, x, y, epochs: int, lr: float = 2e-3, batch_size: int = 128, seed: int = 0):
    from robustlab.training import Clean, TrainConfig, train

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=False)
    train(model, Clean(), (x, y), None, cfg)
    return model.eval()


@pytest.fixture(scope="session")
def digits():
    """scikit-learn digits: (x_train, y_train, x_test, y_test)."""
    from robustlab.data import load_dataset

    xtr, ytr, _ = load_dataset("digits", "train")
    xte, yte, _ = load_dataset("digits", "test")
    return xtr, ytr, xte, yte


@pytest.fixture(scope="session")
def digits_model(digits):
    """A small CNN trained on digits (about 96% test accuracy, ~3 s)."""
    from robustlab.models import build_model

    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, input_size=8, channels=(16, 32), hidden=64)
    return _train(model, xtr, ytr, epochs=12, lr=3e-3, batch_size=64)


@pytest.fixture(scope="session")
def fmnist_subset():
    """First 12,000 Fashion-MNIST training images and the first 2,000 test images."""
    from robustlab.data import load_dataset

    xtr, ytr, info = load_dataset("fashion-mnist", "train")
    xte, yte, _ = load_dataset("fashion-mnist", "test")
    return xtr[:12000], ytr[:12000], xte[:2000], yte[:2000], info


@pytest.fixture(scope="session")
def fmnist_model(fmnist_subset):
    """A small CNN trained on 12k Fashion-MNIST images (~87% test accuracy, ~20 s on 2 cores)."""
    from robustlab.models import build_model

    xtr, ytr, _, _, _ = fmnist_subset
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, channels=(16, 32), hidden=64)
    return _train(model, xtr, ytr, epochs=4, lr=2e-3)


@pytest.fixture()
def run_root(tmp_path: Path) -> Path:
    return tmp_path
