"""Activation maximisation of conv channels (filter visualisation): for channel ``k`` of a conv
layer, the input ``I* = argmax_I mean f_k(I)`` found by gradient ascent from a grey (or grey plus
noise) image, clamped to the input bounds after every step.

Every channel is optimised in its own batch row, in eval mode, so the rows do not interact; the
images show the pattern each channel responds to most, at the resolution of the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._torch import check_float, check_int, model_guard

STARTS = ("grey", "noise")


def last_conv_layer(model: nn.Module) -> str:
    """Name of the model's last ``nn.Conv2d`` (in module order); ValueError when it has none."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            name = n
    if name is None:
        raise ValueError("the model has no nn.Conv2d layer to visualise")
    return name


@dataclass
class ChannelImages:
    """``images[i]`` maximises the mean activation of ``channels[i]`` of ``layer``;
    ``start_activation[i]`` / ``activation[i]`` are that mean before and after the ascent."""

    images: torch.Tensor  # (n, C, H, W), inside the bounds
    layer: str
    channels: list[int]
    start_activation: torch.Tensor  # (n,)
    activation: torch.Tensor  # (n,)
    meta: dict[str, Any] = field(default_factory=dict)


def _output(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of ``module`` during ``model(x)``: (N, K, h, w)."""
    store: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _a, out: store.append(out[0] if isinstance(out, (tuple, list)) else out))
    try:
        model(x)
    finally:
        handle.remove()
    out = store[-1]
    if out.dim() != 4:
        raise ValueError(f"the layer's output has shape {tuple(out.shape)}; channel maximisation needs (N, K, H, W)")
    return out


def _channel_means(out: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Row ``i``'s mean activation of channel ``channels[i]``: (n,)."""
    return out[torch.arange(len(channels), device=out.device), channels].flatten(1).mean(1)


def maximise_channels(model: nn.Module, shape: Sequence[int], layer: str | None = None,
                      channels: Sequence[int] | None = None, *, n_channels: int = 8, steps: int = 64, lr: float = 0.05,
                      start: str = "grey", bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0,
                      device: torch.device | str = "cpu") -> ChannelImages:
    """Gradient ascent (Adam, ``steps`` steps of size ``lr``) on the mean activation of each channel.

    ``shape``: the input (C, H, W); ``layer``: a module name (default: the last ``nn.Conv2d``);
    ``channels``: which channels (default: the first ``n_channels``); ``start``: ``"grey"`` (the
    middle of ``bounds``) or ``"noise"`` (grey plus uniform noise of a tenth of the range, from
    ``seed``). The model is left as found (:func:`robustlab.attacks.model_guard`)."""
    if len(shape) != 3:
        raise ValueError(f"shape must be the input's (C, H, W), got {tuple(shape)}")
    c, h, w = (check_int("shape", v, 1) for v in shape)
    steps = check_int("steps", steps, 1)
    lr = check_float("lr", lr, 0.0, strict=True)
    if start not in STARTS:
        raise ValueError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
    lo, hi = (float(v) for v in bounds)
    if not lo < hi:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
    layer = last_conv_layer(model) if layer is None else str(layer)
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"the model has no submodule {layer!r}") from None
    n_out = module.out_channels if isinstance(module, nn.Conv2d) else None
    if channels is None:
        n_channels = check_int("n_channels", n_channels, 1)
        chosen = list(range(min(n_channels, n_out if n_out is not None else n_channels)))
    else:
        chosen = [check_int("channel", k, 0) for k in channels]
        if not chosen or len(set(chosen)) != len(chosen):
            raise ValueError(f"channels must be distinct indices, at least one, got {list(channels)}")
    if n_out is not None and max(chosen) >= n_out:
        raise ValueError(f"layer {layer!r} has {n_out} channels; channel {max(chosen)} does not exist")
    idx = torch.tensor(chosen, device=device)
    x = torch.full((len(chosen), c, h, w), (lo + hi) / 2, device=device)
    if start == "noise":
        gen = torch.Generator().manual_seed(int(seed))
        x = x + ((torch.rand(x.shape, generator=gen) - 0.5) * 0.2 * (hi - lo)).to(x)
    x = x.clamp(lo, hi).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    with model_guard(model, eval_mode=True), torch.enable_grad():
        with torch.no_grad():
            out = _output(model, module, x)
            if max(chosen) >= out.shape[1]:
                raise ValueError(f"layer {layer!r} has {out.shape[1]} channels; channel {max(chosen)} does not exist")
            before = _channel_means(out, idx)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            (-_channel_means(_output(model, module, x), idx).sum()).backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
        with torch.no_grad():
            after = _channel_means(_output(model, module, x), idx)
    meta = {"layer": layer, "channels": chosen, "steps": steps, "lr": lr, "optimizer": "adam", "start": start,
            "bounds": [lo, hi], "seed": int(seed), "objective": "mean activation of the channel (layer output)"}
    return ChannelImages(images=x.detach().cpu().contiguous(), layer=layer, channels=chosen,
                         start_activation=before.detach().cpu(), activation=after.detach().cpu(), meta=meta)


__all__ = ["STARTS", "ChannelImages", "last_conv_layer", "maximise_channels"]
