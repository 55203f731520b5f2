"""Nearest neighbours in pixel space and in the model's feature space.

A query image's ``k`` nearest bank images (usually training images) by Euclidean distance,
once on the raw pixels and once on the input of the model's final ``nn.Linear`` (its
penultimate-layer representation, taken with a forward hook). Training pulls the images of one
class together in feature space, so there the neighbours usually share the query's class more
often than in pixel space: :func:`same_class_share` measures that over a sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._torch import check_int
from ..detection.features import default_layer, extract_features

#: The model's last ``nn.Linear`` (whose input is the penultimate representation): the detector's rule.
last_linear_layer = default_layer


def penultimate_features(model: nn.Module, x: torch.Tensor, layer: str | None = None, batch_size: int = 500) -> torch.Tensor:
    """The flattened input (N, D) of submodule ``layer`` (default: the last ``nn.Linear``) for
    images ``x``, in eval mode; the model is left as found and the hook removed (the detector's
    feature extraction, :func:`robustlab.detection.features.extract_features`)."""
    return extract_features(model, x, layer, capture="input", batch_size=check_int("batch_size", batch_size, 1))


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int,
                       batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``bank`` (N, ...) to each row of ``queries`` (Q, ...) by
    Euclidean distance on the flattened rows, nearest first (equal distances: lower index first).
    Returns indices (Q, k) int64 and distances (Q, k) float64, on the CPU."""
    k = check_int("k", k, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    q = queries.detach().flatten(1).to("cpu", torch.float64)
    b = bank.detach().flatten(1).to("cpu", torch.float64)
    if len(b) < k:
        raise ValueError(f"k={k} neighbours asked for, but the bank has only {len(b)} items")
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values per item, the bank {b.shape[1]}")
    b2 = (b * b).sum(1)
    idx, dist = [], []
    for i in range(0, len(q), batch_size):
        qi = q[i : i + batch_size]
        d2 = ((qi * qi).sum(1, keepdim=True) - 2 * qi @ b.T + b2).clamp_min(0)
        order = torch.sort(d2, dim=1, stable=True).indices[:, :k]
        idx.append(order)
        dist.append(d2.gather(1, order).sqrt())
    return torch.cat(idx), torch.cat(dist)


def same_class_share(neighbour_labels: torch.Tensor, query_labels: torch.Tensor) -> float:
    """The fraction of all neighbours (Q, k) whose label equals their query's (Q,)."""
    if neighbour_labels.dim() != 2 or query_labels.shape != (neighbour_labels.shape[0],):
        raise ValueError(f"neighbour labels must be (Q, k) and query labels (Q,), got {tuple(neighbour_labels.shape)} "
                         f"and {tuple(query_labels.shape)}")
    if neighbour_labels.numel() == 0:
        raise ValueError("no neighbours to count")
    same = neighbour_labels.cpu() == query_labels.cpu().view(-1, 1)
    return int(same.sum()) / same.numel()


@dataclass
class NeighbourComparison:
    """Each query's ``k`` nearest bank items in pixel and in feature space (indices into the
    bank, nearest first), with distances and the share of neighbours of the query's class."""

    pixel_indices: torch.Tensor  # (Q, k)
    feature_indices: torch.Tensor  # (Q, k)
    pixel_distances: torch.Tensor  # (Q, k)
    feature_distances: torch.Tensor  # (Q, k)
    pixel_share: float
    feature_share: float
    layer: str


def compare_neighbours(model: nn.Module, x_query: torch.Tensor, y_query: torch.Tensor, x_bank: torch.Tensor,
                       y_bank: torch.Tensor, k: int = 5, layer: str | None = None) -> NeighbourComparison:
    """Nearest neighbours of ``x_query`` among ``x_bank`` in pixel space and in the feature space
    of ``layer``'s input (default: the last ``nn.Linear``), and the same-class share in each."""
    if len(x_query) != len(y_query) or len(x_bank) != len(y_bank):
        raise ValueError(f"images and labels differ in number: {len(x_query)} queries / {len(y_query)} labels, "
                         f"{len(x_bank)} bank images / {len(y_bank)} labels")
    layer = last_linear_layer(model) if layer is None else layer
    pix_i, pix_d = nearest_neighbours(x_query, x_bank, k)
    feat_i, feat_d = nearest_neighbours(penultimate_features(model, x_query, layer),
                                        penultimate_features(model, x_bank, layer), k)
    yb = y_bank.cpu()
    return NeighbourComparison(pixel_indices=pix_i, feature_indices=feat_i, pixel_distances=pix_d, feature_distances=feat_d,
                               pixel_share=same_class_share(yb[pix_i], y_query), feature_share=same_class_share(yb[feat_i], y_query),
                               layer=layer)


__all__ = ["NeighbourComparison", "compare_neighbours", "last_linear_layer", "nearest_neighbours", "penultimate_features",
           "same_class_share"]
