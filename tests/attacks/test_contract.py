"""The attack contract (see ``robustlab/attacks/base.py``), checked for every attack in the
registry, :data:`robustlab.attacks.ATTACKS`, with the cheap settings of ``tests/helpers/attacks.py``
(an attack registered without them fails here by name):

* output of x's shape, dtype and device, detached, a new tensor, inside the eps-ball and the
  bounds, Linf and L2 (``run`` too, untargeted and targeted); an attack with ``eps_ball = False``
  (fooling images) inside the bounds only, independent of eps, and it needs ``target=``;
* the model left exactly as found, including submodules whose train/eval mode differs from the
  top level's (both ways round, with ``eval_mode`` on and off), and any model the attack holds;
* the caller's x untouched;
* every point the attack ever *queries* the model at lies inside the eps-ball and the bounds
  (not only the final output, which the base class projects anyway);
* hostile input refused with a ValueError naming the problem.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers.attacks import VARIANTS, accepts_target, build, models_held, needs_target, variant_ids, variants
from helpers.state import assert_same_state, assert_tensor_untouched, snapshot, snapshot_tensor
from robustlab import ThreatModel
from robustlab.attacks import ATTACKS
from robustlab.threat import NORMS

NAMES = sorted(ATTACKS)
K = 4  # classes
SHAPE = (1, 8, 8)
THREATS = {
    "linf": ThreatModel("linf", 0.1),
    "l2": ThreatModel("l2", 0.5, (-1.0, 1.0)),  # bounds other than [0, 1]: nothing may assume them
}
#: Every attack must support Linf and L2; a norm beyond those (L1) is checked for the attacks that
#: accept it (the others must refuse it with a ValueError naming the norm).
OPTIONAL_NORMS = {"l1": (2.0, (0.0, 1.0)), "l0": (3.0, (-1.0, 1.0))}
for _norm, (_eps, _bounds) in OPTIONAL_NORMS.items():
    if _norm in NORMS:
        THREATS[_norm] = ThreatModel(_norm, _eps, _bounds)
#: Attacks that do not support Linf or L2, with the reason.
UNSUPPORTED_NORMS: dict[tuple[str, str], str] = {
    ("sparse-rs", "linf"): "an L0 attack (pixel sets), no Linf or L2 form",
    ("sparse-rs", "l2"): "an L0 attack (pixel sets), no Linf or L2 form",
}


def home_threat(name: str) -> ThreatModel:
    """Linf for the tests that need one threat model; an attack without a Linf form gets its own
    norm (sparse-rs: L0, 3 pixels), with the same bounds (0, 1)."""
    if (name, "linf") not in UNSUPPORTED_NORMS:
        return THREATS["linf"]
    return ThreatModel("l0", 3.0)


class Net(nn.Module):
    """A tiny CNN on 1x8x8 inputs with BatchNorm, Dropout and nested submodules."""

    def __init__(self, seed: int = 0, classes: int = K) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.25)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.25), nn.Linear(8, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.drop(torch.relu(self.bn(self.conv(x))))))


def net(seed: int = 0) -> Net:
    """Non-trivial BatchNorm statistics, one frozen parameter, one stale .grad, eval mode."""
    model = Net(seed)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, *SHAPE))
    model.conv.weight.requires_grad_(False)
    model.head[4].weight.grad = torch.randn_like(model.head[4].weight)
    return model.eval()


def data(threat: ThreatModel, n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random images in the bounds (some pixels exactly on them), labels and targets != labels."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = threat.bounds
    x = lo + (hi - lo) * torch.rand(n, *SHAPE, generator=g)
    x[:, 0, 0, :2] = torch.tensor([lo, hi])
    y = torch.randint(0, K, (n,), generator=g)
    target = (y + 1 + torch.randint(0, K - 1, (n,), generator=g)) % K
    return x, y, target


def attack_for(name: str, threat: ThreatModel, variant: int = 0, wrap=None):
    def surrogate() -> nn.Module:
        s = net(seed=7)
        return s if wrap is None else wrap(s)

    return build(name, threat, variant, surrogate=surrogate)


def skip_unsupported(name: str, norm: str) -> None:
    if (name, norm) in UNSUPPORTED_NORMS:
        pytest.skip(UNSUPPORTED_NORMS[(name, norm)])
    if norm in OPTIONAL_NORMS:
        try:
            attack_for(name, THREATS[norm])
        except ValueError as e:
            assert norm in str(e).lower(), f"{name} refuses {norm} without naming the norm: {e}"
            pytest.skip(f"{name} does not support {norm}: {e}")


def check_examples(x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel, ball: bool = True) -> None:
    assert isinstance(x_adv, torch.Tensor)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert x_adv.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    assert bool(torch.isfinite(x_adv).all())
    lo, hi = threat.bounds
    assert float(x_adv.min()) >= lo and float(x_adv.max()) <= hi
    if not ball:  # eps_ball = False: only the bounds hold
        return
    dist = threat.distance(x_adv, x.detach())
    assert bool((dist <= threat.eps * (1 + 1e-5) + 1e-5).all()), dist


# --- registry -------------------------------------------------------------------------------------
def test_every_registered_attack_has_cheap_settings():
    missing = sorted(set(ATTACKS) - set(VARIANTS))
    assert not missing, f"registered attacks without cheap settings in tests/helpers/attacks.py: {missing}"
    stale = sorted(set(VARIANTS) - set(ATTACKS))
    assert not stale, f"cheap settings for attacks that are not registered: {stale}"
    assert all(VARIANTS[name] for name in VARIANTS)


# --- output, model state, caller's input ------------------------------------------------------------
@pytest.mark.parametrize("norm", list(THREATS))
@pytest.mark.parametrize("name", NAMES)
def test_contract(name, norm):
    skip_unsupported(name, norm)
    threat = THREATS[norm]
    model = net()
    x, y, target = data(threat)
    x.requires_grad_(True)  # a caller's leaf that requires grad: must not get a .grad
    attack = attack_for(name, threat)
    held = [(m, snapshot(m)) for m in models_held(attack)]
    before, saved_x = snapshot(model), snapshot_tensor(x)

    ball, must = attack.eps_ball, target if needs_target(attack) else None  # must: the target it needs
    x_adv = attack(model, x, y, target=must)
    check_examples(x_adv, x, threat, ball)
    res = attack.run(model, x, y, target=target if accepts_target(attack) else None)
    check_examples(res.x_adv, x, threat, ball)
    assert res.success.shape == (x.shape[0],) and res.success.dtype == torch.bool
    torch.testing.assert_close(res.distance, threat.distance(res.x_adv, x.detach()))
    if res.queries is not None:
        assert res.queries.shape == (x.shape[0],) and not res.queries.is_floating_point()
    # y=None: the model's own predictions are the labels
    check_examples(attack(model, x, target=must), x, threat, ball)
    if must is not None:
        with pytest.raises(ValueError, match="target"):
            attack(model, x, y)

    assert_same_state(model, before)
    for m, snap in held:
        assert_same_state(m, snap, what="a model the attack holds")
    assert_tensor_untouched(x, saved_x, "the caller's x")

    zero = attack_for(name, threat.with_eps(0.0))
    if ball:
        assert torch.equal(zero(model, x, y), x.detach())
    else:  # eps plays no role: the same examples at eps 0 (same seed)
        assert torch.equal(zero(model, x, y, target=must), attack_for(name, threat)(model, x, y, target=must))


# --- submodules in mixed train/eval modes ------------------------------------------------------------
def mixed(model: Net, layout: str) -> Net:
    if layout == "train, frozen BatchNorm and Dropout in eval":
        model.train()
        model.bn.eval()
        model.head[3].eval()
    else:  # "eval, Dropout and head in train"
        model.eval()
        model.drop.train()
        model.head.train()
    return model


@pytest.mark.parametrize("eval_mode", [True, False], ids=["eval_mode", "own_mode"])
@pytest.mark.parametrize("name", NAMES)
def test_mixed_train_eval_modes_come_back_exactly(name, eval_mode):
    """Restoring only the top-level mode (``model.train(top_mode)``) would flip these submodules."""
    threat = home_threat(name)
    x, y, target = data(threat)
    for layout in ("train, frozen BatchNorm and Dropout in eval", "eval, Dropout and head in train"):
        model = mixed(net(), layout)
        assert len({m.training for m in model.modules()}) == 2  # really mixed
        before = snapshot(model)
        attack = attack_for(name, threat)
        attack.eval_mode = eval_mode
        held = [(m, snapshot(m)) for m in models_held(attack)]
        attack.run(model, x, y, target=target if needs_target(attack) else None)
        assert_same_state(model, before, what=f"model ({layout}, eval_mode={eval_mode})")
        for m, snap in held:
            assert_same_state(m, snap, what="a model the attack holds")


# --- every query inside the ball ---------------------------------------------------------------------
class QueryRecorder(nn.Module):
    """Forwards to ``inner`` and keeps a copy of every input batch."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.detach().clone())
        return self.inner(x)


def nes_slack(attack, threat: ThreatModel, d: int) -> float:
    # probes at clip(x_t +- sigma * u), u ~ N(0, I): beyond the ball by sigma * |u|; 10 standard
    # deviations per coordinate (Linf), or sqrt(d) + 10 for the chi-distributed norm (L2), are
    # never exceeded in practice, while a missing projection of the iterate moves it by steps of
    # ``step_size`` (>= 0.1 eps).
    if threat.norm == "linf":
        return attack.sigma * 10.0
    if threat.norm == "l1":  # E|u_i| = sqrt(2/pi); the sum of d of them stays below d + 10 sqrt(d)
        return attack.sigma * (d + 10.0 * math.sqrt(d))
    return attack.sigma * (math.sqrt(d) + 10.0)


#: Attacks that legitimately query outside the eps-ball, and how far (None: the ball is not
#: checked at all, only the bounds).
OUTSIDE_BALL = {
    # C&W minimises ||x' - x||^2 + c f(x') over the whole box (tanh reparameterisation); eps
    # plays no role in the search, only in the final projection that ``run`` applies.
    "cw": lambda attack, threat, d: None,
    # NES estimates the gradient at the current iterate from antithetic probes x_t +- sigma u.
    "nes": nes_slack,
    # FAB, like C&W, minimises the norm: its iterates track the decision boundary inside the box,
    # wherever it is; only the returned points are held to eps (attacks/fab.py, "Within the
    # threat model").
    "fab": lambda attack, threat, d: None,
}


def assert_queries_inside(batches, x: torch.Tensor, threat: ThreatModel, slack: float | None, who: str) -> None:
    assert batches, f"{who} was never queried"
    lo, hi = threat.bounds
    flat_x = x.flatten(1)
    for i, b in enumerate(batches):
        assert b.shape[1:] == x.shape[1:], (who, i, b.shape)
        assert float(b.min()) >= lo - 1e-6 and float(b.max()) <= hi + 1e-6, f"{who}: query batch {i} leaves the bounds"
        if slack is None:
            continue
        # Attacks may forward any subset (early stop) or repetition (probes) of the rows: match
        # each queried row with its nearest original (the originals are > 2 (eps + slack) apart).
        diff = b.flatten(1)[:, None, :] - flat_x[None, :, :]
        if threat.norm == "linf":
            dist = diff.abs().amax(2)
        elif threat.norm == "l1":
            dist = diff.abs().sum(2)
        elif threat.norm == "l0":  # changed pixels (channels at one position): the data are (N, 1, H, W)
            assert x.shape[1] == 1, "the L0 branch counts coordinates as pixels: one-channel data only"
            dist = (diff != 0).sum(2).to(x.dtype)
        else:
            dist = diff.norm(dim=2)
        nearest = dist.min(1).values
        worst = float(nearest.max())
        assert worst <= threat.eps * (1 + 1e-5) + slack + 1e-5, (
            f"{who}: query batch {i} of {len(batches)} has a point {worst:.4g} from every original "
            f"(eps {threat.eps:g}, slack {slack:g})"
        )


@pytest.mark.parametrize("norm", list(THREATS))
@pytest.mark.parametrize("name, variant", variant_ids(), ids=[f"{n}-{i}" for n, i in variant_ids()])
def test_every_query_is_inside_the_ball_and_bounds(name, variant, norm):
    skip_unsupported(name, norm)
    variants(name)  # fails by name without cheap settings
    threat = THREATS[norm]
    x, y, target = data(threat, n=6)
    # soundness of the nearest-original matching: the balls (with any slack) are disjoint
    d = x[0].numel()
    pair = threat.distance(x[:, None].expand(-1, len(x), *SHAPE).flatten(0, 1), x[None].expand(len(x), -1, *SHAPE).flatten(0, 1))
    pair = pair.view(len(x), len(x)) + torch.eye(len(x)) * 1e9
    recorders: list[tuple[str, QueryRecorder]] = []

    def wrap(m: nn.Module) -> QueryRecorder:
        r = QueryRecorder(m)
        recorders.append(("the surrogate", r))
        return r

    attack = attack_for(name, threat, variant, wrap=wrap)
    rule = OUTSIDE_BALL.get(name)
    slack = 0.0 if rule is None else rule(attack, threat, d)
    if not attack.eps_ball:  # fooling images: only the bounds apply
        slack = None
    if slack is not None:
        assert float(pair.min()) > 2 * (threat.eps + slack), "originals too close for the matching"
    model = QueryRecorder(net())
    recorders.append(("the model", model))
    # a model that is easy to fool on some rows, so early stop really forwards subsets
    with torch.no_grad():
        pred = model.inner(x).argmax(1)
    y = torch.where(torch.arange(len(x)) % 2 == 0, pred, y)
    attack.run(model, x, y, target=target if needs_target(attack) else None)
    if accepts_target(attack):
        attack.run(model, x, y, target=target)
    for who, rec in recorders:
        assert_queries_inside(rec.batches, x, threat, slack, f"{name} (variant {variant}): {who}")


# --- hostile input -----------------------------------------------------------------------------------
def good(n: int = 3):
    x, y, _ = data(THREATS["linf"], n=n, seed=0)
    return x, y


BAD_X = {
    "uint8": (lambda x: (x * 255).to(torch.uint8), "dtype torch.uint8"),
    "float64": (lambda x: x.double(), "float64"),
    "int64": (lambda x: x.round().long(), "dtype torch.int64"),
    "nan": (lambda x: x.index_put_((torch.tensor([0]),), torch.tensor(float("nan"))), "NaN"),
    "one nan pixel": (
        lambda x: x.index_put_((torch.tensor([1]), torch.tensor([0]), torch.tensor([2]), torch.tensor([3])), torch.tensor(float("nan"))),
        "NaN",
    ),
    "inf": (lambda x: x.index_put_((torch.tensor([1]),), torch.tensor(float("inf"))), "NaN or infinite"),
    "empty": (lambda x: x[:0], "empty batch"),
    "no batch dim": (lambda x: x[0, 0, 0], "batch dimension"),
    "outside bounds": (lambda x: x * 3 - 1, "outside the threat model's bounds"),
    "just above bounds": (
        lambda x: x.index_put_((torch.tensor([2]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0])), torch.tensor(1.01)),
        "outside the threat model's bounds",
    ),
    "not a tensor": (lambda x: x.tolist(), "must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD_X))
@pytest.mark.parametrize("name", NAMES)
def test_bad_images_are_refused(name, case):
    x, y = good()
    make, message = BAD_X[case]
    bad = make(x.clone())
    model = net()
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        attack_for(name, home_threat(name))(model, bad, y if case != "empty" else y[:0])
    assert_same_state(model, before)


BAD_Y = {
    "float labels": (lambda y: y.float(), "int64"),
    "int32 labels": (lambda y: y.int(), "int64"),
    "wrong shape": (lambda y: y[:, None], r"shape \(3,\)"),
    "too short": (lambda y: y[:2], r"shape \(3,\)"),
    "too long": (lambda y: torch.cat([y, y[:1]]), r"shape \(3,\)"),
    "out of range": (lambda y: y + 10, "outside"),
    "one past the last class": (lambda y: torch.full_like(y, K), "outside"),
    "negative": (lambda y: y - 5, "outside"),
    "not a tensor": (lambda y: y.tolist(), "must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD_Y))
@pytest.mark.parametrize("name", NAMES)
def test_bad_labels_and_targets_are_refused(name, case):
    x, y = good()
    make, message = BAD_Y[case]
    attack = attack_for(name, home_threat(name))
    model = net()
    with pytest.raises(ValueError, match=message):
        attack(model, x, make(y.clone()))
    if accepts_target(attack):
        with pytest.raises(ValueError, match=message):
            attack(model, x, y, target=make(y.clone()))


class WrongOutput(nn.Module):
    def __init__(self, out: str) -> None:
        super().__init__()
        self.lin = nn.Linear(64, K)
        self.out = out

    def forward(self, x: torch.Tensor):
        z = self.lin(x.flatten(1))
        return {"flat": z.flatten(), "one class": z[:, :1], "3d": z[:, :, None], "tuple": (z,), "nan": z * float("nan")}[self.out]


@pytest.mark.parametrize("out", ["flat", "one class", "3d", "tuple", "nan"])
@pytest.mark.parametrize("name", NAMES)
def test_models_returning_the_wrong_thing_are_refused(name, out):
    x, y = good()
    with pytest.raises(ValueError, match="NaN or infinite logits" if out == "nan" else "logits"):
        attack_for(name, home_threat(name))(WrongOutput(out), x, y)


@pytest.mark.parametrize("name", NAMES)
def test_not_a_model_is_refused(name):
    x, y = good()
    with pytest.raises(ValueError, match="torch.nn.Module"):
        attack_for(name, home_threat(name))(lambda t: t, x, y)  # type: ignore[arg-type]
