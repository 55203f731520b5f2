"""Property-based invariants every registered attack keeps (all the option sets of
``tests/helpers/attacks.py``), on random tiny models, shapes (images, 3-D and flat inputs),
dtypes, budgets and bounds:

* every sample inside the eps-ball (+1e-5) and inside the bounds; eps == 0 returns x;
* output of x's shape, dtype and device, detached, a new tensor;
* the model bit-identical afterwards (tests/helpers/state.py: every submodule's mode, parameters,
  buffers incl. BatchNorm statistics and num_batches_tracked, requires_grad flags, .grad), and
  any model the attack holds (a transfer attack's surrogate) too;
* the caller's x untouched;
* the same seed gives the same result (and the same query counts).

The fixed-scenario contract, mixed train/eval submodules, the per-query projection check and the
refusal of hostile input are in ``test_contract.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from helpers.attacks import accepts_target, eps_ball_names, models_held, variants
from helpers.attacks import build as build_attack
from helpers.state import assert_same_state, assert_tensor_untouched, snapshot, snapshot_tensor
from robustlab import ThreatModel
from robustlab.attacks import ATTACKS, CW, PGD

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build(kind: str, shape: tuple[int, ...], k: int, dtype: torch.dtype, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    d = 1
    for size in shape[1:]:
        d *= size
    if kind == "linear":
        model: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(d, k))
    elif kind == "mlp-bn":
        model = nn.Sequential(nn.Flatten(), nn.Linear(d, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, k))
    else:
        c = shape[1]
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
                model(torch.rand(4, *shape[1:], dtype=dtype))
    return model


@st.composite
def scenarios(draw):
    kind = draw(st.sampled_from(["linear", "conv", "conv-bn", "mlp-bn"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n = draw(st.integers(1, 4))
    layout = "nchw" if kind.startswith("conv") else draw(st.sampled_from(["nchw", "nhw", "nd"]))
    if layout == "nchw":
        shape: tuple[int, ...] = (n, draw(st.integers(1, 2)), draw(st.integers(3, 6)), draw(st.integers(3, 6)))
    elif layout == "nhw":
        shape = (n, draw(st.integers(3, 6)), draw(st.integers(3, 6)))
    else:
        shape = (n, draw(st.integers(2, 20)))
    k = draw(st.integers(2, 5))
    norm = draw(st.sampled_from(["linf", "l2"]))
    eps = draw(st.one_of(st.just(0.0), st.floats(1e-3, 2.0)))
    lo = draw(st.sampled_from([0.0, -1.0, -0.5, 3.0]))
    hi = lo + draw(st.sampled_from([0.5, 1.0, 2.0]))
    seed = draw(st.integers(0, 2**16))
    return {
        "kind": kind,
        "dtype": dtype,
        "shape": shape,
        "k": k,
        "threat": ThreatModel(norm, eps, (lo, hi)),
        "seed": seed,
        "variant": draw(st.integers(0, 9)),  # which option set (modulo their number)
        "train_mode": draw(st.booleans()),
        "freeze": draw(st.booleans()),
        "with_grad": draw(st.booleans()),
        "targeted": draw(st.booleans()),
        "x_requires_grad": draw(st.booleans()),
        "at_bounds": draw(st.booleans()),
    }


def make_case(sc: dict):
    model = build(sc["kind"], sc["shape"], sc["k"], sc["dtype"], sc["seed"])
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


@pytest.mark.filterwarnings("ignore:APGD.*DLR loss needs:RuntimeWarning")  # k < 4 classes: by design
@pytest.mark.parametrize("name", eps_ball_names())
@SETTINGS
@given(sc=scenarios())
def test_attack_invariants(name, sc):
    model, x, y, target = make_case(sc)
    threat = sc["threat"]
    if "l0" in ATTACKS[name].norms and threat.norm not in ATTACKS[name].norms:
        # an L0-only attack (sparse-rs): the same bounds, eps as a whole number of pixels
        threat = ThreatModel("l0", float(math.ceil(2 * threat.eps)), threat.bounds)
    variant = sc["variant"] % len(variants(name))

    def make():
        return build_attack(
            name, threat, variant, seed=1234,
            surrogate=lambda: build(sc["kind"], sc["shape"], sc["k"], sc["dtype"], sc["seed"] + 1),
        )

    attack = make()
    if not accepts_target(attack):
        target = None
    held = [(m, snapshot(m)) for m in models_held(attack)]
    before, saved_x = snapshot(model), snapshot_tensor(x)

    res = attack.run(model, x, y, target=target)

    check_output(res.x_adv, x, threat)
    assert res.success.shape == (x.shape[0],) and res.success.dtype == torch.bool
    torch.testing.assert_close(res.distance, threat.distance(res.x_adv, x.detach()))
    assert_same_state(model, before)
    for m, snap in held:
        assert_same_state(m, snap, what="a model the attack holds")
    assert_tensor_untouched(x, saved_x, "the caller's x")

    again = make()
    res2 = again.run(model, x, y, target=target)
    assert torch.equal(res2.x_adv, res.x_adv)
    if res.queries is not None:
        assert torch.equal(res2.queries, res.queries)
    assert torch.equal(again(model, x, y, target=target), res.x_adv)
    assert_same_state(model, before)


@SETTINGS
@given(sc=scenarios())
def test_cw_minimal_invariants(sc):
    model, x, y, target = make_case(sc)
    threat = sc["threat"]
    before = snapshot(model)
    x_copy = x.detach().clone()
    saved_x = snapshot_tensor(x)
    res = CW(threat, steps=4, binary_search_steps=2).minimal(model, x, y, target=target)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype and not res.x_adv.requires_grad
    lo, hi = threat.bounds
    assert res.x_adv.min() >= lo and res.x_adv.max() <= hi
    torch.testing.assert_close(res.distance, (res.x_adv - x_copy).flatten(1).norm(dim=1))
    # a sample that is not fooled comes back unchanged
    failed = ~res.success
    assert torch.equal(res.x_adv[failed], x_copy[failed])
    assert_same_state(model, before)
    assert_tensor_untouched(x, saved_x, "the caller's x")


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
