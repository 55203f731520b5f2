"""Gradient-masking checks, evaluate(checks=True), and the eps / iterations curves.

The required case: a Fashion-MNIST model whose logits are multiplied by 1e4 (float32 softmax
saturates, so the CE input gradient is exactly zero) looks robust to PGD-CE, while Square (which
only reads the outputs) breaks it and the checks raise WARNs.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from robustlab import ThreatModel
from robustlab.attacks.apgd import APGD
from robustlab.attacks.pgd import PGD
from robustlab.attacks.square import Square
from robustlab.evaluation.checks import (
    check_eps_monotonic,
    check_gradients,
    check_softmax_output,
    format_checks,
    run_checks,
    whitebox_robust_from_result,
)
from robustlab.evaluation.curves import eps_curve, iterations_curve
from robustlab.evaluation import evaluate

STATUSES = {"PASS", "WARN"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: small batches, and immune to a busy shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ScaledLogits(nn.Module):
    """Gradient masking by saturation: logits x 1e4 (predictions unchanged)."""

    def __init__(self, inner: nn.Module, scale: float = 1e4) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.scale


class Softmaxed(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).softmax(1)


def assert_well_formed(checks):
    names = [c["name"] for c in checks]
    assert names == ["softmax-output", "gradients", "eps-monotonic", "large-eps", "more-iterations", "black-box", "noise"]
    for c in checks:
        assert set(c) == {"name", "status", "evidence", "values"}
        assert c["status"] in STATUSES and isinstance(c["evidence"], str) and c["evidence"]
    json.dumps(checks)  # plain JSON


# --- individual checks on tiny models -----------------------------------------------------
def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()


def test_softmax_output_is_flagged():
    x = torch.rand(10, 1, 4, 4)
    assert check_softmax_output(tiny(), x)["status"] == "PASS"
    c = check_softmax_output(Softmaxed(tiny()), x)
    assert c["status"] == "WARN" and c["values"]["probability_like_fraction"] == 1.0


class NaNGrad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + torch.sqrt((x - x.detach()).abs()).flatten(1).sum(1, keepdim=True)  # inf * 0 = NaN


def test_gradient_check_counts_zero_and_nan_gradients():
    x = torch.rand(10, 1, 4, 4)
    with torch.no_grad():
        y = tiny()(x).argmax(1)
    ok = check_gradients(tiny(), x, y)
    assert ok["status"] == "PASS" and ok["values"]["zero_fraction"] == 0.0
    bad = check_gradients(NaNGrad(), x, y)
    assert bad["status"] == "WARN" and bad["values"]["nonfinite_fraction"] == 1.0


def test_eps_monotonic_from_a_given_curve():
    model, x = tiny(), torch.rand(4, 1, 4, 4)
    y = torch.zeros(4, dtype=torch.long)
    t = ThreatModel("linf", 0.1)
    down = [{"eps": 0.2, "robust_accuracy": 0.1}, {"eps": 0.1, "robust_accuracy": 0.4}, {"eps": 0.05, "robust_accuracy": 0.6}]
    assert check_eps_monotonic(model, x, y, t, curve=down)["status"] == "PASS"
    up = down + [{"eps": 0.3, "robust_accuracy": 0.5}]
    c = check_eps_monotonic(model, x, y, t, curve=up)
    assert c["status"] == "WARN" and c["values"]["eps"] == [0.05, 0.1, 0.2, 0.3]
    assert "rises" in c["evidence"]


def test_run_checks_validates_its_input():
    model, x = tiny(), torch.rand(4, 1, 4, 4)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="scale"):
        run_checks(model, x, y, ThreatModel("linf", 0.1), scale=0)
    with pytest.raises(ValueError, match="bounds"):
        run_checks(model, x + 2, y, ThreatModel("linf", 0.1))


# --- curves --------------------------------------------------------------------------------
def test_eps_and_iterations_curves(digits_model, digits):
    _, _, x, y = digits
    x, y = x[:100], y[:100]
    t = ThreatModel("linf", 0.1)
    curve = eps_curve(digits_model, x, y, t, [0.0, 0.05, 0.2], attacks="quick", scale=0.25)
    assert [c["eps"] for c in curve] == [0.0, 0.05, 0.2]
    assert curve[0]["robust_accuracy"] == pytest.approx(curve[0]["clean_accuracy"])
    accs = [c["robust_accuracy"] for c in curve]
    assert accs[0] >= accs[1] >= accs[2]
    assert set(curve[1]["per_attack"]) == {"apgd-ce"}
    own = eps_curve(digits_model, x, y, t, [0.1], attacks=lambda th: [PGD(th, steps=3, seed=0)])
    assert set(own[0]["per_attack"]) == {"pgd"}
    it = iterations_curve(digits_model, x, y, t, [1, 5], attack="pgd")
    assert [c["steps"] for c in it] == [1, 5] and all(0 <= c["robust_accuracy"] <= 1 for c in it)
    it2 = iterations_curve(digits_model, x, y, t, [2, 8], attack="apgd")
    assert it2[1]["robust_accuracy"] <= it2[0]["robust_accuracy"] + 0.02
    json.dumps(curve + it + it2)
    with pytest.raises(ValueError, match="attack"):
        iterations_curve(digits_model, x, y, t, [1], attack="cw")


# --- real data (after the tiny tests, so the shared model trains with one thread) ----------
@pytest.fixture(scope="module")
def fm(fmnist_subset):
    _, _, xte, yte, _ = fmnist_subset
    return xte[:120], yte[:120]


def test_masked_model_fools_pgd_but_not_square_or_the_checks(fmnist_model, fm):
    x, y = fm
    masked = ScaledLogits(fmnist_model).eval()
    t = ThreatModel("linf", 0.1)
    with torch.no_grad():
        clean = float((masked(x).argmax(1) == y).float().mean())
    pgd = float((~PGD(t, steps=10, seed=0).run(masked, x, y).success).float().mean())
    honest = float((~PGD(t, steps=10, seed=0).run(fmnist_model, x, y).success).float().mean())
    square = float((~Square(t, queries=300, seed=0).run(masked, x, y).success).float().mean())
    # PGD-CE overestimates: it barely moves the masked model, though the same attack breaks the
    # unmasked one (identical predictions); Square, reading outputs only, is not fooled.
    assert pgd >= clean - 0.05 and honest <= 0.3
    assert square <= pgd - 0.4, (clean, pgd, square)
    # APGD-DLR is scale invariant, so it is not fooled either
    dlr = float((~APGD(t, steps=10, loss="dlr", seed=0).run(masked, x, y).success).float().mean())
    assert dlr <= pgd - 0.4

    checks = run_checks(masked, x, y, t, scale=0.05)
    assert_well_formed(checks)
    status = {c["name"]: c["status"] for c in checks}
    assert status["gradients"] == "WARN"
    assert status["black-box"] == "WARN"
    assert status["softmax-output"] == "PASS"
    text = format_checks(checks)
    assert text.startswith("!!") and "!! WARN  gradients" in text


def test_evaluate_with_checks_fills_the_result_and_warns(fmnist_model, fm):
    x, y = fm[0][:80], fm[1][:80]
    masked = ScaledLogits(fmnist_model).eval()
    t = ThreatModel("linf", 0.1)
    with pytest.warns(RuntimeWarning, match="gradient-masking checks WARN"):
        res = evaluate(masked, x, y, t, [PGD(t, steps=5, seed=0)], checks=True, checks_scale=0.05)
    assert_well_formed(res.checks)
    d = json.loads(res.to_json())
    assert d["checks"] == res.checks
    assert {c["name"]: c["status"] for c in d["checks"]}["black-box"] == "WARN"


def test_standard_model_passes_the_masking_specific_checks(fmnist_model, fm):
    x, y = fm
    t = ThreatModel("linf", 0.1)
    res = evaluate(fmnist_model, x, y, t, [APGD(t, steps=20, seed=0)])
    checks = run_checks(fmnist_model, x, y, t, result=res, scale=0.1)
    assert_well_formed(checks)
    status = {c["name"]: c["status"] for c in checks}
    assert all(s == "PASS" for s in status.values()), format_checks(checks)
    assert checks[4]["values"]["reference_accuracy"] == pytest.approx(res.robust_accuracy)


def test_whitebox_reference_ignores_blackbox_outcomes(fmnist_model, fm):
    x, y = fm[0][:60], fm[1][:60]
    t = ThreatModel("linf", 0.1)
    res = evaluate(fmnist_model, x, y, t, [Square(t, queries=20, seed=0), PGD(t, steps=3, seed=0)], cascade=False)
    wb = whitebox_robust_from_result(res)
    assert torch.equal(wb, res.clean_correct & res.outcomes[1].robust)
    assert torch.equal(whitebox_robust_from_result(res, ["square"]), res.clean_correct & res.outcomes[0].robust)
    cascade = evaluate(fmnist_model, x, y, t, [Square(t, queries=20, seed=0), PGD(t, steps=3, seed=0)])
    # in cascade mode gradient attacks after a gradient-free one never saw what it broke
    assert torch.equal(whitebox_robust_from_result(cascade), cascade.clean_correct)
