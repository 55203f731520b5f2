"""Conv-channel visualisations (robustlab.evaluation.visual_channels) on the session's digits CNN."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.state import assert_same_state, snapshot
from robustlab.evaluation.visual_channels import last_conv_layer, maximise_channels


def _channel_means(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """(N, K): every channel's mean activation of ``layer`` for images ``x`` (a hook of its own)."""
    got = []
    h = model.get_submodule(layer).register_forward_hook(lambda _m, _a, out: got.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return got[0].mean((2, 3))


def test_ascent_lifts_every_channel_far_above_the_start_and_any_real_image(digits, digits_model):
    _, _, xte, _ = digits
    assert last_conv_layer(digits_model) == "features.1.0"
    res = maximise_channels(digits_model, (1, 8, 8), channels=range(16), steps=64)
    assert res.layer == "features.1.0" and res.channels == list(range(16))
    assert res.images.shape == (16, 1, 8, 8)
    assert float(res.images.min()) >= 0 and float(res.images.max()) <= 1
    # the activations reported are those of the images returned and of the grey start, measured here
    ch = torch.arange(16)
    after = _channel_means(digits_model, res.layer, res.images)[ch, ch]
    start = _channel_means(digits_model, res.layer, torch.full((1, 1, 8, 8), 0.5))[0, :16]
    assert torch.allclose(res.activation, after, atol=1e-5) and torch.allclose(res.start_activation, start, atol=1e-5)
    # far above the grey start, and above the best of all 450 test images, channel by channel
    assert bool((after > start + 0.3).all()), (after - start)
    best_real = _channel_means(digits_model, res.layer, xte)[:, :16].max(0).values
    assert bool((after > best_real).all()), (after - best_real)


def test_first_conv_layer_reaches_its_closed_form_maximum(digits_model):
    """The first conv is linear in the pixels (no normalisation layer), so its channel mean is
    maximised in the box by a pixel at 1 where its coefficient is positive, at 0 otherwise."""
    conv = digits_model.features[0][0]
    res = maximise_channels(digits_model, (1, 8, 8), "features.0.0", channels=[0, 5, 11], steps=64)
    for i, k in enumerate([0, 5, 11]):
        # d mean / d pixel: the transposed convolution of a uniform 1/64 map with the filter
        coef = F.conv_transpose2d(torch.full((1, 1, 8, 8), 1 / 64), conv.weight[k : k + 1].detach(), padding=1)[0]
        best = float((coef * (coef > 0)).sum() + conv.bias[k].detach())
        assert float(res.activation[i]) == pytest.approx(best, abs=1e-3)
        assert float(res.activation[i]) <= best + 1e-5


def test_model_is_left_as_found(digits_model):
    model = copy.deepcopy(digits_model).train()
    model.classifier[4].weight.grad = torch.full_like(model.classifier[4].weight, 0.5)
    model.features[1][0].bias.requires_grad_(False)
    before = snapshot(model)
    res = maximise_channels(model, (1, 8, 8), n_channels=3, steps=5, start="noise", seed=3)
    assert_same_state(model, before)
    assert res.channels == [0, 1, 2] and res.meta["start"] == "noise"


def test_noise_start_is_seeded(digits_model):
    a = maximise_channels(digits_model, (1, 8, 8), channels=[1], steps=1, lr=1e-6, start="noise", seed=1)
    b = maximise_channels(digits_model, (1, 8, 8), channels=[1], steps=1, lr=1e-6, start="noise", seed=1)
    c = maximise_channels(digits_model, (1, 8, 8), channels=[1], steps=1, lr=1e-6, start="noise", seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert float((a.images - 0.5).abs().max()) <= 0.1 + 1e-5 and float(a.images.std()) > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"layer": "nope"}, "no submodule 'nope'"),
    ({"channels": [32]}, "has 32 channels; channel 32 does not exist"),
    ({"channels": [1, 1]}, "distinct"),
    ({"channels": []}, "distinct"),
    ({"channels": [-1]}, "channel must be an integer >= 0"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"lr": 0}, "lr must be > 0"),
    ({"start": "white"}, "start must be one of"),
    ({"shape": (8, 8)}, r"shape must be the input's \(C, H, W\)"),
    ({"layer": "classifier.1"}, r"needs \(N, K, H, W\)"),
])
def test_bad_arguments(digits_model, kwargs, match):
    args = {"shape": (1, 8, 8), "steps": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        maximise_channels(digits_model, **args)


def test_a_model_without_convolutions_is_refused():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        maximise_channels(mlp, (1, 8, 8))
