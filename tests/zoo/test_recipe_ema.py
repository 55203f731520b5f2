"""Weight averaging (``TrainConfig.ema`` / ``train --ema``): the closed form of the average, the
saved model against an average recomputed from the recorded weight trajectory, the per-epoch
test numbers measured on the average, and bit-identical resume with every recipe mechanism on."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

from robustlab.attacks import PGD
from robustlab.models import build_model
from robustlab.storage import load_model, load_state
from robustlab.threat import ThreatModel
from robustlab.training import TrainConfig, build_objective, read_history, train
from robustlab.training.ema import WeightEMA, ema_decay
from robustlab.training.loop import TrainingInterrupted, accuracy


def _small(batchnorm: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small-cnn", 10, 1, input_size=8, channels=(4, 8), hidden=16, batchnorm=batchnorm)


def test_average_of_a_fixed_sequence_matches_the_closed_form():
    # w_0 = a, then every step sets the weights to the constant c: the average after T steps is
    # P * a + (1 - P) * c with P the product of the per-step decays (P computed here in float64).
    model = nn.Linear(3, 2)
    a = torch.randn(2, 3)
    c = torch.randn(2, 3)
    with torch.no_grad():
        model.weight.copy_(a)
    ema = WeightEMA(model, decay=0.9)
    steps = 25
    for _ in range(steps):
        with torch.no_grad():
            model.weight.copy_(c)
        ema.update(model)
    decays = [min(0.9, (1 + t) / (10 + t)) for t in range(1, steps + 1)]
    p = float(np.prod(decays))
    expected = p * a.double() + (1 - p) * c.double()
    assert torch.allclose(ema.model.weight.double(), expected, atol=1e-6)
    # the warm-up: early decays are (1 + t) / (10 + t), later ones the given decay
    assert ema_decay(0.9, 1) == pytest.approx(2 / 11) and ema_decay(0.9, 1000) == 0.9
    assert not ema.model.weight.requires_grad and not ema.model.training


def test_decay_outside_the_open_interval_is_refused():
    for bad in (0.0, 1.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="ema decay must be in"):
            WeightEMA(nn.Linear(2, 2), bad)
    with pytest.raises(ValueError, match="ema must be 0"):
        TrainConfig(ema=1.5)


class _Recorder:
    """Wraps an objective; records the model's weights at every call (the weights before each step)."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.weights = inner, inner.name, []

    def config(self):
        return self.inner.config()

    def __call__(self, model, x, y):
        self.weights.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return self.inner(model, x, y)


def test_the_saved_model_is_the_average_of_the_weight_trajectory(digits, tmp_path):
    xtr, ytr, xte, yte = digits
    model = _small()
    rec = _Recorder(build_objective("clean"))
    cfg = TrainConfig(epochs=2, batch_size=50, lr=3e-3, seed=1, progress=False, verbose=False, ema=0.8)
    train(model, rec, (xtr[:200], ytr[:200]), (xte[:100], yte[:100]), cfg, run_dir=tmp_path)
    live_final = load_state(tmp_path / "train_state.safetensors")["model"]  # the live weights after the last step
    trajectory = rec.weights[1:] + [{k: live_final[k] for k in rec.weights[0]}]  # w_1 .. w_T
    assert len(trajectory) == 8  # 4 steps per epoch, 2 epochs
    expected = {k: v.double() for k, v in rec.weights[0].items()}  # w_0
    for t, w in enumerate(trajectory, 1):
        d = min(0.8, (1 + t) / (10 + t))
        expected = {k: d * expected[k] + (1 - d) * w[k].double() for k in expected}
    saved = load_model(tmp_path)
    for k, v in saved.named_parameters():
        assert torch.allclose(v.double(), expected[k], atol=1e-6), k
    for k, b in saved.named_buffers():  # BatchNorm statistics: the live model's, copied
        assert torch.equal(b, live_final[k]), k
    # the model trained in place ends as the average too, and the last epoch's test accuracy is its
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), saved.parameters()))
    assert read_history(tmp_path)[-1]["clean_accuracy"] == accuracy(saved, xte[:100], yte[:100])
    assert saved.robustlab_metadata["weights_average"] == {"ema": 0.8}


class _SignalAt:
    def __init__(self, inner, at: int) -> None:
        self.inner, self.at, self.calls, self.name = inner, at, 0, inner.name

    def config(self):
        return self.inner.config()

    def __call__(self, model, x, y):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.inner(model, x, y)


def test_resume_with_ema_holdout_and_best_epoch_is_bit_identical(digits, tmp_path):
    xtr, ytr, xte, yte = digits
    data = (xtr[:260], ytr[:260])
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, seed=2, progress=False, verbose=False, ema=0.9, holdout=60,
                      select_best="robust", monitor_n=40)
    monitor = PGD(ThreatModel("linf", 0.1), steps=3, seed=0)

    def run(obj, where, resume=False):
        model = _small()
        train(model, obj, data, (xte[:40], yte[:40]), cfg, run_dir=where, resume=resume, monitor_attack=monitor)
        return model

    full = run(build_objective("pgd-at", eps=0.1, steps=2), tmp_path / "full")
    # 200 training images: 4 steps per epoch; the signal lands in epoch 2, after the EMA and a best epoch exist
    with pytest.raises(TrainingInterrupted):
        run(_SignalAt(build_objective("pgd-at", eps=0.1, steps=2), at=7), tmp_path / "part")
    assert load_state(tmp_path / "part" / "train_state.safetensors")["extras"]["ema"]["steps"] > 0
    resumed = run(build_objective("pgd-at", eps=0.1, steps=2), tmp_path / "part", resume=True)
    for a, b in ((full, resumed), (load_model(tmp_path / "full"), load_model(tmp_path / "part"))):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    def numbers(run):  # the history without its wall-clock times
        return [{k: v for k, v in line.items() if "seconds" not in k} for line in read_history(run)]

    assert numbers(tmp_path / "full") == numbers(tmp_path / "part")
    assert "selected_epoch" in numbers(tmp_path / "full")[-1]
