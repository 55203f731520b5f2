"""Black-box attacks: Square (score-based random search), NES (query-estimated gradients) and
Transfer (crafted on a surrogate).

* (the attack contract -- ball, bounds, dtype, model state, input untouched, same seed same
  result, images and flat inputs -- for every variant in tests/helpers/attacks.py:
  test_contract.py and test_attacks_properties.py);
* they never ask for a gradient of the target, count queries per sample, stop on success;
* real Fashion-MNIST: Square finds robust accuracy far below clean; NES does better than clean.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab import ThreatModel
from robustlab.attacks.nes import NES
from robustlab.attacks.pgd import PGD
from robustlab.attacks.square import Square, p_schedule
from robustlab.attacks.transfer import Transfer


class NoGradCheck(nn.Module):
    """Wraps a model and fails if it is ever called with autograd enabled."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled(), "a black-box attack ran the target with autograd on"
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 2.0)])
@pytest.mark.parametrize("make", [lambda t: Square(t, queries=30, seed=0), lambda t: NES(t, steps=4, samples=6, seed=0)])
def test_only_outputs_are_used_and_queries_are_counted(norm, eps, make):
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    model = NoGradCheck(inner)
    x = torch.rand(12, 1, 8, 8)
    with torch.no_grad():
        pred = inner(x).argmax(1)
    y = pred.clone()
    y[:3] = (pred[:3] + 1) % 5  # three samples already misclassified: never attacked
    attack = make(ThreatModel(norm, eps))
    assert attack.uses_gradients is False
    res = attack.run(model, x, y)
    q = res.queries
    assert q is not None and q.shape == (12,) and q.dtype == torch.long
    assert torch.equal(q[:3], torch.zeros(3, dtype=torch.long))
    assert bool(res.success[:3].all())
    per_round = attack.samples + 1 if isinstance(attack, NES) else 1
    budget = attack.queries if isinstance(attack, Square) else attack.steps * per_round
    assert bool((q[3:] >= 1).all()) and bool((q <= budget).all())
    # a sample that is still correct after the attack used the whole budget
    assert bool((q[3:][~res.success[3:]] == budget).all())


def test_square_schedule_and_square_sizes():
    assert p_schedule(0.8, 0, 10000) == 0.8
    assert p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 9000, 10000) == 0.8 / 512
    assert p_schedule(0.8, 100, 1000) == 0.8 / 16  # rescaled to the budget: 100/1000 -> 1000/10000


def test_square_linf_candidates_sit_on_the_ball_vertices():
    """Linf Square only ever visits vertices of the ball (clipped to the bounds)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 3)).eval()
    x = 0.25 + 0.5 * torch.rand(4, 3, 6, 6)
    t = ThreatModel("linf", 0.1)
    res = Square(t, queries=50, seed=1).run(model, x)
    d = (res.x_adv - x).abs()
    assert torch.allclose(d, torch.full_like(d, 0.1), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"queries": 0}, "queries"), ({"p_init": 0.0}, "p_init"), ({"p_init": 1.5}, "p_init"), ({"restarts": 0}, "restarts")],
)
def test_square_arguments_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Square(ThreatModel("linf", 0.1), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"samples": 3}, "even"), ({"samples": 0}, "samples"), ({"sigma": 0.0}, "sigma"), ({"steps": 0}, "steps")],
)
def test_nes_arguments_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NES(ThreatModel("linf", 0.1), **kwargs)


def test_transfer_validates_and_loads_a_checkpoint(tmp_path):
    from robustlab.models import build_model
    from robustlab.storage import save_model

    t = ThreatModel("linf", 0.1)
    torch.manual_seed(0)
    sur = build_model("small-cnn", 10, 1, input_size=8, channels=(4, 8), hidden=16)
    with pytest.raises(ValueError, match="threat"):
        Transfer(t, sur, attack=PGD(ThreatModel("linf", 0.2)))
    with pytest.raises(ValueError, match="surrogate"):
        Transfer(t, "not a model")  # type: ignore[arg-type]
    save_model(sur, tmp_path / "sur")
    loaded = Transfer.from_checkpoint(t, tmp_path / "sur", seed=3)
    x = torch.rand(5, 1, 8, 8)
    target_model = build_model("small-cnn", 10, 1, input_size=8, channels=(4, 8), hidden=16).eval()
    a = loaded.run(target_model, x)
    b = Transfer(t, sur.eval(), seed=3).run(target_model, x)
    assert torch.equal(a.x_adv, b.x_adv)
    assert Transfer.uses_gradients is False


# --- real data ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fm(fmnist_subset):
    _, _, xte, yte, _ = fmnist_subset
    return xte[:200], yte[:200]


def test_transfer_from_the_model_itself_is_white_box_pgd(fmnist_model, fm):
    x, y = fm[0][:100], fm[1][:100]
    t = ThreatModel("linf", 0.1)
    via = Transfer(t, fmnist_model, attack=PGD(t, steps=10, seed=5)).run(fmnist_model, x, y)
    direct = PGD(t, steps=10, seed=5).run(fmnist_model, x, y)
    assert torch.equal(via.x_adv, direct.x_adv) and torch.equal(via.success, direct.success)


def test_square_breaks_a_standard_model(fmnist_model, fm):
    x, y = fm
    t = ThreatModel("linf", 0.1)
    with torch.no_grad():
        clean = float((fmnist_model(x).argmax(1) == y).float().mean())
    res = Square(t, queries=1000, seed=0).run(fmnist_model, x, y)
    robust = float((~res.success).float().mean())
    assert clean > 0.8
    assert robust <= clean - 0.5, (clean, robust)  # measured ~0.15 vs ~0.87
    broken = res.success & (fmnist_model(x).argmax(1) == y)
    assert float(res.queries[broken].float().median()) < 300  # most fall early


def test_square_l2_and_nes_beat_clean_accuracy(fmnist_model, fm):
    x, y = fm[0][:60], fm[1][:60]
    with torch.no_grad():
        clean = float((fmnist_model(x).argmax(1) == y).float().mean())
    sq = Square(ThreatModel("l2", 2.0), queries=200, seed=0).run(fmnist_model, x, y)
    assert float((~sq.success).float().mean()) <= clean - 0.3
    nes = NES(ThreatModel("linf", 0.1), steps=8, samples=40, seed=0).run(fmnist_model, x, y)
    assert float((~nes.success).float().mean()) <= clean - 0.1
