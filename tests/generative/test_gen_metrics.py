"""Inception Score and Fréchet distance against closed forms; the classifier is left as found."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers.state import assert_same_state, snapshot
from robustlab.generative.metrics import (
    class_histogram,
    classifier_outputs,
    features_frechet_distance,
    frechet_distance,
    inception_score,
)


def test_inception_score_of_a_uniform_classifier_is_one():
    assert inception_score(np.full((100, 10), 0.1))[0] == pytest.approx(1.0)


def test_inception_score_of_a_perfect_classifier_on_balanced_classes_is_the_class_count():
    probs = np.eye(10)[np.arange(1000) % 10]
    assert inception_score(probs)[0] == pytest.approx(10.0)
    collapsed = np.eye(10)[np.zeros(1000, dtype=int)]  # mode collapse: one class only
    assert inception_score(collapsed)[0] == pytest.approx(1.0)
    assert class_histogram(collapsed) == [1000] + [0] * 9


def test_inception_score_splits():
    probs = np.eye(4)[np.arange(400) % 4]
    mean, std = inception_score(probs, splits=4)
    assert mean == pytest.approx(4.0) and std == pytest.approx(0.0)
    with pytest.raises(ValueError):
        inception_score(probs, splits=0)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    assert features_frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_the_gaussian_closed_form():
    """Diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt(s1) - sqrt(s2))^2."""
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    # A rotated pair (non-diagonal, same rotation for both) gives the same distance.
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
    got = frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-7)
    # Commuting-free case: the 1-D formula (sigma1 - sigma2)^2 generalises; 1-D sanity:
    assert frechet_distance(np.zeros(1), np.eye(1) * 4, np.ones(1), np.eye(1)) == pytest.approx(1 + (2 - 1) ** 2)


def test_classifier_outputs_uses_the_penultimate_features_and_leaves_the_model_alone(tiny_classifier, digits):
    _, _, xte, _ = digits
    tiny_classifier.train()  # a mode other than eval must come back as it was
    before = snapshot(tiny_classifier)
    probs, feats = classifier_outputs(tiny_classifier, xte[:50])
    assert_same_state(tiny_classifier, before)
    tiny_classifier.eval()
    assert probs.shape == (50, 10) and torch.allclose(probs.sum(1), torch.ones(50), atol=1e-5)
    assert feats.shape == (50, 32)  # the MLP's hidden width: the input of its last linear layer
    assert not math.isnan(float(feats.sum()))
