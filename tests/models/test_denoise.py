"""Feature-denoising blocks, smooth activations everywhere, and the models that use them."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.models import ACTIVATIONS, OPS, BilateralFilter, DenoiseBlock, MeanFilter, MedianFilter, NonLocalMeans, build_model
from robustlab.storage import load_model, save_model


# --- slow references (explicit loops over pixels) --------------------------------------------------
def _pad_index(i: int, n: int, padding: str) -> int:
    if 0 <= i < n:
        return i
    if padding == "replicate":
        return min(max(i, 0), n - 1)
    return -i if i < 0 else 2 * (n - 1) - i  # reflect (no edge repeat)


def _median_ref(x: torch.Tensor, padding: str) -> torch.Tensor:
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for b in range(n):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    vals = sorted(float(x[b, ch, _pad_index(i + di, h, padding), _pad_index(j + dj, w, padding)])
                                  for di in (-1, 0, 1) for dj in (-1, 0, 1))
                    out[b, ch, i, j] = vals[4]
    return out


def _bilateral_ref(x: torch.Tensor, sigma_s: float, sigma_r: float, padding: str) -> torch.Tensor:
    n, c, h, w = x.shape
    out = torch.empty_like(x, dtype=torch.float64)
    xd = x.double()
    for b in range(n):
        for i in range(h):
            for j in range(w):
                centre = xd[b, :, i, j]
                acc = torch.zeros(c, dtype=torch.float64)
                total = 0.0
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        v = xd[b, :, _pad_index(i + di, h, padding), _pad_index(j + dj, w, padding)]
                        d2 = float(((v - centre) ** 2).mean())
                        wgt = math.exp(-(di * di + dj * dj) / (2 * sigma_s**2)) * math.exp(-d2 / (2 * sigma_r**2))
                        acc += wgt * v
                        total += wgt
                out[b, :, i, j] = acc / total
    return out.to(x.dtype)


def _mean_ref(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(h):
        for j in range(w):
            win = x[:, :, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
            out[:, :, i, j] = win.mean(dim=(2, 3))
    return out


# --- the ops ----------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["replicate", "reflect"])
def test_median_matches_slow_reference(padding):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6)
    assert torch.equal(MedianFilter(padding)(x), _median_ref(x, padding))


@pytest.mark.parametrize("padding", ["replicate", "reflect"])
@pytest.mark.parametrize("sigmas", [(1.0, 1.0), (0.7, 0.3)])
def test_bilateral_matches_slow_reference(padding, sigmas):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 4)
    got = BilateralFilter(*sigmas, padding=padding)(x)
    assert torch.allclose(got, _bilateral_ref(x, *sigmas, padding), atol=1e-5)


def test_bilateral_keeps_constant_maps_and_preserves_edges():
    flat = torch.full((1, 2, 4, 4), 0.7)
    assert torch.allclose(BilateralFilter()(flat), flat)
    edge = torch.zeros(1, 1, 6, 6)
    edge[..., 3:] = 10.0  # a step much larger than sigma_range: the range kernel keeps it sharp
    assert torch.allclose(BilateralFilter(1.0, 0.5)(edge), edge, atol=1e-6)
    assert not torch.allclose(MeanFilter()(edge), edge)


def test_mean_filter_matches_reference():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 5, 7)
    assert torch.allclose(MeanFilter()(x), _mean_ref(x), atol=1e-6)


@pytest.mark.parametrize("embed", ["gaussian", "dot"])
def test_nonlocal_matches_einsum_reference(embed):
    torch.manual_seed(3)
    op = NonLocalMeans(8, embed)
    assert op.embed_channels == 4
    x = torch.randn(2, 8, 4, 5)
    theta = torch.einsum("dc,nchw->ndhw", op.theta.weight[:, :, 0, 0], x).flatten(2)
    phi = torch.einsum("dc,nchw->ndhw", op.phi.weight[:, :, 0, 0], x).flatten(2)
    f = torch.einsum("ndi,ndj->nij", theta, phi)
    weights = torch.softmax(f / math.sqrt(4), dim=-1) if embed == "gaussian" else f / 20
    ref = torch.einsum("nij,ncj->nci", weights, x.flatten(2)).view_as(x)
    assert torch.allclose(op(x), ref, atol=1e-5)
    if embed == "gaussian":
        assert torch.allclose(op.affinity(x).sum(-1), torch.ones(2, 20), atol=1e-5)


# --- the block --------------------------------------------------------------------------------
BLOCKS = [dict(op="nonlocal"), dict(op="nonlocal", embed="dot"), dict(op="mean"), dict(op="median"),
          dict(op="median", padding="reflect"), dict(op="bilateral")]


@pytest.mark.parametrize("opts", BLOCKS, ids=lambda o: "-".join(map(str, o.values())))
def test_block_keeps_shape_is_identity_at_init_and_passes_gradients(opts):
    torch.manual_seed(4)
    block = DenoiseBlock(6, **opts)
    assert "Denoise" in type(block).__name__
    x = torch.randn(3, 6, 5, 5, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    assert torch.equal(out, x)  # x + zero conv: exactly the identity
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert block.conv.weight.grad is not None and block.conv.weight.grad.abs().sum() > 0
    assert block.conv.bias.grad is not None and block.conv.bias.grad.abs().sum() > 0


def test_block_ablations():
    torch.manual_seed(5)
    x = torch.randn(2, 4, 5, 5)
    op = MedianFilter()
    assert torch.allclose(DenoiseBlock(4, "median", use_conv=False)(x), x + op(x))
    assert torch.allclose(DenoiseBlock(4, "median", use_conv=False, residual=False)(x), op(x))
    no_res = DenoiseBlock(4, "median", residual=False)  # conv starts as the identity map
    assert torch.allclose(no_res(x), op(x), atol=1e-6)
    assert DenoiseBlock(4, "mean", use_conv=False).conv is None
    with torch.no_grad():
        b = DenoiseBlock(4, "mean")
        b.conv.weight.normal_()
    assert torch.allclose(b(x), x + b.conv(MeanFilter()(x)), atol=1e-6)


def test_block_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown denoising op 'gauss'"):
        DenoiseBlock(4, "gauss")
    with pytest.raises(ValueError, match="unknown non-local embedding"):
        DenoiseBlock(4, "nonlocal", embed="cosine")
    with pytest.raises(ValueError, match="unknown padding"):
        DenoiseBlock(4, "median", padding="zeros")
    with pytest.raises(ValueError, match="feature maps"):
        DenoiseBlock(4, "median")(torch.zeros(2, 4, 5))


# --- activations reach every layer --------------------------------------------------------------
ACT_MODELS = [("small-cnn", {"input_size": 8, "channels": (4, 8), "hidden": 16}, (1, 8, 8), 3),
              ("small-cnn", {"input_size": 8, "channels": (4, 8), "hidden": 16, "batchnorm": True,
                             "denoise": "nonlocal"}, (1, 8, 8), 3),
              ("mlp", {"input_size": 8, "hidden": (16, 8, 8)}, (1, 8, 8), 3),
              ("resnet18", {"width": 4, "denoise": "mean"}, (3, 8, 8), 17)]


@pytest.mark.parametrize("name,opts,shape,count", ACT_MODELS, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activation_option_reaches_every_activation(name, opts, shape, count, activation, monkeypatch):
    model = build_model(name, 5, shape[0], activation=activation, **opts)
    act_types = tuple(type(f()) for f in ACTIVATIONS.values())
    acts = [m for m in model.modules() if isinstance(m, act_types)]
    assert len(acts) == count
    assert all(type(m) is type(ACTIVATIONS[activation]()) for m in acts)
    # and functionally: only the chosen nonlinearity is called, once per activation layer
    calls = {k: 0 for k in ("relu", "gelu", "silu", "softplus")}
    for k in calls:
        orig = getattr(F, k)

        def counted(*a, _k=k, _orig=orig, **kw):
            calls[_k] += 1
            return _orig(*a, **kw)

        monkeypatch.setattr(F, k, counted)
    model(torch.rand(2, *shape))
    assert calls == {k: (count if k == activation else 0) for k in calls}


# --- models with denoising blocks ----------------------------------------------------------------
PLAIN_SMALL_CNN_KEYS = ["features.0.0.weight", "features.0.0.bias", "features.1.0.weight", "features.1.0.bias",
                        "classifier.1.weight", "classifier.1.bias", "classifier.4.weight", "classifier.4.bias"]


def test_denoise_off_keeps_state_dict_keys():
    assert list(build_model("small-cnn", 10, 1).state_dict()) == PLAIN_SMALL_CNN_KEYS
    plain = build_model("resnet18", 10, 3, width=4)
    den = build_model("resnet18", 10, 3, width=4, denoise="nonlocal", stochastic_depth=0.3)
    extra = [k for k in den.state_dict() if k not in plain.state_dict()]
    assert all(".2." in k and k.startswith("stages.") for k in extra) and len(extra) == 4 * 4
    assert [k for k in den.state_dict() if k not in extra] == list(plain.state_dict())
    assert list(build_model("resnet18", 10, 3, width=4, stochastic_depth=0.3).state_dict()) == list(plain.state_dict())


def test_denoise_stages_choose_where_blocks_go():
    m = build_model("small-cnn", 10, 1, denoise="median", denoise_stages=[2], denoise_options={"padding": "reflect"})
    blocks = [(n, b) for n, b in m.named_modules() if isinstance(b, DenoiseBlock)]
    assert [n for n, _ in blocks] == ["features.1.3"]
    assert blocks[0][1].channels == 64 and blocks[0][1].op.padding == "reflect"
    r = build_model("resnet18", 10, 3, width=4, denoise="bilateral", denoise_stages=(1, 3), denoise_embed="dot",
                    denoise_conv=False, denoise_residual=True)
    names = [n for n, b in r.named_modules() if isinstance(b, DenoiseBlock)]
    assert names == ["stages.0.2", "stages.2.2"]
    assert all(b.conv is None for b in r.modules() if isinstance(b, DenoiseBlock))
    with pytest.raises(ValueError, match="denoise_stages"):
        build_model("small-cnn", 10, 1, denoise="mean", denoise_stages=[3])
    with pytest.raises(ValueError, match="need denoise"):
        build_model("small-cnn", 10, 1, denoise_stages=[1])
    with pytest.raises(ValueError, match="unknown denoising op"):
        build_model("resnet18", 10, 3, width=4, denoise="wavelet")


ROUND_TRIP = [
    ("small-cnn", {"input_size": 8, "channels": (4, 8), "hidden": 16, "denoise": "nonlocal"}, (1, 8, 8)),
    ("small-cnn", {"input_size": 8, "channels": (4, 8), "hidden": 16, "denoise": "median", "denoise_stages": (2,),
                   "denoise_residual": False, "denoise_options": {"padding": "reflect"}}, (1, 8, 8)),
    ("resnet18", {"width": 4, "denoise": "bilateral", "denoise_stages": [1, 4], "stochastic_depth": 0.2,
                  "denoise_options": {"sigma_range": 0.5}}, (3, 8, 8)),
    ("resnet18", {"width": 4, "denoise": "nonlocal", "denoise_embed": "dot", "denoise_stages": [2]}, (3, 8, 8)),
]


@pytest.mark.parametrize("name,opts,shape", ROUND_TRIP)
def test_denoise_models_run_and_round_trip_bit_identical(name, opts, shape, tmp_path):
    torch.manual_seed(6)
    model = build_model(name, 10, shape[0], **opts)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-trivial denoising convs
    model.eval()
    x = torch.rand(3, *shape)
    out = model(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    save_model(model, tmp_path / "run")
    arch = json.loads((tmp_path / "run" / "model.json").read_text())["architecture"]
    assert arch["denoise"] == opts["denoise"]
    loaded = load_model(tmp_path / "run")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(loaded(x), out)


def test_stochastic_depth_only_in_train_mode():
    torch.manual_seed(7)
    sd = build_model("resnet18", 10, 3, width=4, stochastic_depth=0.9)
    plain = build_model("resnet18", 10, 3, width=4)
    plain.load_state_dict(sd.state_dict())
    x = torch.rand(4, 3, 8, 8)
    sd.eval(), plain.eval()
    assert torch.equal(sd(x), plain(x))
    sd.train()
    with torch.no_grad():
        a, b = sd(x), sd(x)
    assert not torch.equal(a, b)  # different blocks dropped (BatchNorm alone would be deterministic)
    probs = [m.drop_prob for m in sd.modules() if hasattr(m, "drop_prob")]
    assert len(probs) == 8 and probs[-1] == pytest.approx(0.9) and probs == sorted(probs)
    with pytest.raises(ValueError, match="stochastic_depth"):
        build_model("resnet18", 10, 3, width=4, stochastic_depth=1.0)


def test_cli_denoise_option(tmp_path):
    from click.testing import CliRunner

    from robustlab.cli import main

    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--dataset", "digits", "--denoise", "mean", "--model-option",
                                  "channels=[4,8]", "--model-option", "hidden=16", "--model-option", "denoise_stages=[1]",
                                  "--epochs", "1", "--train-limit", "128", "--test-limit", "64", "--monitor-attack",
                                  "none", "--device", "cpu", "--quiet", "--out", str(run)])
    assert r.exit_code == 0, r.output
    arch = json.loads((run / "model.json").read_text())["architecture"]
    assert arch["denoise"] == "mean" and arch["denoise_stages"] == [1]
    model = load_model(run)
    assert sum(isinstance(m, DenoiseBlock) for m in model.modules()) == 1
    bad = CliRunner().invoke(main, ["train", "--dataset", "digits", "--denoise", "fft", "--epochs", "1",
                                    "--monitor-attack", "none", "--out", str(tmp_path / "bad"), "--quiet"])
    assert bad.exit_code == 2 and "unknown denoising op 'fft'" in bad.output


def test_ops_listed():
    assert set(OPS) == {"nonlocal", "mean", "median", "bilateral"}
    assert isinstance(DenoiseBlock(2, "mean").op, nn.Module)


def test_denoise_options_are_checked_and_the_report_finds_the_block():
    with pytest.raises(ValueError, match="unknown denoise_options"):
        build_model("small-cnn", 10, 1, denoise="median", denoise_options={"op": "mean"})
    from robustlab.runs.artifacts import feature_maps

    torch.manual_seed(8)
    model = build_model("small-cnn", 10, 1, input_size=8, channels=(4, 8), hidden=16, denoise="nonlocal").eval()
    x = torch.rand(1, 8, 8)
    _tensors, layers = feature_maps(model, x, (x + 0.05).clamp(0, 1))
    den = [lay for lay in layers if lay["key"].startswith("denoise")]
    assert [lay["module"] for lay in den] == ["features.0.3", "features.0.3"]
    assert all(lay["class"] == "DenoiseBlock" for lay in den)
