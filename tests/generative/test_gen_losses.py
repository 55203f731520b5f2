"""The G/D costs against closed forms (Goodfellow's tutorial notation, D = sigmoid(logit))."""

from __future__ import annotations

import math

import pytest
import torch

from robustlab.generative.losses import (
    GAN_LOSSES,
    cycle_consistency_loss,
    discriminator_loss,
    generator_loss,
    margin_adversarial_loss,
    perturbation_hinge,
    smoothed_targets,
)

HALF = torch.zeros(16)  # logit 0: D(x) = 0.5 everywhere


def test_discriminator_cost_is_log2_when_d_is_one_half():
    """J(D) = -1/2 E log D(x) - 1/2 E log(1 - D(G(z))) = log 2 at D = 1/2."""
    for loss in ("non-saturating", "minimax"):
        assert discriminator_loss(HALF, HALF, loss).item() == pytest.approx(math.log(2), abs=1e-7)


def test_generator_costs_at_one_half():
    """Minimax: J(G) = -J(D)'s G term = 1/2 log(1 - 1/2) = -1/2 log 2; non-saturating: -1/2 log(1/2) = 1/2 log 2."""
    assert generator_loss(HALF, "minimax").item() == pytest.approx(-0.5 * math.log(2), abs=1e-7)
    assert generator_loss(HALF, "non-saturating").item() == pytest.approx(0.5 * math.log(2), abs=1e-7)


def test_minimax_is_minus_the_discriminator_cost_in_its_generator_term():
    """J(G) = -J(D): the minimax generator cost equals minus the fake half of J(D) for any logits."""
    fake = torch.linspace(-6, 6, 25)
    fake_half_of_jd = 0.5 * torch.nn.functional.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    assert generator_loss(fake, "minimax").item() == pytest.approx(-fake_half_of_jd.item(), rel=1e-6)


def _grad_wrt_logit(loss: str, d_value: float) -> float:
    logit = torch.tensor([math.log(d_value / (1 - d_value))], requires_grad=True)
    generator_loss(logit, loss).backward()
    return float(logit.grad)


def test_minimax_saturates_and_non_saturating_does_not_when_d_rejects_samples():
    """At D(G(z)) = 1e-4 the minimax gradient is -D/2 (vanishes), the non-saturating one -(1-D)/2."""
    d = 1e-4
    assert _grad_wrt_logit("minimax", d) == pytest.approx(-0.5 * d, rel=1e-3)
    assert _grad_wrt_logit("non-saturating", d) == pytest.approx(-0.5 * (1 - d), rel=1e-4)
    assert abs(_grad_wrt_logit("non-saturating", d)) > 1000 * abs(_grad_wrt_logit("minimax", d))


def test_one_sided_smoothing_touches_only_real_labels():
    real, fake = torch.randn(8), torch.randn(8)
    t_real, t_fake = smoothed_targets(real, fake, 0.9)
    assert torch.all(t_real == 0.9) and torch.all(t_fake == 0)
    # The fake half of the cost is the same with and without smoothing; the real half moves to BCE(0.9).
    for loss in ("non-saturating", "minimax", "least-squares"):
        fake_only = discriminator_loss(real, fake, loss, 0.9) - discriminator_loss(real, fake, loss, 1.0)
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        if loss == "least-squares":
            expected = 0.5 * ((real - 0.9).pow(2).mean() - (real - 1).pow(2).mean())
        else:
            expected = 0.5 * (bce(real, torch.full_like(real, 0.9)) - bce(real, torch.ones_like(real)))
        assert fake_only.item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError, match="label smoothing"):
        smoothed_targets(real, fake, 0.3)


def test_least_squares_and_hinge_closed_forms():
    r, f = torch.full((4,), 0.25), torch.full((4,), -0.5)
    assert discriminator_loss(r, f, "least-squares").item() == pytest.approx(0.5 * (0.75**2 + 0.25))
    assert generator_loss(f, "least-squares").item() == pytest.approx(0.5 * 1.5**2)
    assert discriminator_loss(r, f, "hinge").item() == pytest.approx(0.75 + 0.5)
    assert generator_loss(f, "hinge").item() == pytest.approx(0.5)


def test_unknown_loss_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="wasserstein.*non-saturating"):
        generator_loss(HALF, "wasserstein")
    assert set(GAN_LOSSES) == {"non-saturating", "minimax", "least-squares", "hinge"}


def test_cycle_hinge_and_margin_losses():
    x = torch.rand(3, 1, 4, 4)
    assert cycle_consistency_loss(x, x).item() == 0.0
    delta = torch.zeros(2, 1, 2, 2)
    delta[0] = 1.0  # L2 norm 2
    assert perturbation_hinge(delta, 1.5).item() == pytest.approx(0.25)
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 5.0, 1.0]])
    y = torch.tensor([0, 0])
    # gaps Z_y - max_other: 2 and -5, floored at -kappa
    assert margin_adversarial_loss(logits, y).item() == pytest.approx((2.0 + 0.0) / 2)
    assert margin_adversarial_loss(logits, y, kappa=1.0).item() == pytest.approx((2.0 - 1.0) / 2)
