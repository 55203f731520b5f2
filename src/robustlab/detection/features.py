"""Hidden features of a classifier, taken with forward hooks: the flattened input (or output) of
a named module; by default the input of the classifier's final ``nn.Linear`` (its
penultimate-layer representation)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .._torch import model_guard

CAPTURES = ("input", "output")


def default_layer(model: nn.Module) -> str:
    """Name of the model's last ``nn.Linear`` (its input is the penultimate representation)."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    if name is None:
        raise ValueError("the model has no nn.Linear layer; name the feature layer explicitly (layer=...)")
    return name


@contextlib.contextmanager
def capture_features(model: nn.Module, layer: str, capture: str = "input") -> Iterator[dict[str, torch.Tensor]]:
    """While active, every forward of ``model`` puts the input (or output) of submodule ``layer``,
    flattened to (N, D), into the yielded dict under ``"features"`` (not detached: gradients flow)."""
    if capture not in CAPTURES:
        raise ValueError(f"capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"the model has no submodule {layer!r}") from None
    store: dict[str, torch.Tensor] = {}

    def put(t: Any) -> None:
        if isinstance(t, (tuple, list)):
            t = t[0]
        store["features"] = t.flatten(1)

    if capture == "input":
        handle = module.register_forward_pre_hook(lambda _m, args: put(args[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _args, out: put(out))
    try:
        yield store
    finally:
        handle.remove()


@torch.no_grad()
def extract_features(
    model: nn.Module, x: torch.Tensor, layer: str | None = None, capture: str = "input", batch_size: int = 500
) -> torch.Tensor:
    """Hidden features (N, D) of ``x`` in eval mode (the model's state is restored)."""
    layer = default_layer(model) if layer is None else layer
    out = []
    with model_guard(model), capture_features(model, layer, capture) as store:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
            out.append(store["features"].detach())
    return torch.cat(out) if out else torch.empty(0)
