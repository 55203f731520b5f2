"""Fooling images (``fooling-image``): synthesised from noise, inside the bounds, classified as the
target with the requested confidence on a small trained digits CNN (measured share), independent of
the input except for its shape, refused by evaluations and without a target, and runnable from
``robustlab attack --target K``. The registry-wide contract (bounds, model state, hostile input)
is checked in ``test_contract.py``."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import robustlab
from helpers.state import assert_same_state, assert_tensor_untouched, snapshot, snapshot_tensor
from robustlab import ThreatModel
from robustlab.attacks import ATTACKS, PGD, FoolingImage, require_eps_ball
from robustlab.cli import main
from robustlab.storage import save_model
from robustlab.storage.layout import ATTACK_EXAMPLES, ATTACK_SUMMARY

LINF = ThreatModel("linf", 0.1)
K = 10


@pytest.fixture(scope="module")
def batch(digits):
    _, _, x, y = digits
    return x[:30], y[:30]


def target_probability(model, x, target):
    with torch.no_grad():
        return model(x).softmax(1).gather(1, target[:, None]).squeeze(1)


def test_registered_as_a_targeted_attack_outside_the_ball():
    assert ATTACKS["fooling-image"] is FoolingImage
    assert FoolingImage.eps_ball is False and FoolingImage.needs_target is True
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="confidence"):
            FoolingImage(LINF, confidence=bad)


def test_images_of_the_target_class_with_the_requested_confidence(digits_model, batch):
    x, y = batch
    target = torch.arange(len(x)) % K  # every class, three times
    before, saved_x = snapshot(digits_model), snapshot_tensor(x)
    res = FoolingImage(LINF, confidence=0.9, seed=0).run(digits_model, x, y, target=target)
    assert_same_state(digits_model, before)
    assert_tensor_untouched(x, saved_x, "the caller's x")
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    p = target_probability(digits_model, res.x_adv, target)
    confident = float((p >= 0.9).float().mean())
    assert confident >= 0.9, confident
    with torch.no_grad():
        assert torch.equal(res.success, digits_model(res.x_adv).argmax(1) == target)
    # not a small perturbation of x: far outside the eps-ball for most samples
    assert float((res.distance > 3 * LINF.eps).float().mean()) >= 0.9


def test_a_lower_confidence_stops_sooner(digits_model, batch):
    """Each sample stops once the target reaches ``confidence``: a lower bar leaves the target's
    probability lower on the samples that stopped (same seed, same noise, same trajectories)."""
    x, y = batch
    target = torch.full_like(y, 3)
    low = FoolingImage(LINF, confidence=0.3, seed=1)(digits_model, x, target=target)
    high = FoolingImage(LINF, confidence=0.99, seed=1)(digits_model, x, target=target)
    p_low, p_high = target_probability(digits_model, low, target), target_probability(digits_model, high, target)
    assert float((p_low >= 0.3).float().mean()) >= 0.9
    assert float(p_low.mean()) < float(p_high.mean())


def test_the_output_ignores_x_except_its_shape(digits_model, batch):
    x, y = batch
    target = torch.full_like(y, 7)
    a = FoolingImage(LINF, steps=20, seed=3)(digits_model, x, y, target=target)
    b = FoolingImage(ThreatModel("l2", 2.0), steps=20, seed=3)(digits_model, torch.rand_like(x), target=target)
    assert torch.equal(a, b)  # other images, other eps and norm: the same noise, the same result


def test_evaluations_and_untargeted_calls_refuse_it(digits_model, batch):
    x, y = batch
    fooling = FoolingImage(LINF, steps=2)
    with pytest.raises(ValueError, match="not an eps-ball attack"):
        require_eps_ball(fooling)
    require_eps_ball(PGD(LINF, steps=1))  # an eps-ball attack passes
    with pytest.raises(ValueError, match="not an eps-ball attack"):
        robustlab.evaluate(digits_model, x, y, LINF, [PGD(LINF, steps=2, seed=0), fooling])
    with pytest.raises(ValueError, match="not an eps-ball attack.*--target K"):
        fooling(digits_model, x, y)


def test_robustlab_attack_runs_it_with_a_target(digits_model, tmp_path):
    from safetensors.torch import load_file

    save_model(digits_model, tmp_path / "run")
    args = ["attack", tmp_path / "run", "--dataset", "digits", "--attack", "fooling-image", "--n", "20",
            "--out", tmp_path / "adv", "--device", "cpu", "--attack-option", "seed=0"]
    r = CliRunner().invoke(main, [str(a) for a in args + ["--target", "4"]])
    assert r.exit_code == 0, (r.output, r.exception)
    saved = load_file(str(tmp_path / "adv" / ATTACK_EXAMPLES))
    assert bool((saved["pred_adv"] == 4).all())
    summary = json.loads((tmp_path / "adv" / ATTACK_SUMMARY).read_text())
    assert summary["target"] == 4 and summary["attack_name"] == "fooling-image"
    r = CliRunner().invoke(main, [str(a) for a in args])  # no --target: one error line, exit 2
    assert r.exit_code == 2 and "needs --target" in r.stderr
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "run"), "--dataset", "digits", "--attacks", "fooling-image",
                                  "--n", "20", "--out", str(tmp_path / "ev"), "--device", "cpu", "--quiet"])
    assert r.exit_code == 2 and "not an eps-ball attack" in r.stderr
