"""The feature-denoising paper's controls: the null block, the bottleneck block, and a block after
every residual block (Xie et al. 2019, the ablations beside the denoising ops)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.state import assert_same_state, assert_tensor_untouched, snapshot, snapshot_tensor
from robustlab.models import BasicBlock, BilateralFilter, DenoiseBlock, MeanFilter, MedianFilter, NonLocalMeans, build_model
from robustlab.models.bottleneck import BottleneckBlock
from robustlab.models.denoise import CONTROLS, OPS
from robustlab.storage import load_model, save_model

DENOISING_OPS = (NonLocalMeans, MeanFilter, MedianFilter, BilateralFilter)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _randomise(model: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))


# --- the null block ------------------------------------------------------------------------------
def test_null_block_is_one_1x1_conv_and_the_residual():
    block = DenoiseBlock(6, "null")
    assert not any(isinstance(m, DENOISING_OPS) for m in block.modules())
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (1, 1) and convs[0].weight.shape == (6, 6, 1, 1)
    assert _params(block) == 6 * 6 + 6
    torch.manual_seed(0)
    x = torch.randn(2, 6, 4, 5, requires_grad=True)
    saved = snapshot_tensor(x)
    assert torch.equal(block(x), x)  # x + zero conv: exactly the identity at init
    assert_tensor_untouched(x, saved)
    _randomise(block, 1)
    w, b = block.conv.weight[:, :, 0, 0], block.conv.bias
    expected = x + torch.einsum("oc,nchw->nohw", w, x) + b.view(1, -1, 1, 1)
    out = block(x)
    assert torch.allclose(out, expected, atol=1e-5)
    out.sum().backward()
    assert block.conv.weight.grad is not None and block.conv.weight.grad.abs().sum() > 0


def test_null_block_needs_its_conv_and_takes_no_op_options():
    with pytest.raises(ValueError, match="null block .* use_conv=True"):
        DenoiseBlock(4, "null", use_conv=False)
    with pytest.raises(ValueError, match=r"unknown denoise_options \['padding'\] for denoise=null; allowed: none"):
        build_model("small-cnn", 10, 1, denoise="null", denoise_options={"padding": "reflect"})
    assert set(CONTROLS) == {"null", "bottleneck"} and not set(CONTROLS) & set(OPS)


# --- the bottleneck block ------------------------------------------------------------------------
def test_bottleneck_layers_and_identity_at_init():
    block = BottleneckBlock(16)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(16, 4, (1, 1)), (4, 4, (3, 3)), (4, 16, (1, 1))]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in block.modules()) == 2
    assert sum(isinstance(m, nn.ReLU) for m in block.modules()) == 2
    torch.manual_seed(2)
    x = torch.randn(3, 16, 5, 5)
    block.train()  # BatchNorm in batch-statistics mode: still exactly x + 0
    assert torch.equal(block(x), x)
    block.eval()
    assert torch.equal(block(x), x)


def test_bottleneck_forward_matches_a_hand_written_branch():
    block = BottleneckBlock(8, bottleneck_channels=3, activation="gelu")
    _randomise(block, 3)
    block.eval()
    c1, bn1, _, c2, bn2, _, c3 = block.branch

    def bn(z: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:  # eval mode: running mean 0, var 1
        return (z - m.running_mean.view(1, -1, 1, 1)) / torch.sqrt(m.running_var.view(1, -1, 1, 1) + m.eps) \
            * m.weight.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)

    torch.manual_seed(4)
    x = torch.randn(2, 8, 4, 6)
    h = F.gelu(bn(F.conv2d(x, c1.weight), bn1))
    h = F.gelu(bn(F.conv2d(h, c2.weight, padding=1), bn2))
    expected = x + F.conv2d(h, c3.weight, c3.bias)
    assert torch.allclose(block(x), expected, atol=1e-5)
    assert not torch.allclose(block(x), x, atol=1e-3)  # randomised: no longer the identity


@pytest.mark.parametrize("channels", [16, 32, 64, 256])
def test_bottleneck_size_against_a_nonlocal_block(channels):
    c, b = channels, channels // 4
    bottleneck = BottleneckBlock(c)
    # 1x1 reduce + BN + 3x3 + BN + 1x1 expand with bias = 17/16 C^2 + 4b + C
    assert _params(bottleneck) == c * b + 2 * b + 9 * b * b + 2 * b + b * c + c == 17 * c * c // 16 + 4 * b + c
    nonlocal_block = DenoiseBlock(c, "nonlocal")  # theta, phi: C x C/2 each; 1x1 conv C x C + C
    assert _params(nonlocal_block) == 2 * c * c + c
    ratio = _params(bottleneck) / _params(nonlocal_block)
    assert 0.53 < ratio < 0.58  # the ratio documented in docs/defenses.md and the module docstring
    assert _params(DenoiseBlock(c, "null")) == c * c + c  # null: half a non-local block
    wide = BottleneckBlock(c, bottleneck_channels=c // 2, batchnorm=False)
    assert _params(wide) == c * c // 2 + c // 2 + 9 * (c // 2) ** 2 + c // 2 + c * c // 2 + c


def test_bottleneck_in_models_follows_the_model_and_checks_options():
    plain = build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=16, denoise="bottleneck",
                        activation="silu")
    blocks = [m for m in plain.modules() if isinstance(m, BottleneckBlock)]
    assert [b.channels for b in blocks] == [8, 16] and not any(b.batchnorm for b in blocks)  # small-cnn: no BN
    assert sum(isinstance(m, nn.SiLU) for b in blocks for m in b.modules()) == 4
    bn = build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=16, batchnorm=True, denoise="bottleneck",
                     denoise_stages=[2], denoise_options={"bottleneck_channels": 2})
    (only,) = [m for m in bn.modules() if isinstance(m, BottleneckBlock)]
    assert only.batchnorm and only.bottleneck_channels == 2 and only.channels == 16
    res = build_model("resnet18", 10, 3, width=4, denoise="bottleneck", denoise_options={"batchnorm": False})
    assert sum(isinstance(m, BottleneckBlock) and not m.batchnorm for m in res.modules()) == 4
    with pytest.raises(ValueError, match="bottleneck_channels must be a positive integer"):
        BottleneckBlock(8, bottleneck_channels=0)
    with pytest.raises(ValueError, match=r"unknown denoise_options \['embed_channels'\] for denoise=bottleneck"):
        build_model("small-cnn", 10, 1, denoise="bottleneck", denoise_options={"embed_channels": 2})
    with pytest.raises(ValueError, match="bottleneck control has neither"):
        build_model("small-cnn", 10, 1, denoise="bottleneck", denoise_residual=False)
    with pytest.raises(ValueError, match="unknown denoising op 'bottle'.*null, bottleneck"):
        build_model("small-cnn", 10, 1, denoise="bottle")


def test_pgd_leaves_a_bottleneck_model_and_its_input_untouched():
    from robustlab import ThreatModel
    from robustlab.attacks import PGD

    model = build_model("small-cnn", 10, 1, input_size=8, channels=(4, 8), hidden=16, batchnorm=True,
                        denoise="bottleneck")
    _randomise(model, 5)
    model.train()  # BatchNorm in the new block must not update its statistics during the attack
    before = snapshot(model)
    torch.manual_seed(6)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    saved = snapshot_tensor(x)
    x_adv = PGD(ThreatModel("linf", 0.1), steps=3)(model, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(x_adv, x)
    assert_same_state(model, before)
    assert_tensor_untouched(x, saved)


# --- a block after every residual block ----------------------------------------------------------
def _call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda mod, _inp: order.append(type(mod).__name__))
               for m in model.modules() if isinstance(m, (BasicBlock, DenoiseBlock, BottleneckBlock))]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return order


@pytest.mark.parametrize("op,kind", [("nonlocal", DenoiseBlock), ("null", DenoiseBlock), ("bottleneck", BottleneckBlock)])
def test_every_block_puts_one_after_each_residual_block(op, kind):
    model = build_model("resnet18", 10, 3, width=4, denoise=op, denoise_every_block=True).eval()
    n_res = sum(isinstance(m, BasicBlock) for m in model.modules())
    assert n_res == 8 and sum(isinstance(m, kind) for m in model.modules()) == n_res
    x = torch.rand(2, 3, 8, 8)
    assert _call_order(model, x) == ["BasicBlock", kind.__name__] * 8  # each residual block, then its block
    # Fresh blocks are the identity: the plain model's weights give the plain model's logits.
    plain = build_model("resnet18", 10, 3, width=4).eval()
    _randomise(plain, 7)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    added = [k for k in model.state_dict() if ".denoise." in k or k.split(".")[:3:2] == ["stages", "2"]]
    assert not unexpected and missing and set(missing) <= set(added)
    assert [k for k in model.state_dict() if k not in added] == list(plain.state_dict())  # names and order kept
    plain.eval(), model.eval()
    assert torch.equal(model(x), plain(x))


def test_every_block_with_chosen_stages_and_bad_values():
    model = build_model("resnet18", 10, 3, width=4, denoise="mean", denoise_stages=[2, 4], denoise_every_block=True)
    names = [n for n, m in model.named_modules() if isinstance(m, DenoiseBlock)]
    assert names == ["stages.1.0.denoise", "stages.1.2", "stages.3.0.denoise", "stages.3.2"]
    assert [m.channels for m in model.modules() if isinstance(m, DenoiseBlock)] == [8, 8, 32, 32]
    default = build_model("resnet18", 10, 3, width=4, denoise="mean", denoise_stages=[2, 4])
    assert sum(isinstance(m, DenoiseBlock) for m in default.modules()) == 2  # one per stage without the option
    with pytest.raises(ValueError, match="need denoise"):
        build_model("resnet18", 10, 3, width=4, denoise_every_block=True)
    with pytest.raises(ValueError, match="denoise_every_block must be true or false"):
        build_model("resnet18", 10, 3, width=4, denoise="mean", denoise_every_block="yes")
    with pytest.raises(ValueError, match="unknown option.*denoise_every_block"):  # small-cnn: one conv block per stage
        build_model("small-cnn", 10, 1, denoise="mean", denoise_every_block=True)


ROUND_TRIP = [
    ("resnet18", {"width": 4, "denoise": "nonlocal", "denoise_every_block": True, "denoise_stages": [1, 3]}, (3, 8, 8)),
    ("resnet18", {"width": 4, "denoise": "bottleneck", "denoise_every_block": True,
                  "denoise_options": {"bottleneck_channels": 3}}, (3, 8, 8)),
    ("small-cnn", {"input_size": 8, "channels": (4, 8), "hidden": 16, "denoise": "null"}, (1, 8, 8)),
    ("small-cnn", {"input_size": 8, "channels": (4, 8), "hidden": 16, "batchnorm": True, "denoise": "bottleneck"},
     (1, 8, 8)),
]


@pytest.mark.parametrize("name,opts,shape", ROUND_TRIP, ids=lambda v: v if isinstance(v, str) else None)
def test_control_models_round_trip_through_model_json(name, opts, shape, tmp_path):
    model = build_model(name, 10, shape[0], **opts)
    _randomise(model, 8)
    model.train()
    model(torch.rand(8, *shape))  # moves BatchNorm running statistics away from their defaults
    model.eval()
    x = torch.rand(3, *shape)
    out = model(x)
    save_model(model, tmp_path / "run")
    arch = json.loads((tmp_path / "run" / "model.json").read_text())["architecture"]
    assert {k: arch[k] for k in opts} == {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()}
    loaded = load_model(tmp_path / "run")
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert torch.equal(loaded(x), out)


def test_cli_trains_null_and_every_block_bottleneck_models(tmp_path):
    from click.testing import CliRunner

    from robustlab.cli import main

    common = ["--dataset", "digits", "--epochs", "1", "--train-limit", "128", "--test-limit", "64",
              "--monitor-attack", "none", "--device", "cpu", "--quiet"]
    runs = {"null": ["--denoise", "null", "--model-option", "channels=[4,8]", "--model-option", "hidden=16"],
            "bottleneck": ["--model", "resnet18", "--denoise", "bottleneck", "--model-option", "width=4",
                           "--model-option", "denoise_every_block=true"]}
    for name, args in runs.items():
        r = CliRunner().invoke(main, ["train", *common, *args, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    arch = json.loads((tmp_path / "null" / "model.json").read_text())["architecture"]
    assert arch["denoise"] == "null"
    assert sum(isinstance(m, DenoiseBlock) and m.op_name == "null" for m in load_model(tmp_path / "null").modules()) == 2
    arch = json.loads((tmp_path / "bottleneck" / "model.json").read_text())["architecture"]
    assert arch["denoise"] == "bottleneck" and arch["denoise_every_block"] is True
    assert sum(isinstance(m, BottleneckBlock) for m in load_model(tmp_path / "bottleneck").modules()) == 8
