"""evaluate() on a Dataset or DataLoader, per-sample random starts, and EvaluationResult.merge."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from robustlab import EvaluationResult, ThreatModel, evaluate
from robustlab.attacks import APGD, PGD, Noise, Square

THREAT = ThreatModel("linf", 0.15)


def _suite():
    """Random starts in every attack, so the batching would show if it mattered."""
    return [PGD(THREAT, steps=3, random_start=True, seed=0), Noise(THREAT, seed=1),
            APGD(THREAT, steps=3, seed=2), Square(THREAT, queries=10, seed=3)]


@pytest.fixture(scope="module")
def data(digits):
    _, _, xte, yte = digits
    return xte[:150], yte[:150]


@pytest.mark.parametrize("cascade", [True, False])
def test_loader_of_batch_64_equals_one_call(digits_model, data, cascade):
    x, y = data
    one = evaluate(digits_model, x, y, THREAT, _suite(), batch_size=40, cascade=cascade, keep_adversarial=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    streamed = evaluate(digits_model, loader, threat=THREAT, attacks=_suite(), batch_size=40, cascade=cascade,
                        keep_adversarial=True)
    assert 0 < one.robust_accuracy < one.clean_accuracy  # the attacks do something, not everything
    assert streamed.robust_accuracy == one.robust_accuracy and streamed.per_attack == one.per_attack
    assert torch.equal(streamed.robust, one.robust) and torch.equal(streamed.clean_correct, one.clean_correct)
    assert torch.equal(streamed.adversarial, one.adversarial)
    for a, b in zip(one.outcomes, streamed.outcomes, strict=True):
        assert torch.equal(a.attacked, b.attacked) and torch.equal(a.norms["linf"], b.norms["linf"])


def test_result_does_not_depend_on_the_attack_batch_size(digits_model, data):
    x, y = data
    a = evaluate(digits_model, x, y, THREAT, _suite(), batch_size=500)
    b = evaluate(digits_model, x, y, THREAT, _suite(), batch_size=7)
    c = evaluate(digits_model, TensorDataset(x, y), threat=THREAT, attacks=_suite(), batch_size=33)
    assert torch.equal(a.robust, b.robust) and torch.equal(a.robust, c.robust)


def test_parts_merge_into_the_whole(digits_model, data):
    x, y = data
    whole = evaluate(digits_model, x, y, THREAT, _suite(), batch_size=50, keep_adversarial=True)
    parts = [evaluate(digits_model, x[s], y[s], THREAT, _suite(), batch_size=50, keep_adversarial=True,
                      first_index=s.start) for s in (slice(0, 61), slice(61, 100), slice(100, 150))]
    merged = EvaluationResult.merge(*parts)
    assert merged.n == 150 and merged.robust_accuracy == whole.robust_accuracy
    assert torch.equal(merged.robust, whole.robust) and torch.equal(merged.adversarial, whole.adversarial)
    assert merged.per_attack == whole.per_attack
    # without first_index the parts reuse ids 0.. : a valid evaluation, but other random starts
    assert EvaluationResult.merge(parts[0]).to_dict(per_sample=False)["n"] == 61


def test_merge_refuses_parts_that_do_not_fit(digits_model, data):
    x, y = data
    a = evaluate(digits_model, x[:20], y[:20], THREAT, _suite()[:1])
    with pytest.raises(ValueError, match="threat"):
        EvaluationResult.merge(a, evaluate(digits_model, x[20:40], y[20:40], ThreatModel("linf", 0.1),
                                           [PGD(ThreatModel("linf", 0.1), steps=3, seed=0)]))
    with pytest.raises(ValueError, match="other attacks"):
        EvaluationResult.merge(a, evaluate(digits_model, x[20:40], y[20:40], THREAT, [PGD(THREAT, steps=4, seed=0)]))
    with pytest.raises(ValueError, match="cascade"):
        EvaluationResult.merge(a, evaluate(digits_model, x[20:40], y[20:40], THREAT, _suite()[:1], cascade=False))
    with pytest.raises(ValueError, match="at least one"):
        EvaluationResult.merge()


def test_accuracies_are_exact_counts(digits_model, data):
    x, y = data
    res = evaluate(digits_model, x[:100], y[:100], THREAT, _suite()[:1])
    assert res.clean_accuracy == int(res.clean_correct.sum()) / 100  # 0.92, never 0.9200000166893005
    assert res.robust_accuracy == int(res.robust.sum()) / 100


def test_bad_streams_are_refused(digits_model, data):
    x, y = data
    ds = TensorDataset(x, y)
    with pytest.raises(ValueError, match="shuffle"):
        evaluate(digits_model, DataLoader(ds, batch_size=8, shuffle=True), threat=THREAT, attacks=_suite())
    with pytest.raises(ValueError, match="y goes with x"):
        evaluate(digits_model, ds, y, THREAT, _suite())
    with pytest.raises(ValueError, match="y is missing"):
        evaluate(digits_model, x, threat=THREAT, attacks=_suite())
    with pytest.raises(ValueError, match="threat"):
        evaluate(digits_model, ds, attacks=_suite())
    with pytest.raises(ValueError, match="pairs"):
        evaluate(digits_model, DataLoader(TensorDataset(x), batch_size=8), threat=THREAT, attacks=_suite())
    with pytest.raises(ValueError, match="bounds|range"):
        evaluate(digits_model, TensorDataset(x * 3, y), threat=THREAT, attacks=_suite())
    with pytest.raises(ValueError, match="empty"):
        evaluate(digits_model, TensorDataset(x[:0], y[:0]), threat=THREAT, attacks=_suite())
