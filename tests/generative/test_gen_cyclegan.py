"""CycleGAN: the cycle loss of identity generators is zero; domains by name or index; a short run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.generative.cyclegan import CycleGanConfig, cycle_losses, resolve_domain, train_cyclegan

NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def test_cycle_loss_is_zero_for_identity_generators():
    a, b = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    out = cycle_losses(nn.Identity(), nn.Identity(), a, b)
    assert out["cycle_a"].item() == 0.0 and out["cycle_b"].item() == 0.0


def test_domains_by_name_or_index():
    assert resolve_domain("sneaker", NAMES) == 7
    assert resolve_domain("ankle-boot", NAMES) == 9
    assert resolve_domain("t-shirt", NAMES) == 0
    assert resolve_domain("3", NAMES) == 3
    with pytest.raises(ValueError, match="unknown domain class 'boot'"):
        resolve_domain("boot", NAMES)
    with pytest.raises(ValueError, match="out of range"):
        resolve_domain(10, NAMES)


def test_a_short_cyclegan_run_reports_its_metrics(digits, tiny_classifier, tmp_path):
    xtr, ytr, xte, yte = digits
    cfg = CycleGanConfig(epochs=1, batch_size=16, width=4, blocks=1)
    nets, history = train_cyclegan(xtr[ytr == 0], xtr[ytr == 1], cfg, tmp_path / "cg", classifier=tiny_classifier,
                                   test=(xte[yte == 0], xte[yte == 1]), classes=(0, 1), progress=False)
    h = history[-1]
    assert set(nets) == {"g_ab", "g_ba", "d_a", "d_b"}
    assert 0 <= h["translated_accuracy"] <= 1 and h["cycle_error_a"] >= 0 and h["cycle_loss"] > 0
    assert (tmp_path / "cg" / "artifacts" / "cyclegan_translations.safetensors").is_file()
