"""The SafetyNet-style detector, its metrics, files, the adaptive attack and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from robustlab.attacks import PGD
from robustlab.detection import (
    AdaptiveDetectorAttack,
    Detector,
    FeatureDetector,
    default_layer,
    evaluate_detector,
    extract_features,
    roc_auc,
    roc_curve,
    threshold_at_fpr,
    tpr_at_fpr,
    train_detector,
)
from robustlab.runs.train import load_run_data
from robustlab.storage import CheckpointError, save_model
from robustlab.threat import ThreatModel

THREAT = ThreatModel("linf", 0.1)


def _assert_attack_metrics(r, y, clean_logits, d_clean, adv_logits, d_adv, threshold):
    """One attack's numbers from evaluate_detector, recomputed here from the scores (AUC by sklearn)."""
    from sklearn.metrics import roc_auc_score

    correct, fooled, flagged = clean_logits.argmax(1) == y, adv_logits.argmax(1) != y, d_adv > threshold
    labels = torch.cat([torch.zeros(len(d_clean)), torch.ones(len(d_adv))])
    assert r["roc_auc"] == pytest.approx(roc_auc_score(labels.numpy(), torch.cat([d_clean, d_adv]).numpy()), abs=1e-9)
    assert r["success_rate"] == pytest.approx(fooled.double().mean().item())
    assert r["success_rate_on_correct"] == pytest.approx(((fooled & correct).sum() / correct.sum()).item())
    assert r["detection_rate"] == pytest.approx(flagged.double().mean().item())
    assert r["detection_rate_on_successful"] == pytest.approx(((flagged & fooled).sum() / fooled.sum()).item())
    assert r["fool_and_evade"] == pytest.approx((fooled & ~flagged).double().mean().item())
    assert r["tpr_at_fpr"] == r["detection_rate"]  # the same calibrated threshold


@pytest.fixture(scope="module")
def trained(digits_model, digits):
    xtr, ytr, xte, yte = digits
    det = train_detector(digits_model, xtr[:600], ytr[:600], PGD(THREAT, steps=10, seed=0), epochs=30, seed=0)
    return det, (xte[:300], yte[:300])


# --- metrics ----------------------------------------------------------------------------------
def test_roc_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (300,), generator=g)
    scores = torch.randint(0, 12, (300,), generator=g).float() + labels * 2.0  # many ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)
    assert roc_auc(torch.tensor([0.0, 1.0]), torch.tensor([0, 1])) == 1.0
    assert roc_auc(torch.tensor([1.0, 0.0]), torch.tensor([0, 1])) == 0.0
    assert roc_auc(torch.ones(4), torch.tensor([0, 1, 0, 1])) == 0.5
    # by hand: of the 4 (positive, negative) pairs, 0.35 > 0.1, 0.8 > 0.1 and 0.8 > 0.4 are ordered right
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    # a tie between a positive and a negative counts one half: (1 + 0.5 + 1 + 1) / 4
    assert roc_auc(torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.875
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))  # one class only


def test_roc_curve_and_tpr_at_fpr():
    g = torch.Generator().manual_seed(1)
    clean, adv = torch.randn(200, generator=g), torch.randn(100, generator=g) + 1.5
    scores, labels = torch.cat([clean, adv]), torch.cat([torch.zeros(200), torch.ones(100)])
    fpr, tpr, thr = roc_curve(scores, labels)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert (fpr.diff() >= 0).all() and (tpr.diff() >= 0).all() and (thr.diff() < 0).all()
    assert torch.trapezoid(tpr, fpr) == pytest.approx(roc_auc(scores, labels), abs=1e-9)
    rate, actual_fpr, t = tpr_at_fpr(clean, adv, 0.05)
    assert actual_fpr <= 0.05 and actual_fpr == pytest.approx(0.05, abs=0.006)
    assert rate == pytest.approx(float((adv > t).float().mean()))
    # the same point is on the ROC curve (rule score >= thr on the next-higher score)
    assert t == threshold_at_fpr(clean, 0.05)
    assert threshold_at_fpr(torch.arange(100.0), 0.0) == 99.0  # nothing clean flagged


# --- features and the head ------------------------------------------------------------------------
def test_features_are_the_input_of_the_last_linear(digits_model, digits):
    x = digits[2][:16]
    assert default_layer(digits_model) == "classifier.4"
    feats = extract_features(digits_model, x)
    with torch.no_grad():
        ref = digits_model.classifier[:4](digits_model.features(digits_model.normalize(x)))
    assert torch.allclose(feats, ref)
    out = extract_features(digits_model, x, layer="features", capture="output")
    assert out.shape == (16, 32 * 2 * 2)
    with pytest.raises(ValueError, match="no submodule"):
        extract_features(digits_model, x, layer="nope")


def test_detector_trains_and_separates_plain_pgd(trained, digits_model):
    det, (x, y) = trained
    assert det.info["training"]["train_accuracy"] > 0.6
    res = evaluate_detector(digits_model, det, x, y, {"plain": PGD(THREAT, steps=20, seed=1)})
    assert res["false_positive_rate"] <= 0.05
    clean_logits, d_clean = det.scores(digits_model, x)
    assert res["threshold"] == det.threshold == threshold_at_fpr(d_clean, 0.05)
    assert res["false_positive_rate"] == pytest.approx((d_clean > det.threshold).double().mean().item())
    adv_logits, d_adv = det.scores(digits_model, PGD(THREAT, steps=20, seed=1)(digits_model, x, y))
    _assert_attack_metrics(res["plain"], y, clean_logits, d_clean, adv_logits, d_adv, det.threshold)
    assert res["plain"]["roc_auc"] > 0.6
    assert res["plain"]["detection_rate"] > 0.1  # well above the 5% false alarms
    assert res["plain"]["success_rate"] > 0.2


def test_adaptive_attack_with_lam_zero_is_the_plain_attack(trained, digits_model):
    det, (x, y) = trained
    x, y = x[:100], y[:100]
    plain = PGD(THREAT, steps=10, seed=3)(digits_model, x, y)
    adaptive = AdaptiveDetectorAttack(THREAT, digits_model, det, steps=10, lam=0.0, seed=3)
    assert not adaptive.require_evasion
    assert torch.equal(adaptive(digits_model, x, y), plain)


def test_adaptive_loss_combines_classifier_and_detector(trained, digits_model):
    det, (x, y) = trained
    x, y = x[:50], y[:50]
    atk = AdaptiveDetectorAttack(THREAT, digits_model, det, steps=5, lam=2.5, seed=0)
    with torch.no_grad():
        logits, d = det.scores(digits_model, x)
        loss, succ, _ = atk._objective(digits_model, x, y, None)
    assert torch.allclose(loss, F.cross_entropy(logits, y, reduction="none") - 2.5 * d, atol=1e-5)
    assert torch.equal(succ, (logits.argmax(1) != y) & (d <= det.threshold))
    hinge = AdaptiveDetectorAttack(THREAT, digits_model, det, steps=5, lam=1.0, loss="margin", kappa=0.5,
                                   det_margin=1.0)
    with torch.no_grad():
        loss_h, _, _ = hinge._objective(digits_model, x, y, None)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    margin = logits.scatter(1, y[:, None], float("-inf")).amax(1) - z_y
    ref = margin.clamp(max=0.5) - d.clamp(min=det.threshold - 1.0)
    assert torch.allclose(loss_h, ref, atol=1e-5)


def test_adaptive_attack_evades_the_detector(trained, digits_model):
    det, (x, y) = trained
    strong = AdaptiveDetectorAttack(THREAT, digits_model, det, steps=20, lam=10.0, seed=1)
    hinge = AdaptiveDetectorAttack(THREAT, digits_model, det, steps=20, lam=1.0, loss="margin", kappa=1.0,
                                   det_margin=1.0, seed=1)
    res = evaluate_detector(digits_model, det, x, y, {"plain": PGD(THREAT, steps=20, seed=1), "strong": strong,
                                                      "hinge": hinge})
    assert res["strong"]["detection_rate"] < res["plain"]["detection_rate"] - 0.05
    assert res["hinge"]["detection_rate"] < res["plain"]["detection_rate"] - 0.05
    # the hinge form keeps fooling the classifier: more samples fool it *and* get past the detector
    assert res["hinge"]["fool_and_evade"] >= res["plain"]["fool_and_evade"]


def test_adaptive_attack_keeps_model_and_detector_state(trained, digits_model):
    det, (x, y) = trained
    det.head.train()
    flags = [p.requires_grad for p in det.head.parameters()]
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    atk = AdaptiveDetectorAttack(THREAT, digits_model, det, steps=3, lam=1.0, seed=0)
    x_adv = atk(digits_model, x[:20], y[:20])
    assert THREAT.contains(x_adv, x[:20]).all()
    assert det.head.training and [p.requires_grad for p in det.head.parameters()] == flags
    assert all(p.grad is None for p in det.head.parameters())
    assert all(torch.equal(v, digits_model.state_dict()[k]) for k, v in before.items())
    det.head.eval()
    other = type(digits_model)(input_size=8, channels=(16, 32), hidden=64)
    with pytest.raises(ValueError, match="built for"):
        atk(other, x[:4], y[:4])


# --- files --------------------------------------------------------------------------------------
def test_detector_save_load_round_trip(trained, digits_model, tmp_path):
    det, (x, _) = trained
    det.save(tmp_path / "d", note="hi")
    meta = json.loads((tmp_path / "d" / "detector.json").read_text())
    assert meta["format"] == "robustlab-detector" and meta["note"] == "hi" and meta["layer"] == "classifier.4"
    loaded = Detector.load(tmp_path / "d")
    assert loaded.threshold == det.threshold and loaded.layer == det.layer
    for (k, v), (k2, v2) in zip(det.head.state_dict().items(), loaded.head.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(loaded.scores(digits_model, x[:32])[1], det.scores(digits_model, x[:32])[1])
    meta["architecture"]["hidden"] = [32]
    (tmp_path / "d" / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        Detector.load(tmp_path / "d")
    meta["architecture"]["hidden"] = [64]
    (tmp_path / "d" / "detector.json").write_text(json.dumps(dict(meta, format_version=2)))
    with pytest.raises(CheckpointError, match="format_version"):
        Detector.load(tmp_path / "d")
    (tmp_path / "d" / "detector.json").write_text(json.dumps(meta))
    (tmp_path / "d" / "detector.safetensors").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        Detector.load(tmp_path / "d")


def test_logistic_regression_head():
    head = FeatureDetector(5, hidden=())
    assert len([m for m in head.modules() if isinstance(m, torch.nn.Linear)]) == 1
    assert head(torch.randn(3, 5)).shape == (3,)


def test_cli_train_detector(digits_model, tmp_path):
    from click.testing import CliRunner

    from robustlab.cli import main

    run = tmp_path / "run"
    save_model(digits_model, run, dataset={"name": "digits"})
    out = tmp_path / "det"
    r = CliRunner().invoke(main, ["train-detector", str(run), "--attack", "pgd", "--eps", "0.1", "--steps", "5",
                                  "--eval-steps", "5", "--n-train", "300", "--n-test", "120", "--epochs", "10",
                                  "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "plain" in r.output and "adaptive" in r.output
    assert {p.name for p in out.iterdir()} >= {"detector.safetensors", "detector.json", "metrics.json"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 120 and metrics["n_train"] == 300
    # recompute the numbers from the saved detector, the run's test images and the same attacks
    det = Detector.load(out)
    assert det.layer == "classifier.4" and det.threshold == metrics["threshold"]
    x, y, _ = load_run_data(run, "test", "cpu", limit=120)
    clean_logits, d_clean = det.scores(digits_model, x)
    assert metrics["clean_accuracy"] == pytest.approx((clean_logits.argmax(1) == y).double().mean().item())
    assert metrics["false_positive_rate"] == pytest.approx((d_clean > det.threshold).double().mean().item())
    attacks = {"plain": PGD(THREAT, steps=5, seed=1),  # the CLI's evaluation attack: --seed 0, plus 1
               "adaptive": AdaptiveDetectorAttack(THREAT, digits_model, det, steps=5, lam=1.0, loss="margin",
                                                  kappa=1.0, det_margin=1.0, seed=0)}
    for name, attack in attacks.items():
        adv_logits, d_adv = det.scores(digits_model, attack(digits_model, x, y))
        _assert_attack_metrics(metrics[name], y, clean_logits, d_clean, adv_logits, d_adv, det.threshold)
    bad = CliRunner().invoke(main, ["train-detector", str(run), "--fpr", "2", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--fpr" in bad.output
