"""The state helper notices every kind of change it promises to (and nothing else)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers.state import assert_same_state, assert_tensor_untouched, snapshot, snapshot_tensor


def model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(8, 3)))
    m[0].weight.requires_grad_(False)
    m[2][2].weight.grad = torch.ones_like(m[2][2].weight)
    return m.train()


CHANGES = {
    "nested submodule mode": lambda m: m[2][1].eval(),
    "top-level mode only": lambda m: setattr(m, "training", False),
    "parameter value": lambda m: m[0].bias.data.add_(1e-7),
    "parameter replaced": lambda m: setattr(m[0], "bias", nn.Parameter(m[0].bias.detach().clone())),
    "parameter layout": lambda m: setattr(
        m[0].weight, "data", torch.empty_like(m[0].weight, memory_format=torch.channels_last).copy_(m[0].weight)
    ),
    "buffer value": lambda m: m[1].running_mean.add_(1.0),
    "num_batches_tracked": lambda m: m[1].num_batches_tracked.add_(1),
    "requires_grad flag": lambda m: m[0].weight.requires_grad_(True),
    "grad appears": lambda m: setattr(m[0].bias, "grad", torch.zeros_like(m[0].bias)),
    "grad disappears": lambda m: setattr(m[2][2].weight, "grad", None),
    "grad value": lambda m: m[2][2].weight.grad.mul_(2),
    "hook left behind": lambda m: m[1].register_forward_hook(lambda *a: None),
    "buffer added": lambda m: m[1].register_buffer("extra", torch.zeros(1)),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_change_is_reported(change):
    m = model()
    before = snapshot(m)
    assert_same_state(m, before)  # nothing changed yet
    CHANGES[change](m)
    with pytest.raises(AssertionError):
        assert_same_state(m, before)


def test_a_forward_in_eval_mode_changes_nothing():
    m = model().eval()
    before = snapshot(m)
    with torch.no_grad():
        m(torch.rand(2, 1, 4, 4))
    assert_same_state(m, before)


def test_tensor_untouched():
    x = torch.rand(3, 4).requires_grad_(True)
    saved = snapshot_tensor(x)
    assert_tensor_untouched(x, saved)
    for change in (lambda t: t.data.add_(1), lambda t: setattr(t, "grad", torch.zeros_like(t)), lambda t: t.requires_grad_(False)):
        y = x.detach().clone().requires_grad_(True)
        saved = snapshot_tensor(y)
        change(y)
        with pytest.raises(AssertionError):
            assert_tensor_untouched(y, saved)
    z = torch.tensor([float("nan"), 1.0])
    assert_tensor_untouched(z, snapshot_tensor(z))  # NaN equals NaN here
