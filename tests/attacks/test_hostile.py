"""Hostile input to the public API: each case gets a ValueError naming the problem, never a
silent wrong answer or a traceback from deep inside torch (property-based where it pays)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robustlab
from robustlab import ThreatModel
from robustlab.attacks import ATTACKS, build_attack

torch.set_num_threads(1)


def tiny_model(classes=4, channels=1, side=6):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(channels * side * side, classes))


def good(n=3):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


FAST = {"pgd": {"steps": 2}, "mim": {"steps": 2}, "cw": {"steps": 2, "binary_search_steps": 1}}
for extra in ("apgd", "nes", "square"):
    FAST[extra] = {"apgd": {"steps": 2}, "nes": {"steps": 1, "samples": 4}, "square": {"queries": 5}}[extra]
NAMES = sorted(n for n in ATTACKS if n != "transfer")


def attack(name, eps=0.1, norm="linf"):
    return build_attack(name, ThreatModel(norm, eps), **FAST.get(name, {}))


BAD_X = {
    "uint8": (lambda x: (x * 255).to(torch.uint8), "dtype torch.uint8"),
    "float64": (lambda x: x.double(), "float64"),
    "nan": (lambda x: x.index_put_((torch.tensor([0]),), torch.tensor(float("nan"))), "NaN"),
    "inf": (lambda x: x.index_put_((torch.tensor([1]),), torch.tensor(float("inf"))), "NaN or infinite"),
    "empty": (lambda x: x[:0], "empty batch"),
    "no batch dim": (lambda x: x[0, 0, 0], "batch dimension"),
    "outside bounds": (lambda x: x * 3 - 1, "outside the threat model's bounds"),
    "not a tensor": (lambda x: x.tolist(), "must be a torch.Tensor"),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", sorted(BAD_X))
def test_bad_images(name, case):
    x, y = good()
    make, message = BAD_X[case]
    bad = make(x.clone())
    with pytest.raises(ValueError, match=message):
        attack(name)(tiny_model(), bad, y if case != "empty" else y[:0])


BAD_Y = {
    "float labels": (lambda y: y.float(), "int64"),
    "int32 labels": (lambda y: y.int(), "int64"),
    "wrong shape": (lambda y: y[:, None], r"shape \(3,\)"),
    "too short": (lambda y: y[:2], r"shape \(3,\)"),
    "out of range": (lambda y: y + 10, "outside"),
    "negative": (lambda y: y - 5, "outside"),
    "not a tensor": (lambda y: y.tolist(), "must be a torch.Tensor"),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", sorted(BAD_Y))
def test_bad_labels_and_targets(name, case):
    x, y = good()
    make, message = BAD_Y[case]
    with pytest.raises(ValueError, match=message):
        attack(name)(tiny_model(), x, make(y.clone()))
    if name in ("fgsm", "pgd"):
        with pytest.raises(ValueError, match=message):
            attack(name)(tiny_model(), x, y, target=make(y.clone()))


class WrongShape(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.lin = torch.nn.Linear(36, 4)
        self.out = out

    def forward(self, x):
        z = self.lin(x.flatten(1))
        return {"flat": z.flatten(), "one class": z[:, :1], "3d": z[:, :, None], "tuple": (z,)}[self.out]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("out", ["flat", "one class", "3d", "tuple"])
def test_models_returning_the_wrong_thing(name, out):
    x, y = good()
    with pytest.raises(ValueError, match="logits"):
        attack(name)(WrongShape(out), x, y)


def test_not_a_model_and_eps_and_norm():
    x, y = good()
    with pytest.raises(ValueError, match="torch.nn.Module"):
        attack("pgd")(lambda t: t, x, y)
    for eps in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            ThreatModel("linf", eps)
    with pytest.raises(ValueError, match="unknown norm"):
        ThreatModel("l1", 0.1)
    with pytest.raises(ValueError, match="robustlab.ThreatModel"):
        robustlab.attacks.PGD({"norm": "linf", "eps": 0.1})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_tensors_on_different_devices():
    x, y = good()
    with pytest.raises(ValueError, match="is on"):
        attack("pgd")(tiny_model(), x.cuda(), y)


def test_meta_device_tensors_are_rejected_by_device_check():
    x, y = good()
    with pytest.raises(ValueError, match="is on meta"):
        from robustlab.validation import check_same_device

        check_same_device(tiny_model(), x=x.to("meta"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["fgsm", "fgv", "pgd", "mim", "noise"]),
    n=st.integers(1, 5),
    eps=st.sampled_from([0.0, 1e-6, 0.05, 0.5, 1e3]),
    norm=st.sampled_from(["linf", "l2"]),
    contiguous=st.booleans(),
)
def test_valid_edge_cases_give_valid_examples(name, n, eps, norm, contiguous):
    """Batch of one, eps 0 and huge, non-contiguous input: a valid answer, inside ball and bounds."""
    g = torch.Generator().manual_seed(n)
    base = torch.rand(n, 1, 6, 12, generator=g)
    x = base[..., ::2] if not contiguous else base[..., :6].contiguous()
    y = torch.randint(0, 4, (n,), generator=g)
    t = ThreatModel(norm, eps)
    before = x.clone()
    x_adv = build_attack(name, t, **FAST.get(name, {}))(tiny_model(), x, y)
    assert torch.equal(x, before)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert t.contains(x_adv, x, tol=1e-4).all()
    if eps == 0:
        assert torch.equal(x_adv, x)


def test_evaluate_rejects_bad_input():
    x, y = good()
    m = tiny_model()
    t = ThreatModel("linf", 0.1)
    with pytest.raises(ValueError, match="empty"):
        robustlab.evaluate(m, x, y, t, attacks=[])
    with pytest.raises(ValueError, match="unknown suite"):
        robustlab.evaluate(m, x, y, t, attacks="fastest")
    with pytest.raises(ValueError, match="uses threat"):
        robustlab.evaluate(m, x, y, t, attacks=[attack("fgsm", eps=0.2)])
    with pytest.raises(ValueError, match="outside"):
        robustlab.evaluate(m, x, y + 7, t, attacks=[attack("fgsm")])


class NaNAway(torch.nn.Module):
    """Finite logits at the clean inputs (all pixels <= 0.9 here); NaN wherever a pixel went above
    0.95, i.e. only at perturbed points; or NaN everywhere with ``always``."""

    def __init__(self, always: bool = False):
        super().__init__()
        self.inner, self.always = tiny_model(), always

    def forward(self, x):
        out = self.inner(x)
        nan = torch.full_like(out, float("nan"))
        if self.always:
            return nan
        return torch.where((x.flatten(1) > 0.95).any(1, keepdim=True), nan, out)


@pytest.mark.parametrize("name", NAMES)
def test_a_model_returning_nan_logits_is_refused(name):
    x, y = good()
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        attack(name)(NaNAway(always=True), x * 0.9, y)


def test_evaluate_refuses_nan_clean_logits_and_counts_nan_under_attack_as_broken():
    x = torch.full((8, 1, 6, 6), 0.9)
    model = NaNAway()
    with torch.no_grad():
        model.inner[1].bias[0] = 10.0  # class 0 wins: the class argmax reads off a NaN row
        y = model(x).argmax(1)  # clean accuracy 1: all finite, all correct
    assert bool((y == 0).all())
    threat = ThreatModel("linf", 0.1)
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        robustlab.evaluate(NaNAway(always=True), x, y, threat, [attack("fgsm")])
    # random signs of size 0.1 push about half the pixels to 1.0: NaN logits for every sample,
    # which is no valid prediction (argmax would read class 0 and might call it correct)
    res = robustlab.evaluate(model, x, y, threat, [attack("noise")])
    assert res.clean_accuracy == 1.0 and res.robust_accuracy == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_attacks_never_return_nan_examples(name):
    x, y = good(8)
    try:
        x_adv = attack(name)(NaNAway(), x * 0.9, y)
    except ValueError as e:  # a clear refusal is fine
        assert "non-finite examples" in str(e), e
        return
    assert bool(torch.isfinite(x_adv).all())
