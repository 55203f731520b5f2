"""Nearest neighbours in pixel and feature space (robustlab.evaluation.visual_neighbours)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from helpers.state import assert_same_state, snapshot
from robustlab.evaluation.visual_neighbours import (
    compare_neighbours,
    last_linear_layer,
    nearest_neighbours,
    penultimate_features,
    same_class_share,
)


def brute_force(queries: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every distance by a loop, sorted by (distance, index)."""
    idx, dist = [], []
    for q in queries.reshape(len(queries), -1).astype(np.float64):
        d = [float(np.sqrt(((b - q) ** 2).sum())) for b in bank.reshape(len(bank), -1).astype(np.float64)]
        order = sorted(range(len(d)), key=lambda i: (d[i], i))[:k]
        idx.append(order)
        dist.append([d[i] for i in order])
    return np.array(idx), np.array(dist)


def test_neighbours_equal_a_brute_force_search():
    rng = np.random.default_rng(0)
    bank = rng.random((60, 1, 5, 5), dtype=np.float32)
    bank[40] = bank[7]  # an exact tie: the lower index comes first
    queries = np.concatenate([rng.random((9, 1, 5, 5), dtype=np.float32), bank[7:8] + 0.01])
    idx, dist = nearest_neighbours(torch.from_numpy(queries), torch.from_numpy(bank), k=4, batch_size=3)
    want_idx, want_dist = brute_force(queries, bank, 4)
    assert idx.dtype == torch.int64 and idx.shape == (10, 4)
    assert np.array_equal(idx.numpy(), want_idx)
    assert np.allclose(dist.numpy(), want_dist, rtol=1e-9, atol=1e-9)
    assert idx[-1, :2].tolist() == [7, 40]


def test_same_class_share_is_a_count_of_matching_labels():
    neighbours = torch.tensor([[1, 1, 2], [0, 3, 3], [5, 5, 5]])
    queries = torch.tensor([1, 3, 4])
    # row 1: two 1s; row 2: two 3s; row 3: none -> 4 of 9
    assert same_class_share(neighbours, queries) == 4 / 9
    assert same_class_share(torch.tensor([[2]]), torch.tensor([2])) == 1.0


def test_features_are_the_input_of_the_last_linear(digits, digits_model):
    _, _, xte, _ = digits
    model = copy.deepcopy(digits_model).train()
    model.classifier[1].weight.grad = torch.ones_like(model.classifier[1].weight)
    before = snapshot(model)
    assert last_linear_layer(model) == "classifier.4"
    feats = penultimate_features(model, xte[:50], batch_size=16)
    assert_same_state(model, before)  # modes, weights, grads and hook counts as found
    with torch.no_grad():
        model.eval()
        want = model.classifier[:4](model.features(model.normalize(xte[:50])))
    assert feats.shape == (50, 64) and torch.allclose(feats, want, atol=1e-6)
    named = penultimate_features(digits_model, xte[:5], layer="classifier.1")
    assert named.shape == (5, 128)


def test_compare_neighbours_on_digits(digits, digits_model):
    xtr, ytr, xte, yte = digits
    xq, yq, xb, yb = xte[:60], yte[:60], xtr[:400], ytr[:400]
    res = compare_neighbours(digits_model, xq, yq, xb, yb, k=3)
    assert res.layer == "classifier.4"
    want_pix, _ = brute_force(xq.numpy(), xb.numpy(), 3)
    assert np.array_equal(res.pixel_indices.numpy(), want_pix)
    feats_q, feats_b = penultimate_features(digits_model, xq), penultimate_features(digits_model, xb)
    want_feat, want_d = brute_force(feats_q.numpy(), feats_b.numpy(), 3)
    assert np.array_equal(res.feature_indices.numpy(), want_feat)
    assert np.allclose(res.feature_distances.numpy(), want_d, rtol=1e-6)
    # the shares, counted by hand
    same_pix = sum(int(yb[j]) == int(yq[i]) for i in range(60) for j in want_pix[i])
    same_feat = sum(int(yb[j]) == int(yq[i]) for i in range(60) for j in want_feat[i])
    assert res.pixel_share == same_pix / 180 and res.feature_share == same_feat / 180


def test_training_makes_feature_neighbours_share_the_class(digits, digits_model):
    """The measured effect the report shows: the trained network's features group a class more
    tightly than pixels do, and more than the same network's features before training."""
    from robustlab.models import build_model

    xtr, ytr, xte, yte = digits
    args = (xte[:200], yte[:200], xtr[:500], ytr[:500])
    trained = compare_neighbours(digits_model, *args, k=5)
    torch.manual_seed(0)
    untrained = compare_neighbours(build_model("small-cnn", 10, 1, input_size=8, channels=(16, 32), hidden=64), *args, k=5)
    assert trained.feature_share > trained.pixel_share
    assert trained.feature_share > untrained.feature_share + 0.05


def test_bad_arguments(digits, digits_model):
    _, _, xte, yte = digits
    with pytest.raises(ValueError, match="k=5 neighbours asked for, but the bank has only 3"):
        nearest_neighbours(xte[:2], xte[:3], 5)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        nearest_neighbours(xte[:2], xte[:3], 0)
    with pytest.raises(ValueError, match="queries have 64 values per item, the bank 10"):
        nearest_neighbours(xte[:2], torch.zeros(4, 10), 1)
    with pytest.raises(ValueError, match="neighbour labels must be"):
        same_class_share(torch.zeros(3, 2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="differ in number"):
        compare_neighbours(digits_model, xte[:4], yte[:3], xte[4:10], yte[4:10])
    with pytest.raises(ValueError, match="no submodule 'head'"):
        penultimate_features(digits_model, xte[:2], layer="head")
    with pytest.raises(ValueError, match="no nn.Linear"):
        last_linear_layer(nn.Sequential(nn.Conv2d(1, 2, 3)))
