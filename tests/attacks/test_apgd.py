"""APGD (Auto-PGD, untargeted and APGD-T) and the suites built on it.

* (the contract -- ball, bounds, dtype, model state, input untouched, same seed same result --
  for APGD-CE, APGD-DLR and APGD-T with and without early stop: test_contract.py and
  test_attacks_properties.py, through the cheap variants in tests/helpers/attacks.py);
* the checkpoint schedule and the analytic optimum on a linear model;
* real Fashion-MNIST: APGD-CE is at least as strong as PGD at the same step count, the suite's
  per-sample worst case is consistent with every single attack, and a standard model is (nearly)
  never robust under the scaled-down standard suite.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab import ThreatModel
from robustlab.attacks.apgd import APGD, checkpoints
from robustlab.attacks.pgd import PGD
from robustlab.evaluation import evaluate, run_attack
from robustlab.evaluation.suites import SUITES, build_suite


def test_targeted_classes_refuses_an_explicit_target():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    x = torch.rand(3, 1, 4, 4)
    with pytest.raises(ValueError, match="targeted_classes"):
        APGD(ThreatModel("linf", 0.1), steps=2, targeted_classes=2).run(model, x, target=torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"targeted_classes": -1}, "targeted_classes"),
        ({"rho": 1.5}, "rho"),
        ({"momentum": 0.0}, "momentum"),
        ({"loss": "nope"}, "unknown loss"),
    ],
)
def test_constructor_arguments_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        APGD(ThreatModel("linf", 0.1), **kwargs)


def test_names_follow_autoattack():
    t = ThreatModel("linf", 0.1)
    assert APGD(t).name == "apgd-ce"
    assert APGD(t, loss="dlr", targeted_classes=3).name == "apgd-t-dlr"


def test_dlr_with_too_few_classes_falls_back_to_margin():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x = torch.rand(3, 1, 2, 2)
    with pytest.warns(RuntimeWarning, match="margin"):
        res = APGD(ThreatModel("linf", 0.1), steps=3, loss="dlr", seed=0).run(model, x)
    assert ThreatModel("linf", 0.1).contains(res.x_adv, x).all()


# --- algorithm ------------------------------------------------------------------------------
def test_checkpoints_follow_the_reference_schedule():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 of 100 iterations (0-based indices)
    assert list(checkpoints(100)) == [21, 40, 56, 69, 79, 86, 92, 98]
    assert checkpoints(100)[21] == 22 and checkpoints(100)[98] == 6
    assert list(checkpoints(3)) == [0, 1, 2]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_reaches_the_analytic_optimum_on_a_linear_model(norm):
    """The true class wins by a margin no budget can overcome, so APGD returns its best-loss
    point; for a linear model the best CE point is x + eps * steepest(w_other - w_y)."""
    torch.manual_seed(0)
    d = 12
    w = torch.randn(d, dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2, dtype=torch.float64))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w, -w]))
        model[1].bias.copy_(torch.tensor([12.0, 0.0], dtype=torch.float64))
    x = torch.full((2, d), 0.5, dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    threat = ThreatModel(norm, 0.2 if norm == "linf" else 0.5)
    res = APGD(threat, steps=30, seed=0).run(model, x, y)
    direction = threat.steepest_direction((-2 * w).expand(2, d))
    optimum = threat.project(x + threat.eps * direction, x)
    assert torch.allclose(res.x_adv, optimum, atol=1e-6)


def test_early_stop_gives_the_same_success(digits_model, digits):
    _, _, x, y = digits
    x, y = x[:120], y[:120]
    t = ThreatModel("linf", 0.08)
    full = APGD(t, steps=10, seed=3).run(digits_model, x, y)
    es = APGD(t, steps=10, seed=3, early_stop=True).run(digits_model, x, y)
    assert torch.equal(full.success, es.success)


# --- real data ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fm(fmnist_subset):
    _, _, xte, yte, _ = fmnist_subset
    return xte[:300], yte[:300]


def test_apgd_ce_is_at_least_as_strong_as_pgd(fmnist_model, fm):
    x, y = fm
    t = ThreatModel("linf", 0.1)
    steps = 20
    pgd = run_attack(fmnist_model, x, y, PGD(t, steps=steps, seed=0, early_stop=True)).robust.float().mean()
    apgd = run_attack(fmnist_model, x, y, APGD(t, steps=steps, seed=0, early_stop=True)).robust.float().mean()
    assert float(apgd) <= float(pgd) + 0.005, (float(apgd), float(pgd))


def test_suite_worst_case_is_consistent_with_every_single_attack(fmnist_model, fm):
    x, y = fm[0][:150], fm[1][:150]
    t = ThreatModel("linf", 0.1)
    attacks = build_suite("standard", t, scale=0.05)
    res = evaluate(fmnist_model, x, y, t, attacks, cascade=False)
    assert [o.name for o in res.outcomes] == ["apgd-ce", "apgd-t-dlr", "square"]
    for attack, outcome in zip(attacks, res.outcomes):
        # no sample the attack broke is reported robust
        assert not bool((res.robust & ~outcome.robust).any()), outcome.name
        # and the in-suite outcome is exactly the attack run on its own
        attack.early_stop = True
        alone = run_attack(fmnist_model, x, y, attack)
        assert torch.equal(alone.robust, outcome.robust), outcome.name
    d = res.to_dict()
    assert d["per_sample"]["robust"] == res.robust.int().tolist()
    assert d["robust_accuracy"] <= min(d["per_attack"].values())


def test_standard_model_is_not_robust_under_the_standard_suite(fmnist_model, fm):
    x, y = fm[0][:200], fm[1][:200]
    t = ThreatModel("linf", 0.1)
    res = evaluate(fmnist_model, x, y, t, build_suite("standard", t, scale=0.2))
    assert res.clean_accuracy > 0.8
    # Not 0: the strongest attacks we have (APGD 100 steps x 5 restarts, APGD-T over all 9
    # targets, PGD 200 steps x 5 restarts, Square 3000 queries, and torchattacks' APGD/APGD-T)
    # all leave the same ~8% of this small CNN's first 300 test images robust at eps 0.1.
    assert res.robust_accuracy <= 0.12, res.per_attack
    t2 = ThreatModel("linf", 0.15)
    assert evaluate(fmnist_model, x, y, t2, build_suite("standard", t2, scale=0.1)).robust_accuracy <= 0.05


def test_suites_scale_and_validate():
    t = ThreatModel("l2", 1.0)
    assert {"quick", "standard", "full"} <= set(SUITES)  # suites of their own are tested in tests/evaluation
    quick = build_suite("quick", t)
    assert len(quick) == 1 and quick[0].steps == 20
    std = build_suite("standard", t, scale=0.1)
    assert [type(a).__name__ for a in std] == ["APGD", "APGD", "Square"]
    assert std[0].steps == 10 and std[1].targeted_classes == 3 and std[2].queries == 100
    full = build_suite("full", t)
    assert full[0].restarts > 1 and any(type(a).__name__ == "NES" for a in full)
    assert max(a.queries for a in full if hasattr(a, "queries")) == 5000
    assert build_suite("standard", t, scale=1e-6)[0].steps == 1
    for bad in (0, -1, float("nan"), "x"):
        with pytest.raises(ValueError, match="scale"):
            build_suite("quick", t, scale=bad)
    with pytest.raises(ValueError, match="unknown suite"):
        build_suite("nope", t)
