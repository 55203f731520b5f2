"""Neural Structured Learning's graph regularisation (Bui et al. 2018; TensorFlow NSL).

The loss of a batch is ``CE + alpha * sum_ij w_ij D(h(x_i), h(x_j))`` over the batch's neighbour
pairs (i, j): samples that the graph links should have nearby embeddings ``h``. NSL reads the
graph from a file built offline; here it is built inside each batch, so no data preparation is
needed:

* ``neighbours="label"``: every unordered pair of samples of the same class;
* ``neighbours="knn"``: each sample's ``k`` nearest other samples of the batch (directed pairs),
  by Euclidean distance in pixel space (``knn_space="pixel"``, the default) or between the
  detached embeddings (``knn_space="embedding"``).

The weights are uniform, ``w_ij = 1 / (number of pairs)``, so the term is the mean distance over
the pairs and ``alpha`` does not depend on the batch size (0 when a batch has no pair).
``D`` is ``l2`` (squared Euclidean distance), ``l1`` (sum of absolute differences) or ``cosine``
(1 - cosine similarity). The embedding ``h`` is the logits (default) or the penultimate
features (the input of the model's last ``nn.Linear``), taken from the same forward pass as the
cross-entropy.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._torch import check_float, check_int
from ..distributed import unwrap

DISTANCES = ("l2", "l1", "cosine")
NEIGHBOURS = ("label", "knn")
EMBEDDINGS = ("logits", "penultimate")
KNN_SPACES = ("pixel", "embedding")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    key = str(value).strip().lower()
    if key not in allowed:
        raise ValueError(f"nsl-graph option {name} must be one of {', '.join(allowed)}, got {value!r}")
    return key


def pair_distance(a: torch.Tensor, b: torch.Tensor, distance: str = "l2") -> torch.Tensor:
    """Per-row distance between two (P, D) tensors: squared L2, L1, or 1 - cosine similarity."""
    distance = _choice("distance", distance, DISTANCES)
    a, b = a.flatten(1), b.flatten(1)
    if distance == "l2":
        return (a - b).pow(2).sum(1)
    if distance == "l1":
        return (a - b).abs().sum(1)
    return 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8)


def label_pairs(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j), i < j, of the samples with the same label."""
    same = (y[:, None] == y[None, :]).triu(diagonal=1)
    i, j = same.nonzero(as_tuple=True)
    return i, j


def knn_pairs(features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Directed index pairs (i, j): j is one of the ``k`` nearest other rows of ``features`` to
    row i (Euclidean distance; fewer when the batch has fewer than k + 1 samples)."""
    n = len(features)
    k = min(int(k), n - 1)
    if k < 1:
        empty = torch.zeros(0, dtype=torch.long, device=features.device)
        return empty, empty
    f = features.detach().flatten(1).float()
    d = torch.cdist(f, f)
    d.fill_diagonal_(math.inf)
    j = d.topk(k, dim=1, largest=False).indices.reshape(-1)
    i = torch.arange(n, device=features.device).repeat_interleave(k)
    return i, j


def graph_loss(embeddings: torch.Tensor, i: torch.Tensor, j: torch.Tensor, distance: str = "l2") -> torch.Tensor:
    """``sum_p w_p D(h_i, h_j)`` with uniform weights ``1 / P`` over the P pairs (0 for none)."""
    if len(i) == 0:
        return embeddings.sum() * 0.0  # keeps the graph (and the device) for backward
    return pair_distance(embeddings[i], embeddings[j], distance).mean()


class NSLGraph:
    """Graph regularisation: CE + ``alpha`` * mean neighbour distance of the embeddings."""

    name = "nsl-graph"

    def __init__(self, alpha: float = 0.1, distance: str = "l2", neighbours: str = "label", k: int = 3,
                 embedding: str = "logits", knn_space: str = "pixel") -> None:
        self.alpha = check_float("nsl-graph option alpha", alpha, 0.0)
        self.k = check_int("nsl-graph option k", k, 1)
        self.distance = _choice("distance", distance, DISTANCES)
        self.neighbours = _choice("neighbours", neighbours, NEIGHBOURS)
        self.embedding = _choice("embedding", embedding, EMBEDDINGS)
        self.knn_space = _choice("knn_space", knn_space, KNN_SPACES)

    def config(self) -> dict[str, Any]:
        """The name and options, as recorded in checkpoints."""
        return {"name": self.name, "alpha": self.alpha, "distance": self.distance, "neighbours": self.neighbours,
                "k": self.k, "embedding": self.embedding, "knn_space": self.knn_space}

    def pairs(self, x: torch.Tensor, y: torch.Tensor, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's neighbour pairs (see the module docstring)."""
        if self.neighbours == "label":
            return label_pairs(y)
        return knn_pairs(x if self.knn_space == "pixel" else embeddings, self.k)

    def embed(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding h) from one forward pass of ``model`` on ``x``."""
        if self.embedding == "logits":
            logits = model(x)
            return logits, logits
        from ..detection.features import capture_features, default_layer

        inner = unwrap(model)
        with capture_features(inner, default_layer(inner)) as store:
            logits = model(x)
        return logits, store["features"]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        logits, h = self.embed(model, x)
        i, j = self.pairs(x, y, h)
        ce = F.cross_entropy(logits, y)
        graph = graph_loss(h, i, j, self.distance)
        loss = ce + self.alpha * graph
        acc = (logits.detach().argmax(1) == y).float().mean()
        return loss, {"loss": loss.detach(), "ce": ce.detach(), "graph": graph.detach(), "pairs": float(len(i)),
                      "acc": acc}


__all__ = ["NSLGraph", "graph_loss", "knn_pairs", "label_pairs", "pair_distance"]
