import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustlab import ThreatModel


def test_defaults_and_validation():
    t = ThreatModel("Linf", 0.1)
    assert t.norm == "linf" and t.bounds == (0.0, 1.0)
    for bad in (-0.1, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError, match="eps"):
            ThreatModel("linf", bad)
    with pytest.raises(ValueError, match="unknown norm 'l3'"):
        ThreatModel("l3", 0.1)
    with pytest.raises(ValueError, match="bounds"):
        ThreatModel("l2", 0.1, (1.0, 0.0))
    with pytest.raises(ValueError, match="linf, l2, l1, l0"):
        ThreatModel("l5", 1)


@pytest.mark.parametrize("alias", ["l1", "L1", "1", "l_1", " l1 "])
def test_l1_aliases(alias):
    t = ThreatModel(alias, 5)
    assert t.norm == "l1" and ThreatModel.from_dict(t.to_dict()) == t


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_lands_in_ball_and_bounds(norm):
    torch.manual_seed(0)
    t = ThreatModel(norm, 0.3, (0.0, 1.0))
    x = torch.rand(64, 1, 5, 5)
    far = x + 5 * torch.randn_like(x)
    p = t.project(far, x)
    assert t.contains(p, x).all()
    inside = t.project(x + 0.001 * torch.randn_like(x), x)
    assert torch.allclose(t.project(inside, x), inside)  # idempotent


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_start_is_inside_and_spread(norm):
    g = torch.Generator().manual_seed(0)
    t = ThreatModel(norm, 0.5, (-10.0, 10.0))
    x = torch.zeros(2000, 3)
    s = t.random_start(x, g)
    d = t.distance(s, x)
    assert (d <= 0.5 + 1e-6).all()
    if norm in ("l2", "l1"):
        # uniform in a 3-ball (either norm): P(r <= eps/2) = 1/8
        frac = float((d <= 0.25).float().mean())
        assert abs(frac - 1 / 8) < 0.03
    else:
        assert float(s.abs().max()) > 0.49


def test_steepest_direction_unit_norm():
    g = torch.randn(4, 10)
    assert torch.equal(ThreatModel("linf", 1).steepest_direction(g), g.sign())
    n = ThreatModel("l2", 1).steepest_direction(g).norm(dim=1)
    assert torch.allclose(n, torch.ones(4))
    assert math.isclose(ThreatModel("l2", 1).with_eps(0.2).eps, 0.2)
    d = ThreatModel("l1", 1).steepest_direction(g)
    assert torch.allclose(d.abs().sum(dim=1), torch.ones(4)) and ((d != 0).sum(dim=1) == 1).all()
    assert torch.equal((d != 0).float().argmax(1), g.abs().argmax(1))


def test_l1_magnitude_and_contains():
    t = ThreatModel("l1", 1.0)
    x = torch.full((2, 4), 0.5)
    a = x + torch.tensor([[0.25, -0.25, 0.25, 0.25], [0.5, 0.0, 0.0, 0.0]])
    assert torch.allclose(t.distance(a, x), torch.tensor([1.0, 0.5]))
    assert t.contains(a, x).all()
    assert not t.contains(a + torch.tensor([0.1, 0, 0, 0]), x).any()  # row 0 leaves the ball, row 1 the box


# --- L0: pixels -----------------------------------------------------------------------------------
@pytest.mark.parametrize("alias", ["l0", "L0", "0", "l_0"])
def test_l0_aliases_and_whole_pixel_budgets(alias):
    t = ThreatModel(alias, 3)
    assert t.norm == "l0" and t.eps == 3.0 and ThreatModel.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="number of pixels, a whole number"):
        ThreatModel(alias, 2.5)


def test_l0_counts_pixels_not_channels():
    t = ThreatModel("l0", 2)
    x = torch.zeros(2, 3, 2, 2)
    a = x.clone()
    a[0, :, 0, 0] = 0.5  # one pixel, all three channels
    a[0, 1, 1, 1] = 0.2  # a second pixel, one channel
    a[1, 0, :, :] = 0.1  # four pixels
    assert torch.equal(t.distance(a, x), torch.tensor([2.0, 4.0]))
    assert t.contains(a, x).tolist() == [True, False]
    flat = torch.zeros(1, 5)
    assert t.distance(flat + torch.tensor([[0, 1, 0, 1, 1.0]]), flat).item() == 3.0  # (N, D): coordinates


def _l0_brute_force(v: torch.Tensor, x: torch.Tensor, k: int, lo: float, hi: float) -> float:
    """Squared distance from v to the nearest point that changes at most k pixels of x and lies in
    the box, by trying every set of changed pixels (a changed pixel is best at clip(v))."""
    import itertools

    pv, px = v.reshape(v.shape[0], -1), x.reshape(x.shape[0], -1)  # (C, P) for one sample
    p = pv.shape[1]
    best = float("inf")
    for size in range(min(k, p) + 1):
        for s in itertools.combinations(range(p), size):
            z = px.clone()
            z[:, list(s)] = pv[:, list(s)].clamp(lo, hi)
            best = min(best, float(((z - pv) ** 2).sum()))
    return best


@given(st.integers(1, 3), st.integers(1, 6), st.integers(0, 7), st.integers(0, 2**16))
@settings(max_examples=150, deadline=None)
def test_l0_projection_is_the_nearest_point_by_brute_force(c, p, k, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = -1.0, 2.0
    x = lo + (hi - lo) * torch.rand(1, c, 1, p, generator=g, dtype=torch.float64)
    v = x + 2.5 * torch.randn(1, c, 1, p, generator=g, dtype=torch.float64)
    if seed % 3 == 0:
        v[..., :1] = x[..., :1]  # an unchanged pixel
    t = ThreatModel("l0", k, (lo, hi))
    z = t.project(v, x)
    assert t.contains(z, x, tol=0).all()
    got = float(((z - v) ** 2).sum())
    want = _l0_brute_force(v[0, :, 0], x[0, :, 0], k, lo, hi)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert torch.equal(t.project(z, x), z)  # idempotent


def test_l0_random_start_changes_k_random_pixels():
    g = torch.Generator().manual_seed(0)
    t = ThreatModel("l0", 3, (-1.0, 1.0))
    x = torch.zeros(4000, 2, 2, 3)  # 6 pixels of 2 channels
    s = t.random_start(x, g)
    assert torch.equal(t.distance(s, x), torch.full((4000,), 3.0))
    assert float(s.min()) >= -1 and float(s.max()) <= 1
    hits = (s != 0).any(1).flatten(1).float().mean(0)  # how often each pixel is chosen: 3 / 6
    assert torch.allclose(hits, torch.full((6,), 0.5), atol=0.04)


def test_l0_has_no_gradient_step():
    with pytest.raises(ValueError, match="l0 threat model has no gradient step"):
        ThreatModel("l0", 2).steepest_direction(torch.randn(2, 4))
    with pytest.raises(ValueError, match="sparse-rs"):
        ThreatModel("l0", 2).sparse_direction(torch.randn(2, 4), 0.5)


def test_l0_counts_exactly_in_low_precision():
    """bfloat16 holds integers exactly only up to 256: the count must not be cast to it."""
    x = torch.zeros(1, 1, 20, 20, dtype=torch.bfloat16)
    a = x.clone()
    a.view(-1)[:257] = 1
    t = ThreatModel("l0", 256)
    assert t.distance(a, x).item() == 257 and not t.contains(a, x).any()
