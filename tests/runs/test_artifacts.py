"""Report artifacts computed from a tiny trained digits run (seconds on 2 cores)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from helpers.state import assert_same_state, snapshot
from robustlab.runs.artifacts import (
    adversarial_examples,
    class_visualisations,
    feature_maps,
    first_layer_filters,
    loss_surface,
    read_manifest,
    write_artifacts,
)
from robustlab.storage import load_model
from robustlab.threat import ThreatModel

EPS = 0.1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from robustlab.runs import RunSpec, train_run
    from robustlab.training import TrainConfig

    run = tmp_path_factory.mktemp("artifacts") / "digits"
    spec = RunSpec(dataset="digits", model="small-cnn", model_options={"channels": [8, 16], "hidden": 32})
    train_run(spec, run, TrainConfig(epochs=3, batch_size=64, lr=3e-3, progress=False), device="cpu")
    weights = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    write_artifacts(run, n_examples=6, eps=EPS, device="cpu")
    assert hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest() == weights
    return run


@pytest.fixture(scope="module")
def test_data(tiny_run):
    from robustlab.runs import load_run_data

    x, y, _ = load_run_data(tiny_run, "test", "cpu")
    return x, y


def _art(run, name):
    return load_file(str(run / "artifacts" / name))


def test_files_and_shapes(tiny_run):
    man = read_manifest(tiny_run)
    assert man["eps"] == EPS and man["norm"] == "linf" and man["class_names"] == [str(i) for i in range(10)]
    for section in ("examples", "feature_maps", "loss_surface", "filters", "class_visualisations"):
        assert (tiny_run / "artifacts" / man[section]["file"]).is_file(), section
    ex = _art(tiny_run, "examples.safetensors")
    assert ex["x"].shape == ex["x_adv"].shape == (6, 1, 8, 8)
    assert ex["pred_clean"].shape == ex["conf_adv"].shape == ex["index"].shape == (6,)
    fm = _art(tiny_run, "feature_maps.safetensors")
    assert fm["stage.clean"].shape == fm["stage.adv"].shape == (8, 8)  # first conv stage, before pooling
    assert fm["input.clean"].shape == (1, 8, 8)
    assert [lay["key"] for lay in man["feature_maps"]["layers"]] == ["stage"]
    assert man["feature_maps"]["layers"][0]["module"] == "features.0.1"  # conv -> ReLU
    ls = _art(tiny_run, "loss_surface.safetensors")
    assert ls["loss"].shape == (21, 21) and ls["coords"].shape == (21,)
    assert ls["coords"][0] == pytest.approx(-2 * EPS) and ls["coords"][-1] == pytest.approx(2 * EPS) and ls["coords"][10] == 0
    filt = _art(tiny_run, "filters.safetensors")["weight"]
    assert filt.shape == (8, 1, 3, 3)
    assert torch.equal(filt, load_model(tiny_run).features[0][0].weight.detach())
    cv = _art(tiny_run, "class_visualisations.safetensors")["images"]
    assert cv.shape == (10, 1, 8, 8) and float(cv.min()) >= 0 and float(cv.max()) <= 1 and float(cv.std()) > 0
    assert len(man["class_visualisations"]["target_probability"]) == 10


def test_examples_are_correct_images_perturbed_within_eps(tiny_run, test_data):
    x, y = test_data
    ex = _art(tiny_run, "examples.safetensors")
    idx = ex["index"]
    assert torch.equal(ex["x"], x[idx]) and torch.equal(ex["y"], y[idx])
    assert torch.equal(ex["pred_clean"], ex["y"])  # only correctly classified images
    delta = (ex["x_adv"] - ex["x"]).abs().flatten(1).amax(1)
    assert bool((delta <= EPS + 1e-6).all())
    assert float(ex["x_adv"].min()) >= 0 and float(ex["x_adv"].max()) <= 1
    model = load_model(tiny_run)
    with torch.no_grad():
        p = F.softmax(model(ex["x_adv"]), 1)
    assert torch.equal(p.argmax(1), ex["pred_adv"])
    assert torch.allclose(p.max(1).values, ex["conf_adv"], atol=1e-5)
    assert bool(((ex["pred_adv"] != ex["y"]) == ex["success"].bool()).all())
    assert len(set(ex["y"].tolist())) == 6  # one class after another


def test_loss_surface_centre_is_the_clean_loss(tiny_run, test_data):
    x, y = test_data
    man = read_manifest(tiny_run)["loss_surface"]
    loss = _art(tiny_run, "loss_surface.safetensors")["loss"]
    model = load_model(tiny_run)
    with torch.no_grad():
        clean = float(F.cross_entropy(model(x[man["index"]][None]), y[man["index"]][None]))
    assert man["label"] == int(y[man["index"]])
    assert float(loss[10, 10]) == pytest.approx(clean, rel=1e-4, abs=1e-6)
    assert man["center_loss"] == pytest.approx(clean, rel=1e-4, abs=1e-6)
    # the gradient-sign direction raises the loss faster than the random one
    assert float(loss[20, 10] - loss[10, 10]) > float(max(loss[10, 20], loss[10, 0]) - loss[10, 10])


class FeatureDenoise(nn.Module):
    """A stand-in denoising block: 3x3 mean filter per channel."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c

    def forward(self, x):
        return F.avg_pool2d(x, 3, 1, 1)


def _bn_denoise_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), FeatureDenoise(4),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))


def test_model_work_leaves_the_model_untouched(test_data):
    x, y = test_data
    model = _bn_denoise_model()
    model.train()  # BatchNorm would update its statistics in train mode
    model[0].weight.requires_grad_(False)
    model[-1].weight.grad = torch.ones_like(model[-1].weight)
    before = snapshot(model)
    threat = ThreatModel("linf", EPS)
    ex, _ = adversarial_examples(model, x[:4], y[:4], threat)
    maps, layers = feature_maps(model, x[0], ex["x_adv"][0])
    loss_surface(model, x[0], int(y[0]), threat)
    class_visualisations(model, 10, (1, 8, 8), steps=5)
    first_layer_filters(model)
    assert_same_state(model, before)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed
    # the denoising block's input and output are captured for the same channel
    assert [lay["key"] for lay in layers] == ["stage", "denoise_in", "denoise_out"]
    assert layers[0]["module"] == "2" and layers[1]["module"] == layers[2]["module"] == "3"
    assert layers[1]["channel"] == layers[2]["channel"]
    assert maps["denoise_out.clean"].shape == (8, 8)
    assert torch.allclose(maps["denoise_out.clean"], F.avg_pool2d(maps["denoise_in.clean"][None, None], 3, 1, 1)[0, 0])


def test_compare_run_reuses_the_example_images(tiny_run, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(tiny_run, other)
    shutil.rmtree(other / "artifacts")
    write_artifacts(other, n_examples=6, eps=EPS, compare_run=tiny_run)
    mine, theirs = read_manifest(other), read_manifest(tiny_run)
    assert mine["examples"]["indices"] == theirs["examples"]["indices"]
    assert mine["loss_surface"]["index"] == mine["feature_maps"]["index"] == theirs["loss_surface"]["index"]
    assert json.loads((other / "artifacts" / "artifacts.json").read_text())["compare_run"] == str(tiny_run)


def test_bad_arguments(tiny_run):
    with pytest.raises(ValueError, match="eps"):
        write_artifacts(tiny_run, eps=0)
    with pytest.raises(ValueError, match="n_examples"):
        write_artifacts(tiny_run, n_examples=0)
    with pytest.raises(ValueError, match="norm"):
        write_artifacts(tiny_run, norm="l3")
