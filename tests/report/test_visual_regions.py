"""Decision regions (robustlab.evaluation.visual_regions) on the session's digits CNN."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.state import assert_same_state, assert_tensor_untouched, snapshot, snapshot_tensor
from robustlab.evaluation.visual_regions import decision_regions


class Spy(nn.Module):
    """The wrapped model, recording the smallest and largest input value it is ever given."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.lo, self.hi, self.calls = float("inf"), float("-inf"), 0

    def forward(self, x):
        self.lo, self.hi = min(self.lo, float(x.detach().min())), max(self.hi, float(x.detach().max()))
        self.calls += 1
        return self.inner(x)


def test_each_grid_class_is_the_models_prediction_at_that_point(digits, digits_model):
    _, _, xte, yte = digits
    x, y = xte[3], int(yte[3])
    res = decision_regions(digits_model, x, y, radius=0.5, grid=21, seed=1)
    assert res.pred.shape == (21, 21) and res.pred.dtype == torch.int64
    c = res.coords
    assert c[10] == 0 and c[0] == pytest.approx(-0.5) and c[-1] == pytest.approx(0.5) and torch.allclose(c, -c.flip(0))
    # the gradient direction is the sign of the cross-entropy gradient, computed here on its own
    xg = x[None].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(digits_model(xg), torch.tensor([y])), xg)
    assert torch.equal(res.direction_a, grad[0].sign())
    g, r = res.direction_a.double(), res.direction_b.double()
    assert abs(float((g * r).sum())) < 1e-4 * float((g * g).sum())  # orthogonal
    assert float(r.norm()) == pytest.approx(float(g.norm()), rel=1e-5)
    # sampled grid points (corners, centre, random ones) classified again, one at a time
    gen = torch.Generator().manual_seed(0)
    ij = [(0, 0), (0, 20), (20, 0), (20, 20), (10, 10)] + torch.randint(0, 21, (40, 2), generator=gen).tolist()
    with torch.no_grad():
        for i, j in ij:
            point = torch.clamp(x + float(c[i]) * res.direction_a + float(c[j]) * res.direction_b, 0.0, 1.0)
            assert int(res.pred[i, j]) == int(digits_model(point[None]).argmax(1)), (i, j)
        assert int(res.pred[10, 10]) == int(digits_model(x[None]).argmax(1)) == res.meta["centre_prediction"]
    assert res.meta["classes_seen"] == sorted(set(res.pred.flatten().tolist()))
    assert len(res.meta["classes_seen"]) > 1  # at radius 0.5 some boundary is crossed


def test_grid_points_stay_in_the_bounds(digits, digits_model):
    _, _, xte, yte = digits
    x = xte[0].clamp(0.2, 0.8)
    spy = Spy(digits_model)
    res = decision_regions(spy, x, radius=1.0, grid=11, bounds=(0.2, 0.8))
    lo, hi = float(torch.tensor(0.2)), float(torch.tensor(0.8))  # the bounds in the images' float32
    assert spy.calls >= 2 and spy.lo >= lo and spy.hi <= hi
    assert spy.lo == lo and spy.hi == hi  # the clamping was exercised
    assert res.meta["bounds"] == [0.2, 0.8] and res.meta["clamped_to_bounds"]


def test_l2_direction_is_the_unit_gradient(digits, digits_model):
    _, _, xte, yte = digits
    x, y = xte[5], int(yte[5])
    res = decision_regions(digits_model, x, y, radius=2.0, grid=5, direction="l2")
    xg = x[None].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(digits_model(xg), torch.tensor([y])), xg)
    assert float(res.direction_a.norm()) == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(res.direction_a, grad[0] / grad.norm(), atol=1e-6)


def test_model_and_input_are_left_as_found(digits, digits_model):
    _, _, xte, _ = digits
    model = copy.deepcopy(digits_model).train()
    model.classifier[1].weight.grad = torch.ones_like(model.classifier[1].weight)
    model.features[0][0].weight.requires_grad_(False)
    x = xte[7].clone()
    before, saved = snapshot(model), snapshot_tensor(x)
    decision_regions(model, x, radius=0.3, grid=7)
    assert_same_state(model, before)
    assert_tensor_untouched(x, saved, "x")


@pytest.mark.parametrize("kwargs, match", [
    ({"grid": 20}, "grid must be odd"),
    ({"grid": 1}, "grid must be an integer >= 3"),
    ({"radius": 0.0}, "radius must be > 0"),
    ({"direction": "l1"}, "direction must be one of"),
    ({"bounds": (1.0, 0.0)}, "bounds"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_arguments(digits, digits_model, kwargs, match):
    _, _, xte, _ = digits
    args = {"radius": 0.3, **kwargs}
    with pytest.raises(ValueError, match=match):
        decision_regions(digits_model, xte[0], **args)


def test_bad_images(digits, digits_model):
    _, _, xte, _ = digits
    with pytest.raises(ValueError, match="one image"):
        decision_regions(digits_model, xte[:2], radius=0.1)
    with pytest.raises(ValueError, match="outside the bounds"):
        decision_regions(digits_model, xte[0] + 2, radius=0.1)
    with pytest.raises(ValueError, match="NaN"):
        decision_regions(digits_model, torch.full_like(xte[0], float("nan")), radius=0.1)
