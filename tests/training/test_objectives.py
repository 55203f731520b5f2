"""Each objective's loss is what it claims to be."""

import copy

import pytest
import torch
import torch.nn.functional as F

from robustlab.models import build_model
from robustlab.training import OBJECTIVES, build_objective
from robustlab.training.objectives import ALP, FGSMAT, PGDAT, TRADES, AdvReg, Clean, FastAT, Mix, NoiseTraining, kl_per_sample


@pytest.fixture()
def batch(digits):
    xtr, ytr, _, _ = digits
    return xtr[:32], ytr[:32]


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32, batchnorm=True).train()


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_gives_a_finite_differentiable_loss_and_keeps_train_mode(name, model, batch):
    x, y = batch
    options = {"clean": {}, "nsl-graph": {}, "noise": {"alpha": 0.1}}.get(name, {"eps": 0.1})
    obj = build_objective(name, **options)
    if hasattr(obj, "prepare"):  # e.g. advprop's auxiliary BatchNorms
        obj.prepare(model)
    if hasattr(obj, "setup"):
        obj.setup(model, batch)
    loss, logs = obj(model, x, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.training, "crafting must not leave the model in eval mode"
    assert obj.config()["name"] == name


def test_fgsm_at_is_clean_plus_fgsm_loss(model, batch):
    x, y = batch
    obj = FGSMAT(eps=0.1)
    model.eval()  # compare without BatchNorm batch statistics coupling the two halves
    loss, logs = obj(model, x, y)
    x_adv = obj.attack(model, x, y)
    assert not torch.equal(x_adv, x)
    ref = F.cross_entropy(model(x), y) + F.cross_entropy(model(x_adv), y)
    assert torch.allclose(loss, ref, atol=1e-5)
    assert torch.allclose(logs["adv_loss"], F.cross_entropy(model(x_adv), y), atol=1e-5)


def test_alp_with_lambda_zero_equals_its_ce_terms(model, batch):
    x, y = batch
    model.eval()
    alp = ALP(eps=0.1, lam=0.0, clean_weight=0.3, adv_weight=0.7)
    x_adv = alp.attack(model, x, y)
    ce_c, ce_a, pair, _ = alp.loss_terms(model, x, x_adv, y)
    assert torch.allclose(ce_c, F.cross_entropy(model(x), y), atol=1e-6)
    assert torch.allclose(ce_a, F.cross_entropy(model(x_adv), y), atol=1e-6)
    assert torch.allclose(pair, (model(x) - model(x_adv)).pow(2).sum(1).mean(), atol=1e-5)
    torch.manual_seed(1)
    loss, _ = alp(model, x, y)
    torch.manual_seed(1)
    x_adv = alp.attack(model, x, y)
    assert torch.allclose(loss, 0.3 * F.cross_entropy(model(x), y) + 0.7 * F.cross_entropy(model(x_adv), y), atol=1e-5)


def test_trades_kl_is_zero_on_identical_inputs_and_positive_on_adversarial(model, batch):
    x, y = batch
    model.eval()
    t = TRADES(eps=0.1, beta=6.0)
    ce, kl, _ = t.loss_terms(model, x, x.clone(), y)
    assert float(kl.detach()) == pytest.approx(0.0, abs=1e-7)
    assert torch.allclose(ce, F.cross_entropy(model(x), y), atol=1e-6)
    x_adv = t.craft(model, x, y)
    _, kl_adv, _ = t.loss_terms(model, x, x_adv, y)
    # the crafted point raises the KL more than a random point of the same ball
    _, kl_rand, _ = t.loss_terms(model, x, (x + 0.1 * torch.randn_like(x).sign()).clamp(0, 1), y)
    assert float(kl_adv) > float(kl_rand) > 0
    assert torch.allclose(kl_per_sample(model(x), model(x)), torch.zeros(len(x)), atol=1e-6)


@pytest.mark.parametrize("fraction,expected", [(0.2, 6), (0.0, 0), (1.0, 32), (0.5, 16)])
def test_mix_uses_the_stated_fraction(fraction, expected, model, batch):
    x, y = batch
    m = Mix(eps=0.1, clean_fraction=fraction, steps=2)
    assert m.split(32) == expected
    seen = []
    orig = m.attack.__class__.__call__

    def spy(self, model, xs, ys=None, **kw):
        seen.append(len(xs))
        return orig(self, model, xs, ys, **kw)

    m.attack.__class__.__call__ = spy
    try:
        _, logs = m(model, x, y)
    finally:
        m.attack.__class__.__call__ = orig
    assert logs["clean_count"] == expected
    assert seen == ([32 - expected] if expected < 32 else [])
    with pytest.raises(ValueError, match="clean_fraction"):
        Mix(clean_fraction=1.5)


def test_pgd_at_predicted_labels_and_mixed_loss(model, batch):
    x, y = batch
    model.eval()
    obj = PGDAT(eps=0.1, steps=3, predicted_labels=True, mixed=True)
    pred = model(x).argmax(1)
    assert torch.equal(obj._labels(model, x, y, True), pred)
    torch.manual_seed(0)
    loss, _ = obj(model, x, y)
    torch.manual_seed(0)
    x_adv = obj.attack(model, x, pred)
    assert torch.allclose(loss, 0.5 * (F.cross_entropy(model(x), y) + F.cross_entropy(model(x_adv), y)), atol=1e-5)


def test_adv_reg_neighbour_is_a_normalised_gradient_step(model, batch):
    x, y = batch
    model.eval()
    obj = AdvReg(adv_step_size=0.05, multiplier=0.2)
    x_nbr = obj.attack(model, x, y)
    inside = (x > 0.05) & (x < 0.95)
    assert torch.allclose((x_nbr - x).abs()[inside], torch.full_like(x[inside], 0.05), atol=1e-6)
    loss, _ = obj(model, x, y)
    assert torch.allclose(loss, F.cross_entropy(model(x), y) + 0.2 * F.cross_entropy(model(x_nbr), y), atol=1e-5)


def test_noise_training_perturbs_by_alpha_signs(batch):
    x, y = batch
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, inp):
            seen.append(inp)
            return torch.zeros(len(inp), 10, requires_grad=True)

    NoiseTraining(alpha=0.1)(Spy(), x, y)
    d = (seen[0] - x)[(x > 0.1) & (x < 0.9)]
    assert torch.allclose(d.abs(), torch.full_like(d, 0.1), atol=1e-6)
    assert 0.4 < float((d > 0).float().mean()) < 0.6


def test_unknown_defense_and_options():
    with pytest.raises(ValueError, match="unknown defense 'madry'"):
        build_objective("madry")
    with pytest.raises(ValueError, match="unknown option.*stepz"):
        build_objective("pgd-at", stepz=3)


class _LastForward(torch.nn.Module):
    """Wraps a model and keeps the input and logits of its last train-mode forward pass."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.last = None

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.last = (x.detach().clone(), out.detach())
        return out


@pytest.mark.parametrize("make", [lambda ls: Clean(label_smoothing=ls),
                                  lambda ls: PGDAT(eps=0.1, steps=3, label_smoothing=ls),
                                  lambda ls: FastAT(eps=0.1, check_every=0, label_smoothing=ls)],
                         ids=["clean", "pgd-at", "fast-at"])
def test_label_smoothing_is_the_closed_form_and_leaves_the_crafted_examples_alone(make, model, batch):
    x, y = batch
    ls = 0.2
    seen = {}
    for value in (0.0, ls):
        # A fresh copy each time: the train-mode forward moves BatchNorm's running statistics,
        # which the eval-mode crafting of the next call would otherwise see.
        spy = _LastForward(copy.deepcopy(model)).train()
        torch.manual_seed(0)
        loss, _ = make(value)(spy, x, y)
        seen[value] = (loss.detach(), *spy.last)
    loss, x_trained, logits = seen[ls]
    assert torch.equal(x_trained, seen[0.0][1]), "smoothing must not change the examples trained on"
    logp = F.log_softmax(logits, 1)
    # (1 - ls) * CE against the label + ls * CE against the uniform distribution over the 10 classes.
    ref = ((1 - ls) * -logp.gather(1, y[:, None]).squeeze(1) + ls * -logp.mean(1)).mean()
    assert torch.allclose(loss, ref, atol=1e-5)
    assert torch.allclose(seen[0.0][0], -logp.gather(1, y[:, None]).mean(), atol=1e-5)
    assert not torch.allclose(loss, seen[0.0][0], atol=1e-3)
    assert make(ls).config()["label_smoothing"] == ls
    assert "label_smoothing" not in make(0.0).config(), "the default stays out of recorded configs"


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_label_smoothing_outside_zero_one_is_refused(bad):
    for name, opts in (("clean", {}), ("pgd-at", {"eps": 0.1}), ("fast-at", {"eps": 0.1})):
        with pytest.raises(ValueError, match="label_smoothing must be in \\[0, 1\\)"):
            build_objective(name, label_smoothing=bad, **opts)
