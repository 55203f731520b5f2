"""Hostile input to the public API: each case gets a ValueError naming the problem, never a
silent wrong answer or a traceback from deep inside torch (property-based where it pays).

The per-attack refusals (bad images, labels, targets, model outputs) are checked for every
registered attack in ``test_contract.py``; this file keeps the rest."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robustlab
from helpers.attacks import build, eps_ball_names
from robustlab import ThreatModel
from robustlab.attacks import ATTACKS, is_adversarial


def tiny_model(classes=4, channels=1, side=6):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(channels * side * side, classes))


def good(n=3):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


NAMES = eps_ball_names()


def threat_for(name, eps=0.1, norm="linf") -> ThreatModel:
    """``ThreatModel(norm, eps)``; for an L0-only attack (sparse-rs) L0 with eps rounded up to whole
    pixels (0 stays 0, 1e3 is more pixels than the images have)."""
    if norm not in ATTACKS[name].norms and "l0" in ATTACKS[name].norms:
        return ThreatModel("l0", float(math.ceil(eps)))
    return ThreatModel(norm, eps)


def attack(name, eps=0.1, norm="linf"):
    """The registered attack with its cheap settings (tests/helpers/attacks.py)."""
    return build(name, threat_for(name, eps, norm), surrogate=lambda: tiny_model())


def test_not_a_model_and_eps_and_norm():
    x, y = good()
    with pytest.raises(ValueError, match="torch.nn.Module"):
        attack("pgd")(lambda t: t, x, y)
    for eps in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            ThreatModel("linf", eps)
    with pytest.raises(ValueError, match="unknown norm"):
        ThreatModel("l3", 0.1)
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


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
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
    t = threat_for(name, eps, norm)
    before = x.clone()
    x_adv = attack(name, eps, norm)(tiny_model(), x, y)
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
    """NaN logits at perturbed points (never at the clean ones): every attack returns finite
    examples inside the ball, and ``run`` counts a NaN-logit example as a success (no valid
    prediction there), exactly as ``is_adversarial`` on the returned points says."""
    x, y = good(8)
    x = x * 0.9
    model = NaNAway()
    x_adv = attack(name)(model, x, y)
    assert bool(torch.isfinite(x_adv).all())
    assert threat_for(name).contains(x_adv, x).all()
    res = attack(name).run(model, x, y)
    assert bool(torch.isfinite(res.x_adv).all())
    with torch.no_grad():
        logits = model(res.x_adv)
    assert torch.equal(res.success, is_adversarial(logits, y, None))
