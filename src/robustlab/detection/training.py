"""Training a detector: craft the attack's examples for the training images, take the
classifier's features of the clean and the adversarial images, and fit a :class:`FeatureDetector`
on them with binary cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.base import Attack
from .detector import Detector, FeatureDetector
from .features import default_layer, extract_features
from .metrics import threshold_at_fpr


def craft(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``attack``'s examples for ``x`` (batched)."""
    return torch.cat([attack(model, x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def fit_head(
    head: FeatureDetector,
    f_clean: torch.Tensor,
    f_adv: torch.Tensor,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> list[float]:
    """Binary cross-entropy training of ``head`` on clean (label 0) vs adversarial (label 1)
    features; returns the mean loss per epoch."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    feats = torch.cat([f_clean, f_adv]).detach()
    labels = torch.cat([torch.zeros(len(f_clean)), torch.ones(len(f_adv))]).to(feats)
    head.fit_standardisation(feats)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    losses = []
    head.train()
    for _ in range(int(epochs)):
        order = torch.randperm(len(feats), generator=gen).to(feats.device)
        total = 0.0
        for i in range(0, len(feats), batch_size):
            idx = order[i : i + batch_size]
            loss = F.binary_cross_entropy_with_logits(head(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(feats))
    head.zero_grad(set_to_none=True)
    head.eval()
    return losses


def train_detector(
    classifier: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack,
    *,
    layer: str | None = None,
    capture: str = "input",
    hidden: Sequence[int] = (64,),
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    target_fpr: float = 0.05,
    attack_batch_size: int = 500,
) -> Detector:
    """Craft ``attack``'s examples for the training images, take the classifier's features of the
    clean and the adversarial images, and fit a :class:`FeatureDetector` on them. The threshold
    is provisionally calibrated on the clean training scores (``detector_experiment``
    re-calibrates it on held-out clean images)."""
    layer = default_layer(classifier) if layer is None else layer
    x_adv = craft(attack, classifier, x, y, attack_batch_size)
    f_clean = extract_features(classifier, x, layer, capture, attack_batch_size)
    f_adv = extract_features(classifier, x_adv, layer, capture, attack_batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        head = FeatureDetector(f_clean.shape[1], hidden).to(f_clean.device)
    losses = fit_head(head, f_clean, f_adv, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    with torch.no_grad():
        thr = threshold_at_fpr(head(f_clean), target_fpr)
        train_acc = float(((head(torch.cat([f_clean, f_adv])) > 0).float()
                           == torch.cat([torch.zeros(len(f_clean)), torch.ones(len(f_adv))]).to(f_clean)).float().mean())
    info = {"training": {"n": int(len(x)), "attack": repr(attack), "epochs": int(epochs), "lr": lr,
                         "batch_size": batch_size, "seed": seed, "final_loss": losses[-1], "train_accuracy": train_acc}}
    return Detector(head=head, layer=layer, capture=capture, threshold=thr, target_fpr=target_fpr, info=info)
