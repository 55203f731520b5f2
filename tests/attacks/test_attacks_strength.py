"""Attack strength on real Fashion-MNIST (a small CNN trained once per session on 12k images)."""

import pytest
import torch

from robustlab import ThreatModel
from robustlab.attacks import CW, FGSM, MIM, PGD, Noise
from robustlab.evaluation import clean_accuracy

N = 300


@pytest.fixture(scope="module")
def data(fmnist_subset, fmnist_model):
    _, _, xte, yte, _ = fmnist_subset
    return fmnist_model, xte[:N], yte[:N]


def acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_model_is_good_enough_to_attack(data):
    model, x, y = data
    assert clean_accuracy(model, x, y) >= 0.85


def test_pgd_breaks_the_standard_model(data):
    model, x, y = data
    t = ThreatModel("linf", 0.1)
    pgd = acc(model, PGD(t, steps=20, rel_step_size=0.1, seed=0)(model, x, y), y)
    fgsm = acc(model, FGSM(t)(model, x, y), y)
    noise = acc(model, Noise(t, seed=0)(model, x, y), y)
    mim = acc(model, MIM(t, steps=20)(model, x, y), y)
    clean = acc(model, x, y)
    assert pgd <= 0.15
    assert fgsm > pgd  # the single step is weaker than the iterated one
    assert mim <= fgsm
    assert noise >= clean - 0.05  # random signs of the same size barely matter: gradients do


def test_targeted_pgd_hits_the_target(data):
    model, x, y = data
    target = (y + 1) % 10
    t = ThreatModel("linf", 0.2)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    hits = {}
    for loss in ("ce", "ce-difference"):
        x_adv = PGD(t, steps=100, rel_step_size=0.05, restarts=2, loss=loss, seed=0)(model, x, y, target=target)
        with torch.no_grad():
            hits[loss] = float((model(x_adv).argmax(1) == target)[correct].float().mean())
    assert hits["ce"] >= 0.90, hits
    # CE(y) - CE(target) is also satisfied by leaving y for any class, so it targets less sharply
    # (about 70% here); it must still clearly beat chance (10%).
    assert hits["ce-difference"] >= 0.5, hits


def test_l2_penalty_attack_finds_close_examples(data):
    model, x, y = data
    x, y = x[:100], y[:100]
    correct = (model(x).argmax(1) == y)
    res = CW(ThreatModel("l2", 1.0), steps=30, lr=0.05, binary_search_steps=4).minimal(model, x, y)
    rate = float(res.success[correct].float().mean())
    assert rate >= 0.95
    # the examples are small: a median L2 distance far below the image norm (~10)
    assert float(res.distance[correct & res.success].median()) < 2.0
