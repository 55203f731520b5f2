"""Model registry: ``build_model(name, num_classes, in_channels, **options)``.

Every model takes images in pixel space (the threat model's bounds) and returns logits. Optional
mean/std normalisation is a layer *inside* the model, so attacks never need to know about it.
The exact constructor arguments are recorded in checkpoints, so a model can be rebuilt from
JSON alone (see :mod:`robustlab.checkpoint`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..registry import check_options, lookup

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (relu | gelu | silu | softplus)."""
    key = str(name).lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


class Normalize(nn.Module):
    """(x - mean) / std per channel, as the model's first layer."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.as_tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        if (std_t <= 0).any():
            raise ValueError(f"normalisation std must be > 0, got {list(std)}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel on (N, C, H, W) inputs, same shape."""
        return (x - self.mean) / self.std


def _maybe_norm(in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> nn.Module:
    if mean is None and std is None:
        return nn.Identity()
    mean = [0.0] * in_channels if mean is None else list(mean)
    std = [1.0] * in_channels if std is None else list(std)
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values (one per channel), got {mean} / {std}")
    return Normalize(mean, std)


def _denoise_blocks(
    denoise: str | None,
    stages: Sequence[int] | None,
    valid: Sequence[int],
    embed: str,
    conv: bool,
    residual: bool,
    options: dict[str, Any] | None,
    activation: str = "relu",
    every_block: bool = False,
    batchnorm: bool = True,
) -> dict[int, Callable[[int], nn.Module]]:
    """Which stages get a :class:`~robustlab.denoise.DenoiseBlock` (or, for ``denoise="bottleneck"``,
    a :class:`~robustlab.models.bottleneck.BottleneckBlock` with the model's ``activation`` and, unless
    ``denoise_options`` say otherwise, its ``batchnorm``) after them, and how to build one for a
    given channel count (empty when ``denoise`` is None)."""
    if not isinstance(every_block, bool):
        raise ValueError(f"denoise_every_block must be true or false, got {every_block!r}")
    if denoise is None:
        if stages is not None or options or every_block:
            raise ValueError("denoise_stages / denoise_options / denoise_every_block need denoise=<op>")
        return {}
    from .denoise import CONTROLS, OPS, DenoiseBlock

    op = str(denoise).lower()
    if op not in OPS + CONTROLS:
        raise ValueError(f"unknown denoising op {denoise!r}: expected one of {', '.join(OPS + CONTROLS)}")
    chosen = list(valid) if stages is None else [int(s) for s in stages]
    bad = [s for s in chosen if s not in valid]
    if bad or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"denoise_stages must be distinct values from {list(valid)}, got {stages}")
    extra = dict(options or {})
    allowed: set[str] = {"null": set(), "bottleneck": {"bottleneck_channels", "batchnorm"}}.get(
        op, {"embed_channels", "padding", "sigma_spatial", "sigma_range"})
    if set(extra) - allowed:
        raise ValueError(f"unknown denoise_options {sorted(set(extra) - allowed)} for denoise={op}; "
                         f"allowed: {', '.join(sorted(allowed)) or 'none'}")
    if op == "bottleneck":
        if not (conv and residual):
            raise ValueError("denoise_conv / denoise_residual ablate denoising blocks; the bottleneck control has neither")
        from .bottleneck import BottleneckBlock

        extra.setdefault("batchnorm", batchnorm)
        return {s: (lambda channels: BottleneckBlock(channels, activation=activation, **extra)) for s in chosen}

    def make(channels: int) -> nn.Module:
        return DenoiseBlock(channels, op=op, embed=embed, use_conv=conv, residual=residual, **extra)

    return {s: make for s in chosen}


class SmallCNN(nn.Module):
    """A small CNN: conv-pool, conv-pool, dense, dense.

    Global pooling is not used, so the dense layer sees the spatial map: input size is fixed at
    build time (``input_size``), 28 for (Fashion-)MNIST, 32 for CIFAR-10, 8 for digits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        batchnorm: bool = False,
        activation: str = "relu",
        dropout: float = 0.0,
        mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
        denoise: str | None = None, denoise_stages: Sequence[int] | None = None, denoise_embed: str = "gaussian",
        denoise_conv: bool = True, denoise_residual: bool = True, denoise_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.normalize = _maybe_norm(in_channels, mean, std)
        # Feature denoising (Xie et al. 2019): a DenoiseBlock appended to conv block 1 and/or 2
        # (denoise_stages; default both), after its pooling. Off by default; when off the
        # state_dict keys are exactly those of the plain model.
        denoisers = _denoise_blocks(denoise, denoise_stages, (1, 2), denoise_embed, denoise_conv,
                                    denoise_residual, denoise_options, activation, batchnorm=batchnorm)

        def block(cin: int, cout: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            layers += [make_activation(activation), nn.MaxPool2d(2)]
            return nn.Sequential(*layers)

        blocks = [block(in_channels, c1), block(c1, c2)]
        for stage, make in denoisers.items():
            blocks[stage - 1].append(make((c1, c2)[stage - 1]))
        self.features = nn.Sequential(*blocks)
        side = input_size // 4
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for two 2x2 poolings")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, hidden),
            make_activation(activation),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images (N, C, H, W): normalisation, two conv blocks, classifier."""
        return self.classifier(self.features(self.normalize(x)))


class MLP(nn.Module):
    """A fully connected network on flattened pixels."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        hidden: Sequence[int] = (256, 128),
        activation: str = "relu",
        batchnorm: bool = False,
        dropout: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = _maybe_norm(in_channels, mean, std)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * input_size * input_size
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images (N, C, H, W), flattened after normalisation."""
        return self.net(self.normalize(x))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, BatchNorm, identity or 1x1 shortcut); ``denoise``: a block
    applied to its output (a feature-denoising block after every residual block), registered last so
    the plain block's parameter names are unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str, drop_prob: float = 0.0,
                 denoise: nn.Module | None = None) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"stochastic depth drop probability must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)  # stochastic depth (train mode only); no parameters
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act1 = make_activation(activation)
        self.act2 = make_activation(activation)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.denoise = denoise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``act(branch(x) + shortcut(x))``, (N, cin, H, W) to (N, cout, H / stride, W / stride); in train mode
        the branch is dropped per sample with ``drop_prob`` (stochastic depth). Then ``denoise``, if any."""
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.training and self.drop_prob > 0:
            # Stochastic depth (Huang et al. 2016), per sample: drop the residual branch with
            # probability p, scale kept branches by 1/(1-p) so eval mode uses the branch as is.
            keep = torch.rand(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype) >= self.drop_prob
            out = out * keep.to(out.dtype) / (1.0 - self.drop_prob)
        out = self.act2(out + self.shortcut(x))
        return out if self.denoise is None else self.denoise(out)


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool); global average pooling makes it accept
    28x28 as well as 32x32 inputs. ``width`` scales the channel counts (64 by default)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        width: int = 64,
        activation: str = "relu",
        mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
        denoise: str | None = None, denoise_stages: Sequence[int] | None = None, denoise_embed: str = "gaussian",
        denoise_conv: bool = True, denoise_residual: bool = True, denoise_options: dict[str, Any] | None = None,
        stochastic_depth: float = 0.0, denoise_every_block: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(stochastic_depth) < 1.0:
            raise ValueError(f"stochastic_depth must be in [0, 1), got {stochastic_depth}")
        self.normalize = _maybe_norm(in_channels, mean, std)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), make_activation(activation)
        )
        # Feature denoising: a DenoiseBlock appended to residual stage 1..4 (denoise_stages;
        # default all four, as in Xie et al. 2019); with denoise_every_block also one after the
        # first residual block of those stages (as its ``denoise`` submodule), so every residual
        # block is followed by one. Stochastic depth: the drop probability grows
        # linearly over the 8 blocks up to ``stochastic_depth`` for the last one.
        denoisers = _denoise_blocks(denoise, denoise_stages, (1, 2, 3, 4), denoise_embed, denoise_conv,
                                    denoise_residual, denoise_options, activation, denoise_every_block)
        stages: list[nn.Module] = []
        cin = width
        n_blocks = 8
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            stride = 1 if i == 0 else 2
            p1 = float(stochastic_depth) * (2 * i + 1) / n_blocks
            p2 = float(stochastic_depth) * (2 * i + 2) / n_blocks
            inner = denoisers[i + 1](cout) if denoise_every_block and i + 1 in denoisers else None
            stage = nn.Sequential(BasicBlock(cin, cout, stride, activation, p1, inner),
                                  BasicBlock(cout, cout, 1, activation, p2))
            if i + 1 in denoisers:
                stage.append(denoisers[i + 1](cout))
            stages.append(stage)
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images (N, C, H, W): normalisation, stem, four stages, global average pool."""
        return self.head(self.stages(self.stem(self.normalize(x))))


MODELS: dict[str, type[nn.Module]] = {"small-cnn": SmallCNN, "mlp": MLP, "resnet18": ResNet18}


# Layer sizes: "int" (one positive integer), "ints" (a list of them), or N (a list of exactly N).
_SIZE_OPTIONS: dict[str, dict[str, Any]] = {
    "small-cnn": {"input_size": "int", "channels": 2, "hidden": "int"},
    "mlp": {"input_size": "int", "hidden": "ints"},
    "resnet18": {"input_size": "int", "width": "int"},
}


def _check_sizes(key: str, options: dict[str, Any]) -> None:
    """Layer sizes must be positive integers (a float, null, 0 or -1 would fail deep in torch)."""

    def positive_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    for opt, kind in _SIZE_OPTIONS.get(key, {}).items():
        if opt not in options:
            continue
        v = options[opt]
        if kind == "int":
            ok, want = positive_int(v), "a positive integer"
        else:
            ok = isinstance(v, (list, tuple)) and all(positive_int(s) for s in v)
            ok = ok and (kind == "ints" or len(v) == kind)
            want = "a list of positive integers" if kind == "ints" else f"a list of {kind} positive integers"
        if not ok:
            raise ValueError(f"{key} option {opt} must be {want}, got {v!r}")


def build_model(name: str, num_classes: int = 10, in_channels: int = 1, **options: Any) -> nn.Module:
    """Build a registered model by name. Options are passed to its constructor; unknown options
    are an error (a typo must not silently give a different model)."""
    key, cls = lookup(MODELS, name, "model")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    check_options(cls, options, f"model {key!r}", skip=("num_classes", "in_channels"))
    _check_sizes(key, options)
    try:
        model = cls(num_classes=int(num_classes), in_channels=int(in_channels), **options)
    except (TypeError, RuntimeError) as e:  # a value of the wrong type that torch rejects deep inside
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise ValueError(f"cannot build {key} with {given}: {e}") from None
    # Record every constructor argument, defaults included, so a checkpoint rebuilds the same
    # architecture even if a default changes in a later version.
    bound = inspect.signature(cls).bind(num_classes=int(num_classes), in_channels=int(in_channels), **options)
    bound.apply_defaults()
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in bound.arguments.items()}
    model.robustlab_config = {"name": key, **config}  # type: ignore[assignment]
    return model
