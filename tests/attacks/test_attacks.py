"""Attacks: closed forms on linear models, restarts / early stop, CW, constructor checks, registry.

The contract every registered attack keeps (output, model state, bad input) is checked in
``test_contract.py``.

Self-contained (synthetic data, models trained here in well under a second); the real-data
strength tests live elsewhere.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.state import assert_same_state, assert_tensor_untouched, snapshot, snapshot_tensor
from robustlab import ThreatModel
from robustlab.attacks import ATTACKS, CW, FGSM, FGV, MIM, PGD, Attack, Noise, build_attack

BIG = (-10.0, 10.0)  # bounds far away: closed forms are not disturbed by clipping


# --- helpers ------------------------------------------------------------------------------------
def linear_model(d: int, k: int, seed: int = 0, dtype=torch.float64) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g, dtype=dtype))
        lin.bias.copy_(torch.randn(k, generator=g, dtype=dtype) * 0.1)
    return nn.Sequential(nn.Flatten(), lin)


def ce_input_grad(model: nn.Sequential, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Analytic grad_x CE(softmax(Wx+b), cls) = W^T (softmax(z) - onehot(cls)), per sample."""
    lin = model[1]
    z = x.flatten(1) @ lin.weight.T + lin.bias
    p = torch.softmax(z, dim=1) - F.one_hot(cls, z.shape[1]).to(z.dtype)
    return (p @ lin.weight).view_as(x)


def small_inputs(n=6, shape=(1, 3, 3), seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g, dtype=dtype) * 2 - 1


class ForwardCounter:
    """Counts forward calls and samples forwarded through a model."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        self.samples = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.calls += 1
        self.samples += inputs[0].shape[0]

    def remove(self) -> None:
        self.handle.remove()


@pytest.fixture(scope="module")
def blobs():
    """A tiny trained classifier on 3 Gaussian blobs of 1x4x4 'images' in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    k, d = 3, 16
    means = 0.25 + 0.5 * torch.rand(k, d, generator=g)

    def sample(n):
        y = torch.randint(0, k, (n,), generator=g)
        x = (means[y] + 0.12 * torch.randn(n, d, generator=g)).clamp(0, 1)
        return x.view(n, 1, 4, 4), y

    x_tr, y_tr = sample(600)
    x_te, y_te = sample(200)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, k))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x_tr), y_tr).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    with torch.no_grad():
        acc = (model(x_te).argmax(1) == y_te).float().mean().item()
    assert acc > 0.9
    return model, x_te, y_te


def tiny_bn_cnn(k=3) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, k)
    )


# --- closed forms -------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_matches_analytic_gradient(norm):
    model = linear_model(9, 4)
    x = small_inputs()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    eps = 0.1
    x_adv = FGSM(ThreatModel(norm, eps, BIG))(model, x, y)
    g = ce_input_grad(model, x, y)
    if norm == "linf":
        expected = eps * g.sign()
    else:
        expected = eps * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(x_adv - x, expected, rtol=1e-9, atol=1e-12)


def test_targeted_fgsm_moves_against_the_target_gradient():
    model = linear_model(9, 4)
    x = small_inputs()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    t = torch.tensor([1, 2, 3, 0, 3, 3])
    eps = 0.1
    x_adv = FGSM(ThreatModel("linf", eps, BIG))(model, x, y, target=t)
    expected = -eps * ce_input_grad(model, x, t).sign()
    torch.testing.assert_close(x_adv - x, expected, rtol=1e-9, atol=1e-12)
    # and it lowers CE(target)
    with torch.no_grad():
        assert (F.cross_entropy(model(x_adv), t, reduction="none") < F.cross_entropy(model(x), t, reduction="none")).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgv_matches_its_formula(norm):
    model = linear_model(9, 4)
    x = small_inputs()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    eps = 0.2
    x_adv = FGV(ThreatModel(norm, eps, BIG))(model, x, y)
    g = ce_input_grad(model, x, y).flatten(1)
    scale = g.abs().amax(1, keepdim=True) if norm == "linf" else g.norm(dim=1, keepdim=True)
    torch.testing.assert_close(x_adv - x, (eps * g / scale).view_as(x), rtol=1e-9, atol=1e-12)


def test_fgv_clips_to_bounds():
    model = linear_model(9, 4)
    x = (small_inputs() + 1) / 2  # in [0, 1]
    x_adv = FGV(ThreatModel("linf", 0.5))(model, x)
    assert x_adv.min() >= 0 and x_adv.max() <= 1


# (from a random start, L2 PGD only approaches the optimum asymptotically: not tested exactly)
@pytest.mark.parametrize("norm,random_start", [("linf", False), ("linf", True), ("l2", False)])
def test_pgd_reaches_the_analytic_optimum_on_a_binary_linear_model(norm, random_start):
    model = linear_model(9, 2, seed=4)
    w = model[1].weight
    x = small_inputs(n=5, seed=2)
    y = torch.zeros(5, dtype=torch.long)  # CE(y=0) increases along w1 - w0 everywhere
    eps = 0.3
    attack = PGD(ThreatModel(norm, eps, BIG), steps=12, rel_step_size=0.25, random_start=random_start, seed=0)
    x_adv = attack(model, x, y)
    w_diff = (w[1] - w[0]).view(1, 1, 3, 3)
    if norm == "l2":
        expected = x + eps * w_diff / w_diff.norm()
    else:
        expected = x + eps * w_diff.sign()
    torch.testing.assert_close(x_adv, expected.expand_as(x), rtol=1e-9, atol=1e-9)


def test_mim_on_a_binary_linear_model_is_a_signed_walk():
    model = linear_model(9, 2, seed=4)
    w_diff = (model[1].weight[1] - model[1].weight[0]).view(1, 1, 3, 3)
    x = small_inputs(n=5, seed=2)
    y = torch.zeros(5, dtype=torch.long)
    # 3 steps of eps/10 stay strictly inside the ball: the result is x + 0.3 eps sign(w_diff)
    x_adv = MIM(ThreatModel("linf", 0.5, BIG), steps=3, step_size=0.05, decay=0.7)(model, x, y)
    torch.testing.assert_close(x_adv, (x + 0.15 * w_diff.sign()).expand_as(x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", ["ce", "ce-difference"])
def test_targeted_pgd_reaches_the_target(loss):
    model = linear_model(9, 4, seed=5)
    x = small_inputs(n=8, seed=6)
    with torch.no_grad():
        pred = model(x).argmax(1)
    target = (pred + 1) % 4
    res = PGD(ThreatModel("linf", 3.0, BIG), steps=20, loss=loss, seed=0).run(model, x, target=target)
    assert res.success.all()
    with torch.no_grad():
        assert torch.equal(model(res.x_adv).argmax(1), target)


def test_ce_difference_without_target_is_an_error():
    model = linear_model(9, 4)
    with pytest.raises(ValueError, match="targeted"):
        PGD(ThreatModel("linf", 0.1, BIG), steps=2, loss="ce-difference")(model, small_inputs())


# --- restarts, early stop, cost -----------------------------------------------------------------
def test_restarts_are_never_worse_than_one_run(blobs):
    model, x, y = blobs
    threat = ThreatModel("linf", 0.08)
    one = PGD(threat, steps=3, restarts=1, seed=7).run(model, x, y)
    many = PGD(threat, steps=3, restarts=4, seed=7).run(model, x, y)
    assert not (one.success & ~many.success).any()
    assert 0 < one.success.sum() < len(y)  # the comparison is not vacuous


@pytest.mark.parametrize("norm,eps", [("linf", 0.08), ("l2", 0.3)])
def test_early_stop_same_accuracy_fewer_forwards(blobs, norm, eps):
    model, x, y = blobs
    threat = ThreatModel(norm, eps)
    counts, success = {}, {}
    for es in (False, True):
        counter = ForwardCounter(model)
        try:
            res = PGD(threat, steps=10, restarts=2, early_stop=es, seed=3).run(model, x, y)
        finally:
            counter.remove()
        counts[es], success[es] = counter, res.success
    assert 0.1 < success[False].float().mean() < 0.9
    assert success[True].sum() >= success[False].sum() - 1  # same up to float noise
    assert counts[True].samples < 0.8 * counts[False].samples
    # without early stop: a one-sample probe (number of classes) + restarts * (steps + final
    # score); PGD hands its measured success back, so no extra success check -- unless the final
    # projection moved a point by a rounding error (L2 rescaling), which forces one exact re-check
    assert counts[False].calls in (1 + 2 * (10 + 1), 1 + 2 * (10 + 1) + 1)
    if norm == "linf":
        assert counts[False].calls == 1 + 2 * (10 + 1)


def test_pgd_tracks_the_best_iterate(blobs):
    """A huge step overshoots; the best point seen is still returned (never worse than start)."""
    model, x, y = blobs
    threat = ThreatModel("linf", 0.08)
    zero_start = PGD(threat, steps=1, random_start=False).run(model, x, y)
    longer = PGD(threat, steps=5, random_start=False).run(model, x, y)
    assert not (zero_start.success & ~longer.success).any()


# --- CW -----------------------------------------------------------------------------------------
def test_cw_finds_closer_examples_than_fgsm(blobs):
    model, x, y = blobs
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    cw = CW(ThreatModel("l2", 1.0), steps=100, lr=0.05, binary_search_steps=6).minimal(model, x, y)
    assert cw.success.float().mean() >= 0.95
    assert torch.allclose(cw.distance[~cw.success], torch.zeros(1))
    assert torch.equal(cw.x_adv[~cw.success], x[~cw.success])
    assert torch.allclose(cw.distance, (cw.x_adv - x).flatten(1).norm(dim=1))
    fg = FGSM(ThreatModel("l2", 1.0)).run(model, x, y)
    both = cw.success & fg.success
    assert both.sum() >= 10
    assert cw.distance[both].median() < 0.9 * fg.distance[both].median()


def test_cw_never_fooled_returns_x_and_run_projects():
    lin = nn.Linear(9, 3)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    model = nn.Sequential(nn.Flatten(), lin)  # always predicts class 0
    x = (small_inputs(n=4, dtype=torch.float32) + 1) / 2
    y = torch.zeros(4, dtype=torch.long)
    res = CW(ThreatModel("l2", 0.5), steps=10, binary_search_steps=2).minimal(model, x, y)
    assert not res.success.any()
    assert torch.equal(res.x_adv, x) and torch.equal(res.distance, torch.zeros(4))

    blobs_model = linear_model(9, 3, dtype=torch.float32)
    r = CW(ThreatModel("l2", 0.05), steps=20, binary_search_steps=3).run(blobs_model, x)
    assert (r.distance <= 0.05 + 1e-6).all()


def test_cw_already_misclassified_points_are_distance_zero():
    model = linear_model(9, 3, dtype=torch.float32)
    x = (small_inputs(n=4, dtype=torch.float32) + 1) / 2
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 3
    res = CW(ThreatModel("l2", 1.0), steps=5, binary_search_steps=1).minimal(model, x, wrong)
    assert res.success.all() and torch.equal(res.x_adv, x)


# --- model state -------------------------------------------------------------------------------
# (``run`` and ``__call__`` of every registered attack: tests/attacks/test_contract.py)
def test_cw_minimal_leaves_a_bn_model_in_train_mode_exactly_as_found():
    model = tiny_bn_cnn()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 1, 6, 6))
    model[0].weight.requires_grad_(False)
    model[5].weight.grad = torch.randn_like(model[5].weight)
    before = snapshot(model)
    x = torch.rand(5, 1, 6, 6)
    saved_x = snapshot_tensor(x)
    CW(ThreatModel("linf", 0.1), steps=5, binary_search_steps=2).minimal(model, x)
    assert_same_state(model, before)
    assert_tensor_untouched(x, saved_x)


# --- constructor and threat-model checks -------------------------------------------------------
def test_threat_model_errors():
    with pytest.raises(ValueError, match="eps"):
        ThreatModel("linf", -0.1)
    with pytest.raises(ValueError, match="eps"):
        ThreatModel("linf", float("inf"))
    with pytest.raises(ValueError, match="unknown norm"):
        ThreatModel("l3", 0.1)
    with pytest.raises(ValueError, match="ThreatModel"):
        PGD("linf")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (PGD, {"steps": 0}, "steps"),
        (PGD, {"steps": 2.5}, "steps"),
        (PGD, {"restarts": 0}, "restarts"),
        (PGD, {"step_size": -0.1}, "step_size"),
        (PGD, {"step_size": float("nan")}, "step_size"),
        (PGD, {"rel_step_size": 0}, "rel_step_size"),
        (PGD, {"step_size": 0.1, "rel_step_size": 0.1}, "not both"),
        (PGD, {"loss": "nope"}, "unknown loss"),
        (MIM, {"decay": -1.0}, "decay"),
        (MIM, {"steps": 0}, "steps"),
        (CW, {"steps": 0}, "steps"),
        (CW, {"lr": 0.0}, "lr"),
        (CW, {"confidence": -1.0}, "confidence"),
        (CW, {"initial_const": 0.0}, "initial_const"),
        (CW, {"binary_search_steps": 0}, "binary_search_steps"),
        (FGSM, {"loss": "nope"}, "unknown loss"),
    ],
)
def test_constructor_arguments_are_validated(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(ThreatModel("linf", 0.1), **kwargs)


# --- registry -----------------------------------------------------------------------------------
def test_registry_and_build_attack():
    threat = ThreatModel("l2", 0.5)
    assert {"fgsm", "fgv", "pgd", "mim", "cw", "noise"} <= set(ATTACKS)
    for name, cls in ATTACKS.items():
        assert issubclass(cls, Attack)
        assert cls.name == name
    a = build_attack("PGD", threat, steps=7, rel_step_size=0.1, seed=1)
    assert isinstance(a, PGD) and a.steps == 7 and math.isclose(a.step_size, 0.05)
    assert PGD(threat, steps=10).step_size == pytest.approx(2.5 * 0.5 / 10)
    assert MIM(threat, steps=10).step_size == pytest.approx(0.05)
    assert Noise.uses_gradients is False and PGD.uses_gradients is True
    with pytest.raises(ValueError, match="unknown attack 'nope'.*fgsm"):
        build_attack("nope", threat)
    with pytest.raises(ValueError, match="stepz"):
        build_attack("pgd", threat, stepz=3)
    with pytest.raises(ValueError, match="decay"):
        build_attack("fgsm", threat, decay=1.0)


# --- noise --------------------------------------------------------------------------------------
def test_noise_has_full_size_and_is_seeded():
    model = linear_model(9, 3, dtype=torch.float32)
    x = small_inputs(dtype=torch.float32)
    linf = Noise(ThreatModel("linf", 0.2, BIG), seed=5)
    a, b = linf(model, x), linf(model, x)
    assert torch.equal(a, b)
    torch.testing.assert_close((a - x).abs(), torch.full_like(x, 0.2))
    l2 = Noise(ThreatModel("l2", 0.2, BIG), seed=5).run(model, x)
    torch.testing.assert_close(l2.distance, torch.full((6,), 0.2))
    assert not torch.equal(Noise(ThreatModel("linf", 0.2, BIG), seed=6)(model, x), a)


def _count_forwarded(model: nn.Module) -> list[int]:
    """Batch sizes of every forward pass through ``model`` (a hook on the top module)."""
    sizes: list[int] = []
    model.register_forward_hook(lambda _m, inp, _out: sizes.append(int(inp[0].shape[0])))
    return sizes


@pytest.mark.parametrize("steps", [1, 5])
def test_pgd_cost_in_forward_passes(steps):
    """The cost claims, counted: plain PGD called for examples only spends exactly k passes on
    the batch (plus a one-sample probe for the class count); best-point tracking adds one scoring
    pass; run() on plain PGD measures success with one pass on the returned points."""
    n = 7
    x, y = small_inputs(n=n, seed=3), torch.zeros(n, dtype=torch.long)
    threat = ThreatModel("linf", 0.2, BIG)
    cases = [
        (lambda m: PGD(threat, steps=steps, track_best=False, seed=0)(m, x, y), [1] + [n] * steps),
        (lambda m: PGD(threat, steps=steps, track_best=False, seed=0).run(m, x, y), [1] + [n] * (steps + 1)),
        (lambda m: PGD(threat, steps=steps, seed=0)(m, x, y), [1] + [n] * (steps + 1)),
        (lambda m: PGD(threat, steps=steps, seed=0).run(m, x, y), [1] + [n] * (steps + 1)),
    ]
    for call, expected in cases:
        model = linear_model(9, 3, seed=1)
        sizes = _count_forwarded(model)
        call(model)
        assert sizes == expected


def test_plain_pgd_returns_the_final_iterate_and_call_equals_run():
    """track_best=False is Madry's PGD: the last iterate, recomputed here step by step."""
    model = linear_model(9, 3, seed=5)
    x, y = small_inputs(n=6, seed=4), torch.tensor([0, 1, 2, 0, 1, 2])
    threat = ThreatModel("linf", 0.3, BIG)
    attack = PGD(threat, steps=4, rel_step_size=0.4, random_start=False, track_best=False)
    xa = x.clone()
    for _ in range(4):
        xa.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
        xa = torch.min(torch.max(xa.detach() + 0.12 * g.sign(), x - 0.3), x + 0.3)
    out = attack(model, x, y)
    torch.testing.assert_close(out, xa, rtol=0, atol=1e-12)
    res = attack.run(model, x, y)
    assert torch.equal(res.x_adv, out)
    assert torch.equal(res.success, model(out).argmax(1) != y)


class _ConvNet(nn.Module):
    def __init__(self, use_view: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, 4)
        self.use_view = use_view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        # .view needs a contiguous NCHW tensor: it fails on channels_last feature maps
        return self.fc(h.view(h.shape[0], -1) if self.use_view else h.flatten(1))


def test_channels_last_lever_leaves_the_model_and_layout_as_found():
    model = _ConvNet().train()
    before = {n: (p.data_ptr(), p.stride(), p.detach().clone()) for n, p in model.named_parameters()}
    x = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(5) % 4
    threat = ThreatModel("linf", 0.1)
    fast = PGD(threat, steps=3, seed=0)  # auto: CPU, 4-D input, Conv2d -> channels_last
    assert fast._wants_channels_last(model, x)
    slow = PGD(threat, steps=3, seed=0)
    slow.channels_last = False
    a, b = fast(model, x, y), slow(model, x, y)
    assert a.is_contiguous() and a.stride() == x.stride()
    # Same trajectory up to float reassociation inside the convolutions.
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for n, p in model.named_parameters():
        ptr, stride, value = before[n]
        assert (p.data_ptr(), p.stride()) == (ptr, stride) and torch.equal(p, value), n
    assert model.training


def test_channels_last_auto_falls_back_for_a_model_that_needs_nchw():
    model = _ConvNet(use_view=True).eval()
    x, y = torch.rand(4, 3, 6, 6), torch.arange(4)
    threat = ThreatModel("linf", 0.1)
    out = PGD(threat, steps=2, seed=0)(model, x, y)  # auto: falls back, no error
    forced_off = PGD(threat, steps=2, seed=0)
    forced_off.channels_last = False
    assert torch.equal(out, forced_off(model, x, y))
    forced_on = PGD(threat, steps=2, seed=0)
    forced_on.channels_last = True
    with pytest.raises(RuntimeError, match="view"):
        forced_on(model, x, y)
    assert all(p.is_contiguous() for p in model.parameters())


def test_eval_mode_false_with_labels_works_on_batchnorm1d():
    """With eval_mode=False a model with BatchNorm1d in train mode must be attackable with labels
    given (a one-sample class-count probe is illegal for BatchNorm1d in train mode), and its
    running statistics come back unchanged."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)).train()
    stats = [b.clone() for b in m.buffers()]
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    x_adv = PGD(ThreatModel("linf", 0.1), steps=2, eval_mode=False)(m, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert m.training and all(torch.equal(a, b) for a, b in zip(stats, m.buffers()))
