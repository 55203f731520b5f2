import pytest
import torch

from robustlab.models import ACTIVATIONS, MODELS, Normalize, build_model

CASES = [
    ("small-cnn", {}, (1, 28, 28)),
    ("small-cnn", {"batchnorm": True}, (1, 28, 28)),
    ("small-cnn", {"input_size": 32}, (3, 32, 32)),
    ("small-cnn", {"input_size": 8, "channels": (8, 16), "hidden": 32}, (1, 8, 8)),
    ("mlp", {}, (1, 28, 28)),
    ("mlp", {"batchnorm": True, "dropout": 0.1}, (1, 28, 28)),
    ("resnet18", {"width": 8}, (3, 32, 32)),
    ("resnet18", {"width": 8}, (1, 28, 28)),
]


@pytest.mark.parametrize("name,opts,shape", CASES)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_model_and_option_gives_logits_and_gradients(name, opts, shape, activation):
    torch.manual_seed(0)
    c = shape[0]
    if name != "resnet18":
        opts = {"input_size": shape[1], **opts}
    model = build_model(name, 7, c, activation=activation, **opts)
    x = torch.rand(3, *shape, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 7)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    act = type(ACTIVATIONS[activation]())
    assert any(isinstance(m, act) for m in model.modules())


def test_batchnorm_option_adds_batchnorm():
    plain = build_model("small-cnn", 10, 1)
    bn = build_model("small-cnn", 10, 1, batchnorm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 2


def test_normalisation_is_a_layer_inside_the_model():
    torch.manual_seed(0)
    m = build_model("small-cnn", 10, 3, input_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    assert isinstance(m.normalize, Normalize)
    x = torch.rand(2, 3, 32, 32)
    ref = m.classifier(m.features((x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2))
    assert torch.allclose(m(x), ref, atol=1e-6)


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", 10, 1)
    with pytest.raises(ValueError, match="unknown option.*batchnrom"):
        build_model("small-cnn", 10, 1, batchnrom=True)
    with pytest.raises(ValueError, match="unknown activation 'tanhh'"):
        build_model("small-cnn", 10, 1, activation="tanhh")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", 1, 1)
    with pytest.raises(ValueError, match="std must be > 0"):
        build_model("mlp", 10, 1, mean=[0.0], std=[0.0])
    assert set(MODELS) >= {"small-cnn", "mlp", "resnet18"}


def test_config_recorded_for_checkpoints():
    m = build_model("mlp", 5, 1, input_size=8, hidden=(16,))
    cfg = m.robustlab_config
    assert {k: cfg[k] for k in ("name", "num_classes", "in_channels", "input_size", "hidden")} == {
        "name": "mlp", "num_classes": 5, "in_channels": 1, "input_size": 8, "hidden": [16]}
    # defaults are recorded too, so a later change of default cannot silently change a checkpoint
    assert cfg["activation"] == "relu" and cfg["batchnorm"] is False and cfg["dropout"] == 0.0
    rebuilt = build_model(**{**cfg, "name": "mlp"})
    assert rebuilt.robustlab_config == cfg
