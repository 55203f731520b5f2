import math

import pytest
import torch

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
    with pytest.raises(ValueError, match="linf, l2, l1"):
        ThreatModel("l0", 1)


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
