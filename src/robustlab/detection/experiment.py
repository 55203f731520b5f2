"""The detector experiment: train a detector on an attack's examples, then measure it on
held-out images under the plain attack and under :class:`AdaptiveDetectorAttack`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..attacks.base import Attack
from .adaptive import AdaptiveDetectorAttack
from .detector import Detector
from .metrics import roc_auc, threshold_at_fpr, tpr_at_fpr
from .training import craft, train_detector


def _rate(mask: torch.Tensor, of: torch.Tensor | None = None) -> float:
    if of is None:
        return float(mask.double().mean()) if mask.numel() else float("nan")
    n = int(of.sum())
    return float((mask & of).double().sum() / n) if n else float("nan")


def evaluate_detector(
    classifier: nn.Module,
    detector: Detector,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: dict[str, Attack],
    batch_size: int = 500,
    calibrate: bool = True,
) -> dict[str, Any]:
    """Clean scores (and, with ``calibrate``, the threshold at ``detector.target_fpr`` on them),
    then per attack: success rate on the classifier, ROC AUC clean-vs-adversarial, detection
    rate at the threshold (all examples, and the ones that fool the classifier), and the fraction
    of samples that fool the classifier *and* evade the detector."""
    cls_clean, det_clean = detector.scores(classifier, x, batch_size)
    if calibrate:
        detector.threshold = threshold_at_fpr(det_clean, detector.target_fpr)
    correct = cls_clean.argmax(1) == y
    flagged_clean = det_clean > detector.threshold
    out: dict[str, Any] = {
        "n": int(len(y)),
        "clean_accuracy": _rate(correct),
        "threshold": float(detector.threshold),
        "target_fpr": detector.target_fpr,
        "false_positive_rate": _rate(flagged_clean),
    }
    for name, attack in attacks.items():
        t0 = time.perf_counter()
        x_adv = craft(attack, classifier, x, y, batch_size)
        seconds = time.perf_counter() - t0
        cls_adv, det_adv = detector.scores(classifier, x_adv, batch_size)
        fooled = cls_adv.argmax(1) != y
        flagged = det_adv > detector.threshold
        labels = torch.cat([torch.zeros(len(det_clean)), torch.ones(len(det_adv))])
        out[name] = {
            "attack": repr(attack),
            "adversarial_accuracy": _rate(~fooled),
            "success_rate": _rate(fooled),
            "success_rate_on_correct": _rate(fooled, correct),
            "roc_auc": roc_auc(torch.cat([det_clean, det_adv]).cpu(), labels),
            "detection_rate": _rate(flagged),
            "detection_rate_on_successful": _rate(flagged, fooled),
            "fool_and_evade": _rate(fooled & ~flagged),
            "fool_and_evade_on_correct": _rate(fooled & ~flagged, correct),
            "seconds": round(seconds, 2),
        }
        out[name]["tpr_at_fpr"] = tpr_at_fpr(det_clean, det_adv, detector.target_fpr)[0]
    return out


def detector_experiment(
    classifier: nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    attack: Attack,
    *,
    eval_attack: Attack | None = None,
    adaptive_steps: int | None = None,
    lam: float = 1.0,
    adaptive_loss: str = "margin",
    kappa: float | None = 1.0,
    det_margin: float | None = 1.0,
    layer: str | None = None,
    hidden: Sequence[int] = (64,),
    epochs: int = 30,
    lr: float = 1e-3,
    seed: int = 0,
    target_fpr: float = 0.05,
    batch_size: int = 500,
) -> tuple[Detector, dict[str, Any]]:
    """Train a detector on ``attack``'s examples of ``train_data``, then evaluate it on
    ``test_data`` under the plain attack (``eval_attack``, default ``attack``) and under
    :class:`AdaptiveDetectorAttack` with the same budget (``adaptive_steps`` default: the plain
    attack's steps, or 20). The adaptive attack's default is the hinge form (margin loss capped
    at ``kappa``, detector logit counted down to ``threshold - det_margin``): on digits it
    fools-and-evades more often than the plain attack, where the uncapped ``ce - lam * logit``
    spends its budget on the detector and fools the classifier less."""
    t0 = time.perf_counter()
    det = train_detector(classifier, *train_data, attack, layer=layer, hidden=hidden, epochs=epochs, lr=lr,
                         seed=seed, target_fpr=target_fpr, attack_batch_size=batch_size)
    train_seconds = time.perf_counter() - t0
    plain = eval_attack or attack
    steps = adaptive_steps or getattr(plain, "steps", None) or 20
    adaptive = AdaptiveDetectorAttack(plain.threat, classifier, det, steps=steps, lam=lam, loss=adaptive_loss,
                                      kappa=kappa, det_margin=det_margin, seed=seed)
    metrics = evaluate_detector(classifier, det, *test_data, {"plain": plain, "adaptive": adaptive}, batch_size)
    metrics.update({"train_seconds": round(train_seconds, 2), "layer": det.layer, "capture": det.capture,
                    "n_train": int(len(train_data[1])), "detector_train": det.info.get("training", {}),
                    "lam": lam, "adaptive_loss": adaptive_loss, "kappa": kappa, "det_margin": det_margin,
                    "adaptive_steps": steps})
    return det, metrics
