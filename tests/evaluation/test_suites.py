"""Named suites (evaluation/suites.py): ``autoattack`` is AutoAttack's ``version='standard'``, with
every budget stated in the results JSON."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from robustlab import ThreatModel
from robustlab.attacks import APGD, FAB, Square
from robustlab.evaluation.evaluate import evaluate
from robustlab.evaluation.suites import SUITES, build_suite


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_autoattack_is_autoattacks_standard_version(norm, eps):
    threat = ThreatModel(norm, eps)
    ce, apgd_t, fab_t, square = build_suite("autoattack", threat)
    # APGD-CE: 100 iterations, 1 restart, untargeted cross-entropy, rho 0.75
    assert type(ce) is APGD and (ce.steps, ce.restarts, ce.targeted_classes) == (100, 1, 0)
    assert ce.loss_name == "ce" and ce.rho == 0.75 and ce.name == "apgd-ce"
    # APGD-T: targeted DLR, 9 target classes x 100 iterations, 1 restart each
    assert type(apgd_t) is APGD and (apgd_t.steps, apgd_t.restarts, apgd_t.targeted_classes) == (100, 1, 9)
    assert apgd_t.loss_name == "dlr" and apgd_t.rho == 0.75
    # FAB-T: 9 target classes x 100 iterations, 1 restart, the reference's alpha_max / eta / beta
    assert type(fab_t) is FAB and (fab_t.steps, fab_t.restarts, fab_t.targeted_classes) == (100, 1, 9)
    assert (fab_t.alpha_max, fab_t.eta, fab_t.beta, fab_t.final_search) == (0.1, 1.05, 0.9, 0)
    assert fab_t.name == "fab-t"
    # Square: 5,000 queries, 1 restart, p_init 0.8, margin loss, schedule not rescaled
    assert type(square) is Square and (square.queries, square.restarts, square.p_init) == (5000, 1, 0.8)
    assert square.loss_name == "margin" and square.rescale_schedule is False
    assert all(a.threat == threat for a in (ce, apgd_t, fab_t, square))


def test_standard_stays_the_fast_default_and_scale_shrinks_only_steps_and_queries():
    threat = ThreatModel("linf", 0.1)
    ce, t3, sq = build_suite("standard", threat)
    assert (ce.steps, t3.targeted_classes, sq.queries, sq.rescale_schedule) == (100, 3, 1000, True)
    small = build_suite("autoattack", threat, scale=0.01)
    assert [getattr(a, "steps", getattr(a, "queries", None)) for a in small] == [1, 1, 1, 50]
    assert [getattr(a, "targeted_classes", None) for a in small] == [0, 9, 9, None]
    assert "autoattack" in SUITES
    with pytest.raises(ValueError, match="unknown suite"):
        build_suite("auto-attack", threat)


def test_every_budget_is_in_the_results_json():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    x = torch.rand(12, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    threat = ThreatModel("linf", 0.05)
    res = evaluate(model, x, y, threat, build_suite("autoattack", threat, scale=0.02))
    d = json.loads(res.to_json(per_sample=False))
    assert list(d["attacks"]) == ["apgd-ce", "apgd-t-dlr", "fab-t", "square"]
    settings = {k: v["settings"] for k, v in d["attacks"].items()}
    assert "steps=2" in settings["apgd-ce"] and "restarts=1" in settings["apgd-ce"]
    assert "targeted_classes=9" in settings["apgd-t-dlr"] and "loss=dlr" in settings["apgd-t-dlr"]
    assert "targeted_classes=9" in settings["fab-t"] and "steps=2" in settings["fab-t"]
    assert "queries=100" in settings["square"] and "p_init=0.8" in settings["square"]
    assert "rescale_schedule=False" in settings["square"]
    assert d["robust_accuracy"] <= d["clean_accuracy"]


def test_squares_schedule_can_stay_on_absolute_iterations_as_autoattack():
    from robustlab.attacks.square import p_schedule

    # AutoAttack's standard Square (resc_schedule=False): p halves at iterations 10, 50, 200, ...
    # of the 10,000-iteration schedule whatever the budget, so 5,000 queries end at p_init / 128
    assert p_schedule(0.8, 4500, 5000, rescale=False) == 0.8 / 128
    assert p_schedule(0.8, 100, 5000, rescale=False) == 0.8 / 4
    assert p_schedule(0.8, 4500, 5000) == 0.8 / 512  # rescaled: 4500/5000 -> 9000/10000
    with pytest.raises(ValueError, match="rescale_schedule"):
        Square(ThreatModel("linf", 0.1), rescale_schedule="no")  # type: ignore[arg-type]
