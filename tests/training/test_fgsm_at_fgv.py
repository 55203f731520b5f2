"""fgsm-at with attack=fgv trains on the fast gradient value's examples."""

import pytest
import torch

from robustlab.attacks import FGSM, FGV
from robustlab.models import build_model
from robustlab.threat import ThreatModel
from robustlab.training import build_objective


def _training_inputs(obj, model, x, y):
    """What the objective's training forward pass (train mode) was given."""
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()) if m.training else None)
    try:
        obj(model, x, y)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgv_training_examples_are_the_fgv_attacks(digits, norm):
    xtr, ytr, _, _ = digits
    x, y = xtr[:32], ytr[:32]
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32, batchnorm=True).train()
    eps = 0.1 if norm == "linf" else 1.0
    threat = ThreatModel(norm, eps)
    # Independent calls first: the objective's training pass then updates the BatchNorm statistics.
    expected, fgsm = FGV(threat)(model, x, y), FGSM(threat)(model, x, y)
    obj = build_objective("fgsm-at", eps=eps, norm=norm, attack="fgv")
    assert obj.config()["attack"] == "fgv"
    trained_on = _training_inputs(obj, model, x, y)
    assert torch.equal(trained_on[:32], x)
    assert torch.equal(trained_on[32:], expected)
    if norm == "linf":
        assert not torch.allclose(expected, fgsm)  # FGV moves only the largest coordinate by the full eps
        assert float((expected - x).abs().max()) <= eps + 1e-6
        assert (expected - x).abs().mean() < (fgsm - x).abs().mean()  # FGSM moves every coordinate by eps
    else:
        assert torch.allclose(expected, fgsm, atol=1e-6)  # in L2 the scaled gradient is FGSM-L2's step


def test_default_stays_fgsm_and_a_bad_attack_is_refused(digits):
    xtr, ytr, _, _ = digits
    x, y = xtr[:16], ytr[:16]
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32).train()
    expected = FGSM(ThreatModel("linf", 0.1))(model, x, y)
    obj = build_objective("fgsm-at", eps=0.1)
    assert obj.config()["attack"] == "fgsm"
    assert torch.equal(_training_inputs(obj, model, x, y)[16:], expected)
    with pytest.raises(ValueError, match="unknown attack 'pgd' for defense 'fgsm-at': expected one of fgsm, fgv"):
        build_objective("fgsm-at", attack="pgd")
