"""Sparse-RS, the L0 pixel attack: a needle it must find, the query count, targets, and a measured
effect on the digits CNN (the contract -- ball, bounds, model untouched, hostile input -- is in
test_contract.py and test_hostile.py with every other attack)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab import ThreatModel
from robustlab.attacks import PGD, SparseRS, build_attack


class Needle(nn.Module):
    """Two classes on (N, 20) inputs: class 1 exactly when coordinate 13 exceeds 0.5. Only one
    pixel can flip the decision, so an L0 attack with one pixel must find that one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 10 * (x[:, 13] - 0.5)
        return torch.stack([-z, z], dim=1)


def test_one_pixel_finds_the_only_pixel_that_matters():
    x = torch.zeros(6, 20)
    y = torch.zeros(6, dtype=torch.long)
    res = SparseRS(ThreatModel("l0", 1), queries=200, seed=0).run(Needle(), x, y)
    assert res.success.all()
    changed = (res.x_adv != 0).nonzero()
    assert changed[:, 1].eq(13).all() and len(changed) == 6  # one pixel per sample, the needle
    assert torch.equal(res.x_adv[:, 13], torch.ones(6))  # a vertex of the box
    # Without a budget nothing changes; the model is deterministic, so no amount of search helps.
    none = SparseRS(ThreatModel("l0", 0), queries=50, seed=0).run(Needle(), x, y)
    assert not none.success.any() and torch.equal(none.x_adv, x)


def test_queries_stop_at_success_and_never_exceed_the_budget():
    x = torch.zeros(40, 20)
    y = torch.zeros(40, dtype=torch.long)
    res = SparseRS(ThreatModel("l0", 1), queries=15, seed=3, restarts=2).run(Needle(), x, y)
    q = res.queries
    assert (q >= 1).all() and (q <= 30).all()  # 15 per restart, 2 restarts
    assert (q[~res.success] == 30).all()  # a sample never fooled spends the whole budget
    assert 0 < int(res.success.sum()) < 40  # 15 queries for 20 pixels: some found it, some not
    already = SparseRS(ThreatModel("l0", 1), queries=15, seed=3).run(Needle(), x + torch.eye(20)[13], y)
    assert already.success.all() and (already.queries == 0).all()  # misclassified before any search


def test_targeted_reaches_the_target(digits_model, digits):
    _, _, x, y = digits
    x, y = x[:30], y[:30]
    target = (y + 1) % 10
    res = SparseRS(ThreatModel("l0", 12), queries=300, seed=0).run(digits_model, x, y, target=target)
    with torch.no_grad():
        pred = digits_model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
    assert res.success.float().mean() >= 0.8, res.success.float().mean()  # measured: 30 of 30


def test_search_beats_its_own_random_start_on_digits(digits_model, digits):
    """The digits CNN (8x8 = 64 pixels), 3 pixels, first 200 test images. Measured: the random start
    alone (queries=1) fools 7.5%, the search with 300 queries 92.5%; the test asks for 50 points
    more. (Fashion-MNIST's demo model, 1,000 queries: 10.4% at 1 pixel, 46.5% at 3, 89.6% at 10.)"""
    _, _, x, y = digits
    x, y = x[:200], y[:200]
    start = SparseRS(ThreatModel("l0", 3), queries=1, seed=0).run(digits_model, x, y).success.float().mean()
    search = SparseRS(ThreatModel("l0", 3), queries=300, seed=0).run(digits_model, x, y).success.float().mean()
    assert search >= start + 0.5, (float(start), float(search))


def test_only_sparse_rs_takes_l0_and_l0_only_takes_whole_pixels():
    with pytest.raises(ValueError, match="does not support the l0 threat model"):
        PGD(ThreatModel("l0", 3))
    with pytest.raises(ValueError, match="does not support the linf threat model"):
        SparseRS(ThreatModel("linf", 0.1))
    assert isinstance(build_attack("sparse-rs", ThreatModel("l0", 3), queries=10), SparseRS)
    for bad in ({"queries": 0}, {"p_init": 0.0}, {"restarts": 0}):
        with pytest.raises(ValueError):
            SparseRS(ThreatModel("l0", 3), **bad)
