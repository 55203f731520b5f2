"""Common corruptions (natural robustness): identity at severity 0, shapes and bounds kept,
reproducible, each doing what it says, and accuracy falling with Gaussian-noise severity."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robustlab.evaluation.corruptions import CORRUPTIONS, PARAMS, corrupt, corruption_accuracy, mean_corruption_accuracy

NAMES = list(CORRUPTIONS)


def images(n=6, c=1, h=12, w=12, lo=0.0, hi=1.0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, c, h, w, generator=g, dtype=dtype)


def test_registry_has_the_six_corruptions_with_five_severities():
    assert set(NAMES) == {"gaussian_noise", "gaussian_blur", "contrast", "brightness", "rotation", "shift"}
    assert all(len(PARAMS[n]) == 5 for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_the_identity(name):
    x = images()
    out = corrupt(x, name, 0)
    assert torch.equal(out, x) and out is not x


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bounds, c, dtype", [((0.0, 1.0), 1, torch.float32), ((-1.0, 1.0), 3, torch.float64)])
def test_shapes_bounds_and_input_are_kept(name, bounds, c, dtype):
    x = images(c=c, lo=bounds[0], hi=bounds[1], dtype=dtype)
    x_copy = x.clone()
    for sev in range(1, 6):
        out = corrupt(x, name, sev, bounds=bounds, seed=1)
        assert out.shape == x.shape and out.dtype == dtype
        assert float(out.min()) >= bounds[0] and float(out.max()) <= bounds[1]
        assert not torch.equal(out, x), (name, sev)
        assert torch.isfinite(out).all()
    assert torch.equal(x, x_copy)


@pytest.mark.parametrize("name", NAMES)
def test_reproducible_with_a_seed(name):
    x = images()
    assert torch.equal(corrupt(x, name, 3, seed=7), corrupt(x, name, 3, seed=7))
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    assert torch.equal(corrupt(x, name, 3, generator=g1), corrupt(x, name, 3, generator=g2))


def test_three_dimensional_images_and_pixelwise_flat_inputs():
    x = images()[:, 0]  # (N, H, W)
    assert corrupt(x, "rotation", 2, seed=0).shape == x.shape
    flat = images().flatten(1)
    for name in ("gaussian_noise", "contrast", "brightness"):
        assert corrupt(flat, name, 2, seed=0).shape == flat.shape
    with pytest.raises(ValueError, match="images"):
        corrupt(flat, "gaussian_blur", 2)


def test_bad_names_and_severities():
    x = images()
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog", 1)
    for bad in (-1, 6, 2.0, True):
        with pytest.raises(ValueError, match="severity"):
            corrupt(x, "contrast", bad)  # type: ignore[arg-type]
    assert torch.equal(corrupt(x, "Gaussian-Noise", 0), x)  # spelling is forgiving


def test_each_corruption_does_what_it_says():
    x = torch.full((2, 1, 15, 15), 0.2)
    x[:, :, 5:10, 5:10] = 0.8  # a bright square in the middle
    # noise: the spread grows with severity, zero mean
    sd = [float((corrupt(torch.full((4, 1, 32, 32), 0.5), "gaussian_noise", s, seed=0) - 0.5).std()) for s in (1, 5)]
    assert sd[0] == pytest.approx(PARAMS["gaussian_noise"][0], rel=0.1) and sd[1] > 3 * sd[0]
    # blur: keeps the mean, lowers the peak, smooths the edge
    b = corrupt(x, "gaussian_blur", 5)
    assert float(b.mean()) == pytest.approx(float(x.mean()), abs=1e-3) and float(b.max()) < 0.8
    # contrast: keeps the per-image mean, shrinks deviations by the factor
    cimg = corrupt(x, "contrast", 2)
    assert float(cimg.mean()) == pytest.approx(float(x.mean()), abs=1e-6)
    assert float(cimg.std()) == pytest.approx(PARAMS["contrast"][1] * float(x.std()), rel=1e-4)
    # brightness: a constant shift (nothing clipped here)
    assert torch.allclose(corrupt(x, "brightness", 1), x + 0.1)
    # rotation: the square's mass stays near the centre; shift: the centre of mass moves
    def centre(img):
        m = img[:, 0]
        ii, jj = torch.meshgrid(torch.arange(15.0), torch.arange(15.0), indexing="ij")
        return torch.stack([(m * ii).sum((1, 2)) / m.sum((1, 2)), (m * jj).sum((1, 2)) / m.sum((1, 2))], 1)

    x0 = torch.where(x > 0.5, x, torch.zeros_like(x))  # black background: what warps fill in
    r = corrupt(x0, "rotation", 5, seed=0)
    assert torch.allclose(centre(r), torch.full((2, 2), 7.0), atol=0.3)
    assert float(r.sum()) == pytest.approx(float(x0.sum()), rel=0.05)
    s = corrupt(x0, "shift", 5, seed=0)
    moved = (centre(s) - 7.0).norm(dim=1)
    assert torch.allclose(moved, torch.full((2,), 0.2 * 15), atol=0.6)


def test_mean_corruption_accuracy_skips_severity_zero():
    table = {"a": {0: 1.0, 1: 0.5, 5: 0.25}, "b": {"0": 1.0, "1": 0.0}}  # JSON keys too
    assert mean_corruption_accuracy(table) == pytest.approx((0.5 + 0.25 + 0.0) / 3)
    assert math.isnan(mean_corruption_accuracy({"a": {0: 1.0}}))


def test_corruption_accuracy_table_on_a_tiny_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 3)).eval()
    x = images(n=20)
    y = torch.randint(0, 3, (20,))
    table = corruption_accuracy(model, x, y, corruptions=["contrast", "shift"], severities=(0, 1, 5), batch_size=7)
    assert set(table) == {"contrast", "shift"} and all(set(row) == {0, 1, 5} for row in table.values())
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    assert table["contrast"][0] == pytest.approx(clean)
    assert table == corruption_accuracy(model, x, y, corruptions=["shift", "contrast"], severities=(5, 1, 0), batch_size=7)
    # the mean is over every corruption and severity except severity 0 (computed independently)
    expected_mean = (table["contrast"][1] + table["contrast"][5] + table["shift"][1] + table["shift"][5]) / 4
    assert mean_corruption_accuracy(table) == pytest.approx(expected_mean)
    # each cell is the accuracy on corrupt(x, name, sev, seed=0) (one batch: the same generator)
    with torch.no_grad():
        for name in ("contrast", "shift"):
            for sev in (1, 5):
                xc = corrupt(x, name, sev, seed=0)
                assert table[name][sev] == int((model(xc).argmax(1) == y).sum()) / len(y), (name, sev)
    json.dumps(table)
    model.train()
    corruption_accuracy(model, x, y, corruptions=["brightness"])
    assert model.training  # the model's mode is restored


def test_gaussian_noise_lowers_accuracy_with_severity(fmnist_model, fmnist_subset):
    _, _, xte, yte, _ = fmnist_subset
    x, y = xte[:500], yte[:500]
    table = corruption_accuracy(fmnist_model, x, y, corruptions=["gaussian_noise", "contrast"], severities=(0, 1, 2, 3, 4, 5))
    noise = [table["gaussian_noise"][s] for s in range(6)]
    assert noise[0] > 0.8
    assert noise[5] <= noise[1] - 0.15, noise
    assert all(b <= a + 0.02 for a, b in zip(noise, noise[1:])), noise  # non-increasing up to noise
    contrast = [table["contrast"][s] for s in range(6)]
    assert not any(math.isnan(v) for v in contrast)
    assert contrast[5] <= contrast[0] - 0.1, contrast  # contrast x0.15 costs tens of points
    # an independent computation of two cells (one batch of 500: the table's generator)
    with torch.no_grad():
        for name, sev in (("gaussian_noise", 3), ("contrast", 5)):
            own = int((fmnist_model(corrupt(x, name, sev, seed=0)).argmax(1) == y).sum()) / len(y)
            assert table[name][sev] == own, (name, sev, own)
