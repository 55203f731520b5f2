"""A GAN run killed mid-epoch (SIGINT) and resumed ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import robustlab.generative.train as gan_train
from robustlab.generative.checkpoint import load_network
from robustlab.generative.loop import GenerativeInterrupted
from robustlab.generative.metrics import GanJudge
from robustlab.generative.train import GanConfig, train_gan
from robustlab.storage.layout import HISTORY_FILE, STATE_FILE

CFG = dict(epochs=2, batch_size=32, latent_dim=8, width=4, eval_samples=64, progress=False, label_smoothing=0.9, d_steps=2)


def _weights(run):
    return {k: v for name in ("generator", "discriminator") for k, v in load_network(run, name).state_dict().items()}


@pytest.mark.parametrize("options", [{}, {"conditional": True, "virtual_batchnorm": True, "loss": "hinge"}])
def test_resume_after_sigint_is_bit_identical(digits, tiny_classifier, tmp_path, monkeypatch, options):
    xtr, ytr, xte, _ = digits
    x, y = xtr[:320], ytr[:320]
    cfg = GanConfig(**CFG, **options)
    judge = GanJudge(tiny_classifier, xte[:64])
    train_gan(x, y, cfg, 10, tmp_path / "full", judge=judge)

    calls = {"n": 0}
    real_step = gan_train._step

    def interrupting_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 13:  # epoch 2, batch 3 of 10
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(gan_train, "_step", interrupting_step)
    with pytest.raises(GenerativeInterrupted, match="gan train --resume"):
        train_gan(x, y, cfg, 10, tmp_path / "cut", judge=judge)
    assert (tmp_path / "cut" / STATE_FILE).is_file()
    monkeypatch.setattr(gan_train, "_step", real_step)
    train_gan(x, y, cfg, 10, tmp_path / "cut", resume=True, judge=judge)

    full, cut = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert full.keys() == cut.keys()
    assert all(torch.equal(full[k], cut[k]) for k in full)
    h_full = [json.loads(s) for s in (tmp_path / "full" / HISTORY_FILE).read_text().splitlines()]
    h_cut = [json.loads(s) for s in (tmp_path / "cut" / HISTORY_FILE).read_text().splitlines()]
    drop = ("seconds", "train_seconds", "cpu_seconds")
    assert [{k: v for k, v in h.items() if k not in drop} for h in h_full] == [{k: v for k, v in h.items() if k not in drop} for h in h_cut]
    assert {"d_loss", "g_loss", "inception_score", "frechet_distance", "class_histogram"} <= set(h_full[-1])


def test_resume_refuses_other_settings(digits, tmp_path):
    xtr, ytr, _, _ = digits
    cfg = GanConfig(**{**CFG, "epochs": 1})
    train_gan(xtr[:64], ytr[:64], cfg, 10, tmp_path / "run")
    with pytest.raises(ValueError, match="other settings"):
        train_gan(xtr[:64], ytr[:64], GanConfig(**{**CFG, "epochs": 1, "loss": "minimax"}), 10, tmp_path / "run", resume=True)
