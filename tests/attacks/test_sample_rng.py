"""Per-sample random draws (robustlab._rng) and the batch invariance they give the attacks."""

from __future__ import annotations

import pytest
import torch

from helpers.attacks import build, variant_ids
from robustlab import ThreatModel, _rng
from robustlab.attacks import ATTACKS


def test_same_id_same_draws_in_any_batch():
    a = _rng.SampleRNG(7, torch.tensor([3, 10, 42]))
    b = _rng.SampleRNG(7, torch.tensor([42, 99, 3, 5]))
    ua, ub = a.uniform((3, 50), torch.float32), b.uniform((4, 50), torch.float32)
    assert torch.equal(ua[0], ub[2]) and torch.equal(ua[2], ub[0])
    assert not torch.equal(ua[0], ua[1])  # other ids, other numbers
    # the next draw differs from the first, and a subset keeps each sample's stream
    sub = b.subset(torch.tensor([2, 0]))
    assert torch.equal(sub.uniform((2, 5), torch.float32)[0], a.uniform((3, 5), torch.float32)[0])


def test_seed_changes_the_draws():
    ids = torch.arange(4)
    assert not torch.equal(_rng.SampleRNG(0, ids).uniform((4, 8), torch.float32),
                           _rng.SampleRNG(1, ids).uniform((4, 8), torch.float32))


def test_distributions_match_their_laws():
    g = _rng.SampleRNG(0, torch.arange(200))
    u = _rng.rand(g, (200, 500), dtype=torch.float32, device=torch.device("cpu"))
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.003
    n = _rng.randn(g, (200, 500), dtype=torch.float64, device=torch.device("cpu"))
    assert abs(float(n.mean())) < 0.02 and abs(float(n.std()) - 1) < 0.02
    assert abs(float((n.abs() < 1.96).double().mean()) - 0.95) < 0.01
    k = _rng.randint(g, 2, 7, (200, 500), device=torch.device("cpu"))
    counts = torch.bincount(k.flatten(), minlength=7)[2:].double() / k.numel()
    assert int(k.min()) == 2 and int(k.max()) == 6 and float((counts - 0.2).abs().max()) < 0.01
    e = _rng.exponential(g, (200, 500), dtype=torch.float64, device=torch.device("cpu"))
    assert float(e.min()) >= 0 and abs(float(e.mean()) - 1) < 0.02


def test_bad_shape_and_ids_are_refused():
    g = _rng.SampleRNG(0, torch.arange(3))
    with pytest.raises(ValueError, match="shape"):
        g.uniform((4, 2), torch.float32)
    with pytest.raises(ValueError, match="1-D"):
        _rng.SampleRNG(0, torch.zeros(2, 2, dtype=torch.long))


PER_SAMPLE = [(n, i) for n, i in variant_ids()
              if getattr(ATTACKS[n], "per_sample_rng", False) and not getattr(ATTACKS[n], "needs_target", False)]


@pytest.mark.parametrize("name,variant", PER_SAMPLE)
def test_attack_result_does_not_depend_on_the_batch(name, variant, digits, digits_model):
    """Every attack that draws per sample: sample i's example is the same in a batch of 12 and
    in two batches of other sizes and order, when called with the samples' ids."""
    _, _, xte, yte = digits
    x, y = xte[:12], yte[:12]
    threat = ThreatModel("l0", 4) if name == "sparse-rs" else ThreatModel("linf", 0.2)  # sparse-rs: L0 only
    attack = build(name, threat, variant, surrogate=lambda: digits_model)
    ids = torch.arange(100, 112)
    whole = attack(digits_model, x, y, sample_ids=ids)
    order = torch.tensor([7, 2, 9, 0, 11])
    rest = torch.tensor([i for i in range(12) if i not in set(order.tolist())])
    part1 = attack(digits_model, x[order], y[order], sample_ids=ids[order])
    part2 = attack(digits_model, x[rest], y[rest], sample_ids=ids[rest])
    if name == "fab":  # its batched projections round differently per batch size (~1e-7), random or not
        assert torch.allclose(whole[order], part1, atol=1e-5) and torch.allclose(whole[rest], part2, atol=1e-5)
    else:
        assert torch.equal(whole[order], part1) and torch.equal(whole[rest], part2)


def test_sample_ids_are_checked(digits, digits_model):
    _, _, xte, yte = digits
    attack = build("pgd", ThreatModel("linf", 0.1))
    with pytest.raises(ValueError, match="sample_ids"):
        attack(digits_model, xte[:4], yte[:4], sample_ids=torch.arange(3))
    with pytest.raises(ValueError, match="sample_ids"):
        attack(digits_model, xte[:4], yte[:4], sample_ids=torch.rand(4))
