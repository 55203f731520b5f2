"""Property-based invariants every attack keeps, on random tiny models, shapes, budgets and bounds:

* every sample inside the eps-ball (+1e-5) and inside the bounds; eps == 0 returns x;
* output of x's shape, dtype and device, detached, a new tensor;
* the model bit-identical afterwards (state_dict incl. BatchNorm statistics and
  num_batches_tracked, every module's training flag, every requires_grad flag, every .grad);
* the caller's x untouched;
* the same seed gives the same result.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustlab import ThreatModel
from robustlab.attacks import CW, FGSM, FGV, MIM, PGD, Noise

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is fastest and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

ATTACKS = {
    "fgsm": lambda t, seed: FGSM(t, seed=seed),
    "fgv": lambda t, seed: FGV(t, seed=seed),
    "pgd": lambda t, seed: PGD(t, steps=3, restarts=2, seed=seed),
    "pgd-es": lambda t, seed: PGD(t, steps=3, restarts=2, early_stop=True, seed=seed),
    "pgd-plain": lambda t, seed: PGD(t, steps=3, restarts=2, track_best=False, seed=seed),
    "pgd-margin-l2step": lambda t, seed: PGD(t, steps=2, loss="margin", step_size=0.7, seed=seed),
    "mim": lambda t, seed: MIM(t, steps=3, random_start=True, seed=seed),
    "cw": lambda t, seed: CW(t, steps=4, binary_search_steps=2, seed=seed),
    "noise": lambda t, seed: Noise(t, seed=seed),
}


def build(kind: str, c: int, s: int, k: int, dtype: torch.dtype, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "linear":
        model: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, k))
    elif kind == "mlp-bn":
        model = nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, k))
    else:
        layers: list[nn.Module] = [nn.Conv2d(c, 3, 3, padding=1)]
        if kind == "conv-bn":
            layers.append(nn.BatchNorm2d(3))
        layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, k)]
        model = nn.Sequential(*layers)
    model = model.to(dtype)
    if "bn" in kind:  # non-trivial running statistics and num_batches_tracked
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(torch.rand(4, c, s, s, dtype=dtype))
    return model


@st.composite
def scenarios(draw):
    kind = draw(st.sampled_from(["linear", "conv", "conv-bn", "mlp-bn"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n = draw(st.integers(1, 4))
    c = draw(st.integers(1, 2))
    s = draw(st.integers(4, 6))
    k = draw(st.integers(2, 4))
    norm = draw(st.sampled_from(["linf", "l2"]))
    eps = draw(st.one_of(st.just(0.0), st.floats(1e-3, 2.0)))
    lo = draw(st.sampled_from([0.0, -1.0, -0.5, 3.0]))
    hi = lo + draw(st.sampled_from([0.5, 1.0, 2.0]))
    seed = draw(st.integers(0, 2**16))
    return {
        "kind": kind,
        "dtype": dtype,
        "shape": (n, c, s, s),
        "k": k,
        "threat": ThreatModel(norm, eps, (lo, hi)),
        "seed": seed,
        "train_mode": draw(st.booleans()),
        "freeze": draw(st.booleans()),
        "with_grad": draw(st.booleans()),
        "targeted": draw(st.booleans()),
        "x_requires_grad": draw(st.booleans()),
        "at_bounds": draw(st.booleans()),
    }


def make_case(sc: dict):
    model = build(sc["kind"], sc["shape"][1], sc["shape"][2], sc["k"], sc["dtype"], sc["seed"])
    model.train(sc["train_mode"])
    params = list(model.parameters())
    if sc["freeze"]:
        params[0].requires_grad_(False)
    if sc["with_grad"]:
        params[-1].grad = torch.randn_like(params[-1])
    g = torch.Generator().manual_seed(sc["seed"])
    lo, hi = sc["threat"].bounds
    x = lo + (hi - lo) * torch.rand(sc["shape"], generator=g, dtype=sc["dtype"])
    if sc["at_bounds"]:  # some pixels exactly on the bounds
        x = torch.where(torch.rand(sc["shape"], generator=g, dtype=sc["dtype"]) < 0.3, torch.full_like(x, hi), x)
        x.view(-1)[0] = lo
    x.requires_grad_(sc["x_requires_grad"])
    n, k = sc["shape"][0], sc["k"]
    y = torch.randint(0, k, (n,), generator=g)
    target = torch.randint(0, k, (n,), generator=g) if sc["targeted"] else None
    return model, x, y, target


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
    }


def assert_same_state(model: nn.Module, snap: dict) -> None:
    now = snapshot(model)
    assert now["state"].keys() == snap["state"].keys()
    for key in snap["state"]:
        assert torch.equal(now["state"][key], snap["state"][key]), key
    assert now["training"] == snap["training"]
    assert now["requires_grad"] == snap["requires_grad"]
    for a, b in zip(now["grad"], snap["grad"]):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


def check_output(x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> None:
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert x_adv.data_ptr() != x.data_ptr()
    assert torch.isfinite(x_adv).all()
    lo, hi = threat.bounds
    assert x_adv.min() >= lo and x_adv.max() <= hi
    assert (threat.distance(x_adv, x.detach()) <= threat.eps + 1e-5).all()
    if threat.eps == 0:
        assert torch.equal(x_adv, x.detach())


@pytest.mark.parametrize("name", list(ATTACKS))
@SETTINGS
@given(sc=scenarios())
def test_attack_invariants(name, sc):
    model, x, y, target = make_case(sc)
    threat = sc["threat"]
    snap = snapshot(model)
    x_copy = x.detach().clone()

    res = ATTACKS[name](threat, 1234).run(model, x, y, target=target)

    check_output(res.x_adv, x, threat)
    assert res.success.shape == (x.shape[0],) and res.success.dtype == torch.bool
    torch.testing.assert_close(res.distance, threat.distance(res.x_adv, x.detach()))
    assert_same_state(model, snap)
    assert torch.equal(x.detach(), x_copy) and x.grad is None

    again = ATTACKS[name](threat, 1234)(model, x, y, target=target)
    assert torch.equal(again, res.x_adv)
    assert_same_state(model, snap)


@SETTINGS
@given(sc=scenarios())
def test_cw_minimal_invariants(sc):
    model, x, y, target = make_case(sc)
    threat = sc["threat"]
    snap = snapshot(model)
    x_copy = x.detach().clone()
    res = CW(threat, steps=4, binary_search_steps=2).minimal(model, x, y, target=target)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype and not res.x_adv.requires_grad
    lo, hi = threat.bounds
    assert res.x_adv.min() >= lo and res.x_adv.max() <= hi
    torch.testing.assert_close(res.distance, (res.x_adv - x_copy).flatten(1).norm(dim=1))
    # a sample that is not fooled comes back unchanged
    failed = ~res.success
    assert torch.equal(res.x_adv[failed], x_copy[failed])
    assert_same_state(model, snap)
    assert torch.equal(x.detach(), x_copy)


@SETTINGS
@given(sc=scenarios(), restarts=st.integers(1, 3))
def test_pgd_early_stop_never_less_successful(sc, restarts):
    model, x, y, target = make_case(sc)
    threat = sc["threat"]
    plain = PGD(threat, steps=4, restarts=restarts, seed=sc["seed"]).run(model, x, y, target=target)
    es = PGD(threat, steps=4, restarts=restarts, early_stop=True, seed=sc["seed"]).run(model, x, y, target=target)
    # the same trajectories up to the first success; allow one float-noise flip at the border
    assert es.success.sum() >= plain.success.sum() - 1
    check_output(es.x_adv, x, threat)
