"""The BatchNorm-folded copy an evaluation attacks: same function as the model, verdicts by the model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab import ThreatModel
from robustlab.attacks import PGD
from robustlab.evaluation import evaluate
from robustlab.evaluation.model_copies import (
    CHUNK_BYTES,
    Chunked,
    ModelCopies,
    fold_batchnorms,
    model_copies,
    peak_activation_bytes,
    run_on_copy,
)
from robustlab.models import build_model

THREAT = ThreatModel("linf", 0.1)


@pytest.fixture(scope="module")
def bn_model(digits):
    """A small CNN with BatchNorm trained on digits (a few seconds): real running statistics."""
    from robustlab.training import Clean, TrainConfig, train

    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32, batchnorm=True)
    train(model, Clean(), (xtr, ytr), None, TrainConfig(epochs=4, batch_size=64, lr=3e-3, seed=0, progress=False))
    return model.eval()


def _state(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()])


def test_folding_removes_every_batchnorm_and_keeps_logits_and_input_gradients(bn_model, digits):
    x, y = digits[2][:100], digits[3][:100]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in bn_model.modules())
    assert n_bn == 2
    before = _state(bn_model)
    folded, count = fold_batchnorms(bn_model)
    assert count == n_bn
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    with torch.no_grad():
        ref = bn_model(x)
        assert torch.allclose(folded(x), ref, atol=1e-4 * float(ref.abs().max()))

    def grad(m):
        z = x.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(m(z), y), z)[0]

    g_ref = grad(bn_model)
    assert torch.allclose(grad(folded), g_ref, atol=1e-4 * float(g_ref.abs().max()))
    after = _state(bn_model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1:] == after[1:]


def test_evaluate_on_the_copy_reports_the_models_own_verdicts(bn_model, digits):
    x, y = digits[2][:150], digits[3][:150]
    fast = evaluate(bn_model, x, y, THREAT, "standard", keep_adversarial=True)
    exact = evaluate(bn_model, x, y, THREAT, "standard", keep_adversarial=True, copies=False)
    assert all(o.model_copy for o in fast.outcomes) and not any(o.model_copy for o in exact.outcomes)
    assert "model_copy" in fast.to_dict(per_sample=False)["attacks"]["apgd-ce"]
    # The verdicts are the model's: its prediction on each worst-case example decides robust.
    with torch.no_grad():
        judged = bn_model(fast.adversarial).argmax(1) == y
    assert torch.equal(fast.robust, judged & fast.clean_correct)
    # The same attacks on the same function: the per-sample outcomes agree (up to float rounding).
    assert float((fast.robust == exact.robust).float().mean()) >= 0.97
    assert abs(fast.robust_accuracy - exact.robust_accuracy) <= 0.02


def test_a_copy_that_disagrees_is_overruled_by_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    liar = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()  # another function altogether
    x, y = torch.rand(40, 1, 4, 4), torch.randint(0, 3, (40,))
    res = run_on_copy(ModelCopies(model, liar), PGD(THREAT, steps=5), x, y, torch.arange(40))
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
        assert not torch.equal(res.success, liar(res.x_adv).argmax(1) != y)


class _Noisy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.1 * torch.randn_like(x))


class _Branchy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) if x.sum() > 0 else -self.inner(x)  # data-dependent control flow


class _BatchCoupled(nn.Module):
    """Eval-mode outputs that depend on the other images of the batch: chunks would change them."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x - x.mean(0, keepdim=True))


def test_model_calls_are_cut_into_cache_sized_chunks_that_give_the_same_logits():
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1).eval()  # 28x28: a 32-channel first activation, 100 KB per image
    x = torch.rand(300, 1, 28, 28)
    assert peak_activation_bytes(model, x) == 32 * 28 * 28 * 4
    copies = model_copies(model, x)
    assert copies.chunk == CHUNK_BYTES // (32 * 28 * 28 * 4) and not copies.folded
    assert isinstance(copies.attacked, Chunked) and copies.attacked.inner is model  # no copy of the weights
    assert "chunks of" in copies.describe(PGD(THREAT))
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(copies.attacked(x), ref, atol=1e-5 * float(ref.abs().max()))
    coupled = _BatchCoupled(model).eval()
    assert model_copies(coupled, x).attacked is coupled, "a batch-coupled model must see whole batches"


def test_a_probe_too_small_to_try_a_chunk_is_not_the_last_word():
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1).eval()
    assert model_copies(model, torch.rand(30, 1, 28, 28)).chunk is None  # 30 images: nothing to cut
    assert model_copies(model, torch.rand(300, 1, 28, 28)).chunk == CHUNK_BYTES // (32 * 28 * 28 * 4)


@pytest.mark.parametrize("wrap", [_Noisy, _Branchy, lambda m: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))],
                         ids=["randomised", "control-flow", "no-batchnorm"])
def test_no_copy_where_it_would_not_be_the_same_function_or_would_not_help(wrap, bn_model, digits):
    model = wrap(copy.deepcopy(bn_model)).eval()
    copies = model_copies(model, digits[2][:64])
    assert copies.attacked is model and copies.describe(PGD(THREAT)) == ""


def test_no_copy_when_disabled_or_for_an_attack_that_keeps_train_mode(bn_model, digits):
    x = digits[2][:64]
    assert model_copies(bn_model, x, enabled=False).attacked is bn_model
    copies = model_copies(bn_model, x)
    assert copies.attacked is not bn_model and copies.folded
    assert copies.for_attack(PGD(THREAT)) is copies.attacked
    assert copies.for_attack(PGD(THREAT, eval_mode=False)) is bn_model


def test_the_cached_copy_follows_changes_to_the_model(bn_model, digits):
    model = copy.deepcopy(bn_model)
    x = digits[2][:64]
    first = model_copies(model, x)
    assert model_copies(model, x) is first  # cached while nothing changed
    with torch.no_grad():
        model.features[0][0].weight.mul_(1.5)  # an in-place change, as an optimiser step makes
    second = model_copies(model, x)
    assert second is not first
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(second.attacked(x), ref, atol=1e-4 * float(ref.abs().max()))
        assert not torch.allclose(first.attacked(x), ref, atol=1e-2 * float(ref.abs().max()))


def test_the_command_line_records_the_copy_and_exact_model_attacks_the_model_itself(tmp_path):
    import json

    from click.testing import CliRunner

    from robustlab.cli import main

    docs = {}
    for name, extra in (("copy", []), ("exact", ["--exact-model"])):
        r = CliRunner().invoke(main, ["evaluate", "--model", "zoo:fmnist-linf-0.1", "--dataset", "fashion-mnist", "--n", "40",
                                      "--attacks", "pgd", "--steps", "3", "--device", "cpu", "--quiet",
                                      "--out", str(tmp_path / name), *extra])
        assert r.exit_code == 0, r.output
        docs[name] = json.loads((tmp_path / name / "evaluation.json").read_text())["attacks"]["pgd"]
    assert "BatchNorm folded" in docs["copy"]["model_copy"] and "model_copy" not in docs["exact"]
    assert abs(docs["copy"]["robust_accuracy"] - docs["exact"]["robust_accuracy"]) <= 0.05
