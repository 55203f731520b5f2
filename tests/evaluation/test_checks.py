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
from robustlab.evaluation import evaluate
from robustlab.evaluation.checks import (
    check_blackbox,
    check_eps_monotonic,
    check_gradients,
    check_large_eps,
    check_more_iterations,
    check_noise,
    check_softmax_output,
    format_checks,
    run_checks,
    whitebox_robust_from_result,
)
from robustlab.evaluation.curves import eps_curve, iterations_curve

STATUSES = {"PASS", "WARN"}


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
    assert names == ["softmax-output", "randomised", "gradients", "eps-monotonic", "large-eps", "more-iterations", "black-box", "noise"]
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


# --- every check: a model built to trigger exactly its failure mode WARNs ------------------
# Probe data: 4x4 images at 0.5 (+-0.01), all of class 0 of 2, Linf eps 0.1. The probe models
# read the perturbation d = x - 0.5, so each can be built to fail in one precise way. (Measured
# robust accuracies are given per model; each WARN has a wide margin over its tolerance of 2%.)
C0 = 0.5
PROBE_T = ThreatModel("linf", 0.1)
PROBE_SCALE = 0.1  # 4 PGD steps, 20 x 3 for more-iterations, 100 Square queries, 1 noise draw


def probe_data(n: int = 100, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = C0 + (torch.rand(n, 1, 4, 4, generator=g) * 2 - 1) * 0.01
    return x, torch.zeros(n, dtype=torch.long)


class Probe(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (x - C0).flatten(1)
        l0, l1 = self.logits(d)
        return torch.stack([l0, l1], 1)


class Insensitive(Probe):
    """large-eps: class 0 wins by 6 logits whatever the input (tiny, non-zero gradient): no
    budget changes the prediction. Measured: 100% robust at eps 0.5."""

    def logits(self, d):
        return 6 + 0.01 * d.sum(1), torch.zeros_like(d[:, 0])


class RisingWithEps(Probe):
    """eps-monotonic: the wrong class wins when the mean shift exceeds 0.07, unless some pixel
    moved more than 0.15, where the output is flat and correct. PGD at 2x eps starts (random
    start) in that flat region and never moves. Measured under PGD: 100% / 0% / 100% at
    eps 0.05 / 0.1 / 0.2."""

    def logits(self, d):
        far = d.abs().amax(1) > 0.15
        return torch.zeros_like(d[:, 0]), torch.where(far, torch.full_like(d[:, 0], -10.0), 50 * (d.mean(1) - 0.07))


class LuckyStart(Probe):
    """more-iterations: the attackable region opens only where pixel 0 is above 0.5; elsewhere the
    gradient pushes pixel 0 down. One random start finds it for about half of the samples, three
    restarts for about 7 in 8. Measured: 58% robust to PGD (4 steps), 16% to 20 steps x 3
    restarts."""

    def logits(self, d):
        gate = d[:, 0] > 0
        return 0.1 * d[:, 0], torch.where(gate, 40 * (d.mean(1) - 0.05), torch.full_like(d[:, 0], -5.0))


class Shattered(Probe):
    """black-box: the output is quantised (round to 1e-3), so the input gradient is zero
    everywhere and PGD never moves; the wrong class wins when the mean shift exceeds 0.05, which
    Square, reading outputs only, finds. Measured: PGD 100% robust, Square (100 queries) 0%."""

    def logits(self, d):
        q = torch.round(d.mean(1) * 1000) / 1000
        return torch.zeros_like(d[:, 0]), 40 * (q - 0.05)


class NoiseBreaks(Probe):
    """noise: the wrong class wins when most pixels moved by (nearly) the full eps, as random
    signs do; the gradient (of the correct logit, 2 + |d|^2) points back to the clean image, so
    PGD walks away. Measured: PGD 100% robust, one draw of random signs 0%."""

    def logits(self, d):
        frac = (d.abs() > 0.09).float().mean(1)
        return 2 + (d**2).sum(1), 8 * (frac - 0.5)


def _tiny_xy(n: int = 100):
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = tiny()(x).argmax(1)
    return x, y


def _run_single(name: str, model: nn.Module, x, y) -> dict:
    t, s = PROBE_T, PROBE_SCALE
    if name == "softmax-output":
        return check_softmax_output(model, x)
    if name == "gradients":
        return check_gradients(model, x, y)
    if name == "eps-monotonic":
        return check_eps_monotonic(model, x, y, t, scale=s)  # the curve computed by PGD
    if name == "large-eps":
        return check_large_eps(model, x, y, t, scale=s)
    if name == "more-iterations":
        return check_more_iterations(model, x, y, t, scale=s)
    if name == "black-box":
        return check_blackbox(model, x, y, t, scale=s)
    if name == "noise":
        return check_noise(model, x, y, t, scale=s)
    raise AssertionError(name)


# check -> (the model that must make it WARN, the data, the value that shows why)
TRIGGERS = {
    "softmax-output": (lambda: Softmaxed(tiny()), _tiny_xy, ("probability_like_fraction", 1.0)),
    "gradients": (lambda: NaNGrad(), _tiny_xy, ("nonfinite_fraction", 1.0)),
    "eps-monotonic": (RisingWithEps, probe_data, ("robust_accuracy", [1.0, 0.0, 1.0])),
    "large-eps": (Insensitive, probe_data, ("robust_accuracy", 1.0)),
    "more-iterations": (LuckyStart, probe_data, None),
    "black-box": (Shattered, probe_data, ("combined_accuracy", 0.0)),
    "noise": (NoiseBreaks, probe_data, ("combined_accuracy", 0.0)),
}


@pytest.mark.parametrize("name", list(TRIGGERS))
def test_each_check_warns_on_the_model_built_to_fail_it(name):
    factory, data, expected = TRIGGERS[name]
    x, y = data()
    model = factory().eval()
    c = _run_single(name, model, x, y)
    assert c["name"] == name
    assert c["status"] == "WARN", c
    if expected is not None:
        key, value = expected
        assert c["values"][key] == pytest.approx(value), c
    if name == "more-iterations":
        # restarts break far more than the 2% tolerance: about 4 in 10 samples
        assert c["values"]["newly_broken"] >= 25 and c["values"]["stronger_accuracy"] <= c["values"]["reference_accuracy"] - 0.25, c
    # run_checks reports the same verdict for this check (the same seeds and budgets)
    together = {c2["name"]: c2 for c2 in run_checks(model, x, y, PROBE_T, scale=PROBE_SCALE)} if data is probe_data else None
    if together is not None:
        assert together[name]["status"] == "WARN", together[name]


def test_probe_models_are_correct_on_clean_data():
    x, y = probe_data()
    for cls in (Insensitive, RisingWithEps, LuckyStart, Shattered, NoiseBreaks):
        with torch.no_grad():
            assert torch.equal(cls()(x).argmax(1), y), cls.__name__


@pytest.mark.parametrize("name", list(TRIGGERS))
def test_each_check_passes_on_a_clean_model(name, digits_model, digits):
    """The session's standard digits CNN (about 44% robust at eps 0.1 under PGD) passes every check
    (measured: 0 samples newly broken by restarts, Square or noise; large-eps leaves 0%)."""
    _, _, x, y = digits
    x, y = x[:100], y[:100]
    t = PROBE_T
    if name in ("softmax-output", "gradients"):
        c = _run_single(name, digits_model, x, y)
    else:
        c = {"eps-monotonic": lambda: check_eps_monotonic(digits_model, x, y, t, scale=0.25),
             "large-eps": lambda: check_large_eps(digits_model, x, y, t, scale=0.25),
             "more-iterations": lambda: check_more_iterations(digits_model, x, y, t, scale=0.25),
             "black-box": lambda: check_blackbox(digits_model, x, y, t, scale=0.25),
             "noise": lambda: check_noise(digits_model, x, y, t, scale=0.25)}[name]()
    assert c["status"] == "PASS", c


def test_run_checks_on_a_clean_model_all_pass_with_informative_values(digits_model, digits):
    _, _, x, y = digits
    checks = run_checks(digits_model, x[:100], y[:100], PROBE_T, scale=0.25)
    assert_well_formed(checks)
    assert all(c["status"] == "PASS" for c in checks), format_checks(checks)
    v = {c["name"]: c["values"] for c in checks}
    accs = v["eps-monotonic"]["robust_accuracy"]
    assert accs[0] > accs[1] > accs[2] and accs[0] - accs[2] >= 0.5, accs  # a real curve, not flat
    assert v["large-eps"]["robust_accuracy"] <= 0.05
    assert v["more-iterations"]["reference_accuracy"] == pytest.approx(accs[1])
    assert format_checks(checks).startswith("all 8 gradient-masking checks PASS")


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
    assert [c["steps"] for c in it] == [1, 5]
    # each point is exactly what the same attack gives when evaluated on its own (same seed) ...
    for c in it:
        own_eval = evaluate(digits_model, x, y, t, [PGD(t, steps=c["steps"], seed=0)])
        assert c["robust_accuracy"] == own_eval.robust_accuracy and c["clean_accuracy"] == own_eval.clean_accuracy
    # ... and more steps break more samples (measured: 55% -> 44%): an iterations curve that
    # ignored the step count, or fell back to the clean accuracy, fails here
    assert it[1]["robust_accuracy"] <= it[0]["robust_accuracy"] - 0.03, it
    assert it[0]["robust_accuracy"] < it[0]["clean_accuracy"]
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
    more = next(c for c in checks if c["name"] == "more-iterations")
    assert more["values"]["reference_accuracy"] == pytest.approx(res.robust_accuracy)


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
