"""The report's CNN visualisations of a run, computed once into ``RUN/artifacts/`` beside the other
report artifacts (:func:`robustlab.runs.artifacts.write_artifacts` calls
:func:`write_visual_artifacts`; file names: :data:`robustlab.storage.layout.VISUAL_ARTIFACTS`):

* ``decision_regions.safetensors`` -- the predicted class on a ``grid`` x ``grid`` plane through one
  test image, along the loss-gradient direction and a random orthogonal one, ``a, b`` in
  ``[-radius, radius]`` (default ``3 eps``), clamped to the bounds
  (:func:`robustlab.evaluation.visual_regions.decision_regions`): ``pred``, ``coords``, ``x``;
* ``channel_visualisations.safetensors`` -- for a few channels of a conv layer (default: the last),
  the input that maximises the channel's mean activation
  (:func:`robustlab.evaluation.visual_channels.maximise_channels`): ``images``,
  ``start_activation``, ``activation``;
* ``nearest_neighbours.safetensors`` -- for a few test images, their ``k`` nearest training images
  in pixel space and in the feature space of the last ``nn.Linear``'s input
  (:func:`robustlab.evaluation.visual_neighbours.compare_neighbours`), and in the manifest the share
  of same-class neighbours in each space over ``n_sample`` test images.

A section the model cannot give (no conv layer, no ``nn.Linear``) is recorded as
``{"missing": reason}``; the report shows that reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..evaluation.visual_channels import last_conv_layer, maximise_channels
from ..evaluation.visual_neighbours import compare_neighbours, last_linear_layer
from ..evaluation.visual_regions import decision_regions
from ..storage import atomic_save_safetensors
from ..storage.layout import VISUAL_ARTIFACTS
from ..threat import ThreatModel


class Unavailable(Exception):
    """The model or the data cannot give a section: the manifest records why instead."""


def _regions(model: nn.Module, out: Path, x_one: torch.Tensor, y_one: int, index: int, threat: ThreatModel,
             grid: int, radius: float | None) -> dict[str, Any]:
    r = decision_regions(model, x_one, y_one, radius=3 * threat.eps if radius is None else radius, grid=grid,
                         direction="sign" if threat.norm == "linf" else "l2", bounds=threat.bounds)
    atomic_save_safetensors({"pred": r.pred, "coords": r.coords, "x": x_one.detach().cpu().reshape(r.direction_a.shape)},
                            out / VISUAL_ARTIFACTS["decision_regions"])
    return {"index": index, "label": r.label, "eps": threat.eps, **r.meta}


def _channels(model: nn.Module, out: Path, shape: Sequence[int], threat: ThreatModel, device: Any, layer: str | None,
              channels: Sequence[int] | None, n_channels: int, steps: int) -> dict[str, Any]:
    if layer is None:
        try:
            layer = last_conv_layer(model)
        except ValueError as e:
            raise Unavailable(str(e)) from None
    c = maximise_channels(model, shape, layer, channels, n_channels=n_channels, steps=steps, bounds=threat.bounds,
                          device=device)
    atomic_save_safetensors({"images": c.images, "start_activation": c.start_activation, "activation": c.activation},
                            out / VISUAL_ARTIFACTS["channel_visualisations"])
    return {**c.meta, "start_activation": [round(float(v), 4) for v in c.start_activation],
            "activation": [round(float(v), 4) for v in c.activation]}


def _shown(y: torch.Tensor, n: int) -> list[int]:
    """Positions of up to ``n`` queries, one per class first (in order of appearance), then the rest."""
    first_of_class: dict[int, int] = {}
    for i, c in enumerate(y.tolist()):
        first_of_class.setdefault(int(c), i)
    first = sorted(first_of_class.values())
    rest = [i for i in range(len(y)) if i not in first]
    return (first + rest)[:n]


def _neighbours(model: nn.Module, out: Path, x: torch.Tensor, y: torch.Tensor, train: tuple[torch.Tensor, torch.Tensor] | None,
                k: int, n_sample: int, n_bank: int, n_queries: int) -> dict[str, Any]:
    try:
        last_linear_layer(model)
    except ValueError as e:
        raise Unavailable(str(e)) from None
    if train is not None:
        m = min(n_sample, len(x))
        xb, yb = train[0][:n_bank], train[1][:n_bank]
        bank = f"the first {len(xb)} training images"
    else:  # no training set (robustlab report --model with --data): the images after the queries
        m = min(n_sample, len(x) // 2)
        xb, yb = x[m : m + n_bank], y[m : m + n_bank]
        bank = f"{len(xb)} other images of the data (no training set)"
    if len(xb) < k or m < 1:
        raise Unavailable(f"{len(xb)} images to search and {m} queries, for {k} neighbours each")
    xq, yq = x[:m], y[:m]
    res = compare_neighbours(model, xq, yq, xb, yb, k=k)
    show = torch.tensor(_shown(yq.cpu(), n_queries), dtype=torch.long)
    xbc, ybc = xb.detach().cpu(), yb.detach().cpu()
    pi, fi = res.pixel_indices[show], res.feature_indices[show]
    atomic_save_safetensors({
        "query": xq.detach().cpu()[show], "query_label": yq.cpu()[show],
        "pixel_images": xbc[pi], "pixel_labels": ybc[pi], "pixel_distances": res.pixel_distances[show],
        "feature_images": xbc[fi], "feature_labels": ybc[fi], "feature_distances": res.feature_distances[show],
    }, out / VISUAL_ARTIFACTS["nearest_neighbours"])
    return {"k": res.pixel_indices.shape[1], "layer": res.layer, "n_sample": m, "bank": bank, "query_indices": show.tolist(),
            "pixel_share": res.pixel_share, "feature_share": res.feature_share, "distance": "euclidean",
            "features": f"input of {res.layer} (the last nn.Linear)"}


def _section(name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``'s manifest entry with its file name, or ``{"missing": reason}`` when the model
    or the data cannot give the section (no conv layer, no ``nn.Linear``, too few images)."""
    try:
        return {"file": VISUAL_ARTIFACTS[name], **compute()}
    except Unavailable as e:
        return {"missing": str(e)}


def write_visual_artifacts(model: nn.Module, out_dir: str | Path, x: torch.Tensor, y: torch.Tensor, one: int,
                           threat: ThreatModel, shape: Sequence[int], run: str | Path | None = None, *,
                           device: torch.device | str = "cpu", grid: int = 41, radius: float | None = None,
                           layer: str | None = None, channels: Sequence[int] | None = None, n_channels: int = 8,
                           ascent_steps: int = 64, k: int = 5, n_queries: int = 4, n_sample: int = 200,
                           n_bank: int = 5000) -> dict[str, dict[str, Any]]:
    """Write the three visualisations for test images ``x, y`` (``x[one]`` is the decision-region
    image) into ``out_dir``; return their manifest entries by section name.

    ``run``: the run directory whose training set is the neighbours' bank (its first ``n_bank``
    images); without one the bank is the test images after the queries (the first ``n_sample``, at most half)."""
    from .train import load_run_data

    out = Path(out_dir)
    train = None
    if run is not None:
        xt, yt, _ = load_run_data(run, "train", device)
        train = (xt, yt)
    return {
        "decision_regions": _section("decision_regions", lambda: _regions(model, out, x[one], int(y[one]), int(one), threat,
                                                                          grid, radius)),
        "channel_visualisations": _section("channel_visualisations", lambda: _channels(
            model, out, shape, threat, device, layer, channels, n_channels, ascent_steps)),
        "nearest_neighbours": _section("nearest_neighbours", lambda: _neighbours(model, out, x, y, train, k, n_sample,
                                                                                 n_bank, n_queries)),
    }


__all__ = ["write_visual_artifacts"]
