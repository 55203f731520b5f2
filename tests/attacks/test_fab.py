"""FAB (attacks/fab.py): closed forms on linear models, the exact hyperplane-box projection against
a linear/quadratic-programming reference, targeted runs, and the within-eps protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from torch import nn

from robustlab import ThreatModel
from robustlab.attacks import ATTACKS, FAB, build_attack
from robustlab.attacks.fab import project_hyperplane_box
from robustlab.threat import NORMS

DUAL_P = {"linf": 1, "l2": 2, "l1": float("inf")}
NORMS_HERE = [n for n in ("linf", "l2", "l1") if n in NORMS]


def two_class_linear(dim: int = 20, seed: int = 0, centred: bool = False) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A 2-class linear classifier and points in the middle of the box (the box never binds);
    ``centred`` puts the boundary through the points' mean (small distances, for L1)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(dim, 2)
    x = 0.45 + 0.1 * torch.rand(12, dim, generator=g)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, dim, generator=g))
        lin.bias.copy_(0.1 * torch.randn(2, generator=g))
        if centred:
            lin.bias[1] = lin.bias[0] - (lin.weight[1] - lin.weight[0]) @ x.mean(0)
    with torch.no_grad():
        y = lin(x).argmax(1)
    return lin, x, y


def boundary_distance(lin: nn.Linear, x: torch.Tensor, norm: str) -> torch.Tensor:
    """The closed form: |w.x + b| / ||w||_dual for the logit difference of a 2-class linear model."""
    with torch.no_grad():
        w = lin.weight[1] - lin.weight[0]
        b = lin.bias[1] - lin.bias[0]
        return (x @ w + b).abs() / w.norm(p=DUAL_P[norm])


# --- the projection onto a hyperplane intersected with the box ---------------------------------------
def reference_step(t: np.ndarray, w: np.ndarray, r: float, norm: str, starts: list[np.ndarray]) -> float | None:
    """The minimal norm of d with <w, d> = r and t + d in [0, 1] by scipy (linear programs for
    Linf/L1, SLSQP from each of ``starts`` for L2, a convex problem); None if scipy fails."""
    dim = len(t)
    bounds = [(-t[i], 1 - t[i]) for i in range(dim)]
    if norm == "l2":
        found = []
        for z0 in starts:
            res = minimize(lambda z: z @ z, z0, jac=lambda z: 2 * z, bounds=bounds, method="SLSQP",
                           constraints=[{"type": "eq", "fun": lambda z: w @ z - r}], options={"ftol": 1e-14})
            if res.success and abs(w @ res.x - r) < 1e-8:
                found.append(float(np.sqrt(res.fun)))
        return min(found) if found else None
    if norm == "linf":  # variables (d, m): min m, -m <= d <= m
        c = np.r_[np.zeros(dim), 1.0]
        a_ub = np.vstack([np.c_[np.eye(dim), -np.ones(dim)], np.c_[-np.eye(dim), -np.ones(dim)]])
        a_eq = np.r_[w, 0.0][None]
        extra = [(0, None)]
    else:  # L1, variables (d, m): min sum m, -m <= d <= m
        c = np.r_[np.zeros(dim), np.ones(dim)]
        a_ub = np.vstack([np.c_[np.eye(dim), -np.eye(dim)], np.c_[-np.eye(dim), -np.eye(dim)]])
        a_eq = np.r_[w, np.zeros(dim)][None]
        extra = [(0, None)] * dim
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * dim), A_eq=a_eq, b_eq=[r], bounds=bounds + extra)
    return float(res.fun) if res.status == 0 else None


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_is_the_minimal_step_onto_the_hyperplane_within_the_box(norm):
    rng = np.random.default_rng(3)
    for trial in range(40):
        dim = int(rng.integers(2, 8))
        t = rng.uniform(0, 1, dim)
        t[0] = rng.choice([0.0, 1.0]) if trial % 4 == 0 else t[0]  # on the box sometimes
        w = rng.normal(size=dim)
        if trial % 5 == 0:
            w[-1] = 0.0  # a coordinate that cannot help
        r = float(rng.normal() * rng.choice([0.05, 0.5, 3.0]))
        d = project_hyperplane_box(torch.tensor(t)[None], torch.tensor(w)[None], torch.tensor([r], dtype=torch.float64), (0.0, 1.0), norm)
        d = d[0].numpy()
        assert np.all(t + d >= -1e-12) and np.all(t + d <= 1 + 1e-12)
        # the most <w, d> can reach toward r inside the box
        sr = np.sign(r)
        reach = sr * float(np.maximum(sr * w * (1 - t), -sr * w * t).sum())
        if abs(reach) < abs(r):  # unreachable: as far as the box allows
            assert w @ d == pytest.approx(reach, abs=1e-9)
            continue
        assert w @ d == pytest.approx(r, abs=1e-9)
        ref = reference_step(t, w, r, norm, [np.zeros(dim), d, np.clip(d * 0.5 + 0.1, -t, 1 - t)])
        assert ref is not None
        got = {"linf": np.abs(d).max(), "l2": np.linalg.norm(d), "l1": np.abs(d).sum()}[norm]
        assert got <= ref + 1e-6, (got, ref)


# --- closed forms on linear models ------------------------------------------------------------------
@pytest.mark.parametrize("norm", [n for n in NORMS_HERE if n != "l1"])
@pytest.mark.parametrize("targeted_classes", [0, 1])
def test_fab_finds_the_closest_boundary_point_of_a_linear_model(norm, targeted_classes):
    lin, x, y = two_class_linear()
    dist = boundary_distance(lin, x, norm)
    res = FAB(ThreatModel(norm, 10.0), steps=20, targeted_classes=targeted_classes, seed=0).run(lin, x, y)
    assert bool(res.success.all())
    with torch.no_grad():
        assert bool((lin(res.x_adv).argmax(1) != y).all())
    # never below the true minimum; within 0.1% of it (the final search closes FAB's overshoot)
    assert bool((res.distance >= dist * (1 - 1e-4)).all())
    torch.testing.assert_close(res.distance, dist, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("norm", [n for n in NORMS_HERE if n != "l1"])
def test_success_iff_the_minimal_distance_is_within_eps(norm):
    lin, x, y = two_class_linear(seed=1)
    dist = boundary_distance(lin, x, norm)
    s = dist.sort().values
    gap = int((s[4:9] - s[3:8]).argmax()) + 3  # the widest gap among the middle distances
    eps = float((s[gap] + s[gap + 1]) / 2)  # some points within eps, some beyond, by a margin
    assert float(s[gap + 1] - s[gap]) > 0.01 * eps
    res = FAB(ThreatModel(norm, eps), steps=20, seed=0).run(lin, x, y)
    assert torch.equal(res.success, dist <= eps)
    # the others get the clean input back (AutoAttack's protocol), the successes their point
    assert torch.equal(res.x_adv[~res.success], x[~res.success])
    assert bool((res.distance[res.success] <= eps + 1e-6).all())
    # without the final search FAB overshoots slightly (eta), but success is still exact here
    res0 = FAB(ThreatModel(norm, eps), steps=20, final_search=0, seed=0).run(lin, x, y)
    assert torch.equal(res0.success, dist <= eps)


@pytest.mark.skipif("l1" not in NORMS, reason="ThreatModel('l1') is not available")
def test_fab_l1_on_a_linear_model():
    lin, x, y = two_class_linear(seed=2, centred=True)
    dist = boundary_distance(lin, x, "l1")
    assert float(dist.max()) < 0.44  # one coordinate moves by dist: the box does not bind
    res = FAB(ThreatModel("l1", 50.0), steps=30, seed=0).run(lin, x, y)
    assert bool(res.success.all())
    assert bool((res.distance >= dist * (1 - 1e-4)).all())
    torch.testing.assert_close(res.distance, dist, rtol=2e-3, atol=1e-6)


# --- targeted ---------------------------------------------------------------------------------------
def multi_class_linear(classes: int = 4, dim: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(dim, classes))


@pytest.mark.parametrize("norm", [n for n in NORMS_HERE if n != "l1"])
def test_targeted_fab_reaches_the_target(norm):
    model = multi_class_linear()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    target = (y + 1 + torch.randint(0, 3, (16,), generator=g)) % 4
    big = FAB(ThreatModel(norm, 100.0), steps=50, restarts=2, seed=0).run(model, x, y, target=target)
    with torch.no_grad():
        pred = model(big.x_adv).argmax(1)
    assert torch.equal(big.success, pred == target)
    assert float(big.success.float().mean()) >= 0.9
    # at a budget between the distances found, success means reaching the target within eps
    eps = float(big.distance[big.success].median())
    small = FAB(ThreatModel(norm, eps), steps=50, restarts=2, seed=0).run(model, x, y, target=target)
    with torch.no_grad():
        assert torch.equal(small.success, model(small.x_adv).argmax(1) == target)
    assert bool((small.distance <= eps + 1e-6).all())
    assert 0 < int(small.success.sum()) < 16


def test_fab_t_runs_the_top_classes_and_breaks_at_least_as_many_as_one_target():
    model = multi_class_linear(classes=5)
    x = torch.rand(24, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    threat = ThreatModel("linf", 0.05)
    one = FAB(threat, steps=15, targeted_classes=1, seed=0).run(model, x, y)
    four = FAB(threat, steps=15, targeted_classes=4, seed=0).run(model, x, y)
    assert bool((four.success | ~one.success).all())  # more targets never lose a success
    with torch.no_grad():
        assert torch.equal(four.success, model(four.x_adv).argmax(1) != y)


# --- contract details ---------------------------------------------------------------------------------
class Recorder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.batches = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.detach().clone())
        return self.inner(x)


@pytest.mark.parametrize("norm", NORMS_HERE)
def test_iterates_stay_in_the_bounds_and_output_in_the_ball(norm):
    threat = ThreatModel(norm, {"linf": 0.05, "l2": 0.3, "l1": 1.0}[norm], bounds=(-1.0, 1.0))
    model = Recorder(nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)))
    x = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    x[:, 0, 0, 0] = 1.0  # on the bound
    res = FAB(threat, steps=8, restarts=2, seed=0).run(model, x)
    for b in model.batches:
        assert float(b.min()) >= -1.0 and float(b.max()) <= 1.0
    assert bool(threat.contains(res.x_adv, x).all())


def test_seeded_runs_repeat_and_early_stop_keeps_the_successes():
    model = multi_class_linear(classes=3)
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    threat = ThreatModel("l2", 0.3)
    a = FAB(threat, steps=10, restarts=3, seed=5).run(model, x)
    b = FAB(threat, steps=10, restarts=3, seed=5).run(model, x)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    fast = FAB(threat, steps=10, restarts=3, seed=5, early_stop=True).run(model, x)
    assert torch.equal(fast.success, a.success)  # early stop changes the cost, not the outcome


def test_options_are_checked_and_registered():
    threat = ThreatModel("linf", 0.1)
    assert ATTACKS["fab"] is FAB
    assert build_attack("fab", threat, steps=3).steps == 3
    for bad in ({"steps": 0}, {"restarts": 0}, {"alpha_max": 1.5}, {"eta": 0.0}, {"beta": 1.0},
                {"targeted_classes": -1}, {"final_search": -1}, {"steps": "ten"}):
        with pytest.raises(ValueError):
            FAB(threat, **bad)
    x = torch.rand(3, 1, 4, 4)
    with pytest.raises(ValueError, match="chooses its own targets"):
        FAB(threat, targeted_classes=2)(multi_class_linear(), x, torch.zeros(3, dtype=torch.long),
                                        target=torch.ones(3, dtype=torch.long))
