"""The notes' optimisation attack (``mse-penalty``): its squared-error term against a closed form,
measured effects on a small trained digits CNN (it flips predictions where noise of the same size
does not, larger ``lam`` gives smaller perturbations, targeted runs reach the target far more often
than chance), and early stop changing only the cost. The registry-wide contract (ball, bounds,
model state, hostile input) is checked in ``test_contract.py``."""

from __future__ import annotations

import pytest
import torch

from helpers.state import assert_same_state, snapshot
from robustlab import ThreatModel
from robustlab.attacks import ATTACKS, MSEPenalty, Noise, build_attack
from robustlab.attacks.mse_penalty import softmax_mse_objective, softmax_squared_error

LINF = ThreatModel("linf", 0.1)


@pytest.fixture(scope="module")
def batch(digits, digits_model):
    """100 digits test images the model classifies correctly."""
    _, _, x, y = digits
    with torch.no_grad():
        ok = digits_model(x).argmax(1) == y
    return x[ok][:100], y[ok][:100]


def predictions(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def test_squared_error_matches_closed_forms():
    k = 10
    # equal logits: p = 1/k everywhere, 0.5 * ((1 - 1/k)^2 + (k - 1) / k^2) = 0.5 * (k - 1) / k
    flat = torch.zeros(3, k)
    cls = torch.tensor([0, 4, 9])
    torch.testing.assert_close(softmax_squared_error(flat, cls), torch.full((3,), 0.5 * (k - 1) / k))
    # a (numerically) one-hot softmax: 0 at its own class, 0.5 * (1 + 1) = 1 at any other
    sharp = torch.tensor([[0.0, 100.0, 0.0]])
    torch.testing.assert_close(softmax_squared_error(sharp, torch.tensor([1])), torch.zeros(1))
    torch.testing.assert_close(softmax_squared_error(sharp, torch.tensor([2])), torch.ones(1))
    # the attack minimises: toward the target, away from y when untargeted
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    y, t = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1, 2, 3, 0, 2])
    torch.testing.assert_close(softmax_mse_objective(z, y, t), softmax_squared_error(z, t))
    torch.testing.assert_close(softmax_mse_objective(z, y, None), -softmax_squared_error(z, y))


def test_registered_and_options_checked():
    assert ATTACKS["mse-penalty"] is MSEPenalty and MSEPenalty.eps_ball and not MSEPenalty.needs_target
    a = build_attack("MSE-penalty", LINF, steps=7, lam=0.5, lr=0.02)
    assert (a.steps, a.lam, a.lr) == (7, 0.5, 0.02)
    for bad, match in (({"lam": -0.1}, "lam"), ({"lr": 0.0}, "lr"), ({"steps": 0}, "steps"), ({"lam": float("nan")}, "lam")):
        with pytest.raises(ValueError, match=match):
            MSEPenalty(LINF, **bad)


def test_it_flips_predictions_and_a_larger_lam_gives_smaller_perturbations(digits_model, batch):
    x, y = batch
    before = snapshot(digits_model)
    noise_flips = float((predictions(digits_model, Noise(LINF, seed=0)(digits_model, x, y)) != y).float().mean())
    flips, sizes = [], []
    for lam in (0.0, 0.05, 1.0):
        res = MSEPenalty(LINF, steps=30, lam=lam).run(digits_model, x, y)
        pred = predictions(digits_model, res.x_adv)
        assert torch.equal(res.success, pred != y)  # success as measured independently
        flips.append(float((pred != y).float().mean()))
        sizes.append(float((res.x_adv - x).flatten(1).norm(dim=1).mean()))
    assert_same_state(digits_model, before)
    # lam = 0 (only the ball limits it): a measurable share flipped, far beyond same-size noise
    assert flips[0] >= 0.25 and flips[0] >= noise_flips + 0.2, (flips, noise_flips)
    # the closeness term works: each larger lam gives a strictly smaller mean L2 perturbation
    assert sizes[0] > sizes[1] > sizes[2] > 0, sizes
    assert flips[2] <= flips[0]


def test_targeted_reaches_the_target_far_more_often_than_chance(digits_model, batch):
    x, y = batch
    k = 10
    target = (y + 1 + torch.arange(len(y)) % (k - 1)) % k  # every other class, never y
    threat = ThreatModel("linf", 0.2)
    res = MSEPenalty(threat, steps=50, lr=0.03, lam=0.01).run(digits_model, x, y, target=target)
    pred = predictions(digits_model, res.x_adv)
    assert torch.equal(res.success, pred == target)
    reached = float((pred == target).float().mean())
    # chance: a uniformly random class hits the target 1 time in k; clean, the model never predicts it
    assert float((predictions(digits_model, x) == target).float().mean()) == 0.0
    assert reached >= 2.0 / k, reached


class Counting(torch.nn.Module):
    """Counts forward passes of the model it wraps."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def test_early_stop_changes_the_cost_not_the_successes(digits_model, batch):
    """Samples are independent (eval mode, per-coordinate Adam), and a successful best point is
    never replaced by an unsuccessful one: freezing succeeded samples keeps the same success set,
    and a batch that is all fooled early stops early."""
    x, y = batch
    steps = 15
    full = MSEPenalty(LINF, steps=steps, lam=0.01).run(digits_model, x[:40], y[:40])
    early = MSEPenalty(LINF, steps=steps, lam=0.01, early_stop=True).run(digits_model, x[:40], y[:40])
    assert torch.equal(full.success, early.success)
    fooled = full.success.nonzero().squeeze(1)
    assert len(fooled) >= 5
    # those samples fall within `steps` + 1 iterates, so with twice the budget the run ends early:
    # 1 probe + at most `steps` + 2 passes, where the full budget costs 1 + 2 * steps + 1
    counting = Counting(digits_model)
    res = MSEPenalty(LINF, steps=2 * steps, lam=0.01, early_stop=True).run(counting, x[:40][fooled], y[:40][fooled])
    assert bool(res.success.all())
    assert counting.calls <= steps + 3, counting.calls
