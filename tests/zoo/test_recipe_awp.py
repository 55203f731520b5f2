"""Adversarial weight perturbation (``--defense-option awp_gamma=G`` for pgd-at and trades): the
perturbation's per-layer norm ratio is gamma and it points along the loss gradient; the objective
leaves the weights exactly as found; the update it causes is the gradient at the perturbed weights,
computed here independently on a copy of the model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from helpers.state import assert_same_state, snapshot
from robustlab.models import build_model
from robustlab.training import TrainConfig, build_objective, train
from robustlab.training.awp import awp_loss, weight_perturbation

GAMMA = 0.01


def _model(batchnorm: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("small-cnn", 10, 1, input_size=8, channels=(4, 8), hidden=16, batchnorm=batchnorm).train()


def _ce(x, y):
    return lambda m: (F.cross_entropy(m(x), y), {})


def test_each_weight_tensor_moves_by_gamma_times_its_norm_along_the_gradient(digits):
    xtr, ytr, _, _ = digits
    x, y = xtr[:32], ytr[:32]
    model = _model()
    v = weight_perturbation(model, _ce(x, y), GAMMA)
    weights = {n: p for n, p in model.named_parameters() if p.dim() > 1}
    assert set(v) == set(weights) and len(v) == 4  # two conv, two linear weight tensors; no biases
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(x), y).backward()
    grads = dict(reference.named_parameters())
    for n, w in weights.items():
        assert float(v[n].norm() / w.detach().norm()) == pytest.approx(GAMMA, rel=1e-5), n
        cos = F.cosine_similarity(v[n].flatten(), grads[n].grad.flatten(), dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-5), n


def test_weights_are_restored_exactly_and_the_step_uses_the_perturbed_gradient(digits):
    xtr, ytr, _, _ = digits
    x, y = xtr[:32], ytr[:32]
    model = _model()
    before = snapshot(model)
    loss, _ = awp_loss(model, _ce(x, y), GAMMA)
    assert_same_state(model, before)  # weights, modes, flags, no .grad left behind

    # independently: perturb a copy by gamma * ||w|| * g / ||g|| per weight tensor, take the gradient there
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y).backward()
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() > 1:
                p.add_(GAMMA * p.norm() * p.grad / p.grad.norm())
            p.grad = None
    ref_loss = F.cross_entropy(ref(x), y)
    ref_loss.backward()
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-6)

    lr = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss.backward()
    opt.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(p, w0[n] - lr * q.grad, atol=1e-6), n  # w - lr * grad(w + v): the perturbation is gone


def test_batchnorm_statistics_move_as_one_forward_at_the_perturbed_weights(digits):
    xtr, ytr, _, _ = digits
    x, y = xtr[:32], ytr[:32]
    model = _model(batchnorm=True)
    ref = copy.deepcopy(model)
    v = weight_perturbation(copy.deepcopy(model), _ce(x, y), GAMMA)
    awp_loss(model, _ce(x, y), GAMMA)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n in v:
                p.add_(v[n])
        ref(x)
    for (n, b), r in zip(model.named_buffers(), ref.buffers()):
        assert torch.allclose(b.float(), r.float(), atol=1e-6), n


@pytest.mark.parametrize("defense", ["pgd-at", "trades"])
def test_awp_objectives_train_and_record_gamma(defense, digits):
    xtr, ytr, _, _ = digits
    obj = build_objective(defense, eps=0.1, steps=2, awp_gamma=0.005)
    assert obj.config()["awp_gamma"] == 0.005
    assert "awp_gamma" not in build_objective(defense, eps=0.1).config()  # off: configs as before
    model = _model(batchnorm=True)
    result = train(model, obj, (xtr[:128], ytr[:128]), None, TrainConfig(epochs=1, batch_size=64, progress=False,
                                                                          verbose=False))
    assert result.history[0]["train_loss"] > 0
    with pytest.raises(ValueError, match="awp_gamma must be"):
        build_objective(defense, awp_gamma=-0.1)
    with pytest.raises(ValueError, match="awp_gamma"):
        build_objective("fgsm-at", awp_gamma=0.005)  # not an option of the other defenses
