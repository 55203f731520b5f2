"""Code arithmetic and unrestricted adversarial examples on tiny networks."""

from __future__ import annotations

import pytest
import torch

from helpers.state import assert_same_state, snapshot
from robustlab.generative.arithmetic import code_arithmetic
from robustlab.generative.models import build_network
from robustlab.generative.unrestricted import unrestricted_search


def test_code_arithmetic_decodes_c1_minus_c2_plus_c3():
    g = build_network("dcgan-generator", seed=0, latent_dim=4, image_size=8, width=4).eval()
    c = [torch.randn(2, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    res = code_arithmetic(g, (c[0], c[1], c[2]), n_neighbours=3)
    with torch.no_grad():
        expected = g.decode((c[0].mean(0) - c[1].mean(0) + c[2].mean(0))[None])
    assert torch.allclose(res.result[:1], expected, atol=1e-6)
    assert res.result.shape == (4, 1, 8, 8) and res.concepts.shape == (3, 1, 8, 8) and res.chosen.shape == (3, 2, 1, 8, 8)
    with pytest.raises(ValueError, match="three non-empty groups"):
        code_arithmetic(g, (c[0], c[1]))  # type: ignore[arg-type]


def test_unrestricted_search_reports_rates_and_leaves_models_alone(tiny_classifier):
    g = build_network("dcgan-generator", seed=0, latent_dim=8, image_size=8, width=4, num_classes=10).eval()
    second = build_network("dcgan-discriminator", image_size=8, width=4)  # any module with logits would do
    before_g, before_f = snapshot(g), snapshot(tiny_classifier)
    res = unrestricted_search(g, tiny_classifier, source=3, target=None, n=8, steps=20, lr=0.05, eps_z=0.5)
    assert_same_state(g, before_g, "generator")
    assert_same_state(tiny_classifier, before_f, "classifier")
    s = res.summary
    assert s["n"] == 8 and 0 <= s["success_rate"] <= 1 and res.x_adv.shape == (8, 1, 8, 8)
    fooled = res.pred_adv != 3
    assert float(fooled.float().mean()) == pytest.approx(s["success_rate"])
    with pytest.raises(ValueError, match="class-conditional"):
        unrestricted_search(build_network("dcgan-generator", image_size=8, width=4), tiny_classifier, 3)
    with pytest.raises(ValueError, match="must differ"):
        unrestricted_search(g, tiny_classifier, 3, target=3)
    del second
