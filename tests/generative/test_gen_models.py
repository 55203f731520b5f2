"""Network shapes, conditioning, and virtual batch normalisation's independence of the batch."""

from __future__ import annotations

import pytest
import torch

from robustlab.generative.models import VirtualBatchNorm, build_network


@pytest.mark.parametrize("channels,side", [(1, 28), (3, 32), (1, 8)])
def test_dcgan_shapes_and_bounds(channels, side):
    g = build_network("dcgan-generator", seed=0, latent_dim=8, channels=channels, image_size=side, width=4)
    d = build_network("dcgan-discriminator", seed=1, channels=channels, image_size=side, width=4)
    with torch.no_grad():
        x = g(torch.randn(5, 8))
    assert x.shape == (5, channels, side, side) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert d(x).shape == (5,)


def test_conditional_networks_need_labels_and_use_them():
    g = build_network("dcgan-generator", seed=0, latent_dim=4, image_size=8, width=4, num_classes=3).eval()
    d = build_network("dcgan-discriminator", seed=1, image_size=8, width=4, num_classes=3)
    z = torch.randn(2, 4)
    with pytest.raises(ValueError, match="needs labels"):
        g(z)
    a, b = g(z, torch.tensor([0, 0])), g(z, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)
    assert d(a, torch.tensor([0, 1])).shape == (2,)
    assert g.code(z, torch.tensor([2, 0])).shape == (2, 7)


def test_virtual_batchnorm_makes_each_sample_independent_of_its_batch():
    g = build_network("dcgan-generator", seed=0, latent_dim=8, image_size=8, width=4, norm="virtual", n_ref=16).train()
    z = torch.randn(6, 8)
    alone = torch.cat([g(z[i : i + 1]) for i in range(6)])
    together = g(z)
    assert torch.allclose(alone, together, atol=1e-6)
    bn = build_network("dcgan-generator", seed=0, latent_dim=8, image_size=8, width=4).train()
    assert not torch.allclose(torch.cat([bn(z[i : i + 2]) for i in range(0, 6, 2)]), bn(z), atol=1e-4)


def test_virtual_batchnorm_normalises_the_reference_batch():
    vbn = VirtualBatchNorm(3)
    h = torch.randn(10, 3, 4, 4) * 5 + 2
    out = vbn(h, n_ref=10)
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.var((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


def test_build_network_refuses_unknown_names_and_options():
    with pytest.raises(ValueError, match="unknown network"):
        build_network("stylegan")
    with pytest.raises(ValueError, match="unknown option"):
        build_network("dcgan-generator", latent=3)
    with pytest.raises(ValueError, match="multiple of 4"):
        build_network("dcgan-generator", image_size=30)


def test_image_to_image_outputs():
    img = build_network("image-to-image", seed=0, width=4, blocks=1, output="image")
    pert = build_network("image-to-image", seed=0, width=4, blocks=1, output="perturbation")
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert img(x).shape == x.shape and float(img(x).min()) >= 0
        assert float(pert(x).abs().max()) <= 1
        assert build_network("patch-discriminator", width=4)(x).shape == (2, 1, 7, 7)
    deep = build_network("image-to-image", width=4, blocks=0, downsamplings=2)
    with pytest.raises(ValueError, match="divisible by 4"):
        deep(torch.rand(1, 1, 10, 10))
