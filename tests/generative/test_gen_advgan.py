"""AdvGAN: outputs in the ball and bounds, target model and generator untouched, training works."""

from __future__ import annotations

import pytest
import torch

from helpers.state import assert_same_state, snapshot
from robustlab import ThreatModel
from robustlab.generative.advgan import AdvGAN, AdvGanConfig, build_perturbation_generator, train_advgan
from robustlab.generative.checkpoint import load_network


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.1), ThreatModel("l2", 0.5, (-1.0, 1.0)), ThreatModel("l1", 2.0)])
def test_advgan_outputs_stay_in_the_ball_and_bounds_and_leave_models_alone(tiny_classifier, digits, threat):
    _, _, xte, yte = digits
    lo, hi = threat.bounds
    x = (lo + (hi - lo) * xte[:40]).clone()
    gen = build_perturbation_generator(channels=1, width=4, blocks=1, seed=0)
    tiny_classifier.train()
    first = next(tiny_classifier.parameters())
    first.grad = torch.ones_like(first)  # a stale .grad must survive
    before, gen_before = snapshot(tiny_classifier), snapshot(gen)
    x_copy = x.clone()
    attack = AdvGAN(threat, gen)
    res = attack.run(tiny_classifier, x, yte[:40])
    assert_same_state(tiny_classifier, before, "target model")
    assert_same_state(gen, gen_before, "generator")
    first.grad = None
    tiny_classifier.eval()
    assert torch.equal(x, x_copy)
    assert res.x_adv.shape == x.shape and not res.x_adv.requires_grad
    assert bool(threat.contains(res.x_adv, x, tol=1e-5).all())
    if threat.norm == "linf":  # the generator's tanh saturates nowhere near 0: it perturbs
        assert float((res.x_adv - x).abs().max()) > 0


def test_trained_advgan_fools_the_tiny_classifier_and_reloads(tiny_classifier, digits, tmp_path):
    xtr, ytr, xte, yte = digits
    threat = ThreatModel("linf", 0.3)
    before = snapshot(tiny_classifier)
    cfg = AdvGanConfig(eps=0.3, epochs=2, batch_size=32, width=4, monitor_n=200)
    gen, history = train_advgan(tiny_classifier, xtr, ytr, cfg, xte, yte, run_dir=tmp_path / "gen", progress=False)
    assert_same_state(tiny_classifier, before, "target model")
    assert history[-1]["success_rate"] > 0.5, history
    reloaded = load_network(tmp_path / "gen", "generator")
    a, b = AdvGAN(threat, gen)(tiny_classifier, xte[:20], yte[:20]), AdvGAN(threat, tmp_path / "gen")(tiny_classifier, xte[:20], yte[:20])
    assert torch.equal(a, b)
    assert reloaded.robustlab_config["output"] == "perturbation"


def test_advgan_refuses_what_is_not_a_generator():
    with pytest.raises(ValueError, match="generator must be"):
        AdvGAN(ThreatModel("linf", 0.1), 3)  # type: ignore[arg-type]


def test_evaluate_builds_advgan_from_generator_and_refuses_it_without(tiny_classifier, digits, tmp_path):
    """``evaluate --attacks advgan --generator GEN`` (evaluation_attack with the generator as a
    resource) gives the same examples as the attack built by hand; without it, and ``transfer``
    without a surrogate, is a ValueError naming the missing option."""
    from robustlab.runs.evaluate import evaluation_attack

    xtr, ytr, xte, yte = digits
    threat = ThreatModel("linf", 0.3)
    cfg = AdvGanConfig(eps=0.3, epochs=1, batch_size=32, width=4, monitor_n=50)
    train_advgan(tiny_classifier, xtr[:200], ytr[:200], cfg, xte, yte, run_dir=tmp_path / "gen", progress=False)
    built = evaluation_attack("advgan", threat, steps=7, resources={"generator": tmp_path / "gen", "surrogate": None})
    assert isinstance(built, AdvGAN)
    assert torch.equal(built(tiny_classifier, xte[:20], yte[:20]), AdvGAN(threat, tmp_path / "gen")(tiny_classifier, xte[:20], yte[:20]))
    with pytest.raises(ValueError, match="advgan attack needs --generator"):
        evaluation_attack("advgan", threat)
    with pytest.raises(ValueError, match="transfer attack needs --surrogate"):
        evaluation_attack("transfer", threat, resources={"generator": tmp_path / "gen"})
