"""Offline adversarial retraining: FGSM examples crafted once against a fixed, cleanly trained
model are added to the training set of a fresh one, in seven steps.

1. train a model on clean data; 2. craft FGSM versions of the training set and 3. of the test set
against it; 4. evaluate it on both test sets; 5. retrain a fresh model on organic + perturbed
training data; 6. evaluate it on the clean and the perturbed test sets; 7. also attack the
retrained model afresh (the honest number: the old perturbations were made for another model).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import FGSM
from ..threat import ThreatModel, canonical_norm
from .loop import TrainConfig, accuracy, train
from .objectives import Clean


def craft(attack: FGSM, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Adversarial versions of a whole data set, in batches."""
    return torch.cat([attack(model, x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def offline_retraining(
    make_model: Callable[[], nn.Module],
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
    eps: float = 0.1,
    norm: str = "linf",
    run_dir: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Run the seven steps; returns the retrained model and the metrics of every step.

    The first model is written to ``run_dir/stage1``, the retrained one to ``run_dir``.
    """
    threat = ThreatModel(canonical_norm(norm), eps)
    fgsm = FGSM(threat)
    (x_tr, y_tr), (x_te, y_te) = train_data, test_data
    run = Path(run_dir) if run_dir is not None else None

    first = make_model()
    train(first, Clean(), train_data, test_data, config, run_dir=run / "stage1" if run else None, metadata=metadata)
    x_tr_adv = craft(fgsm, first, x_tr, y_tr, config.eval_batch_size)
    x_te_adv = craft(fgsm, first, x_te, y_te, config.eval_batch_size)
    metrics: dict[str, Any] = {
        "stage1_clean_accuracy": accuracy(first, x_te, y_te),
        "stage1_fgsm_accuracy": accuracy(first, x_te_adv, y_te),
    }
    second = make_model()
    mixed = (torch.cat([x_tr, x_tr_adv]), torch.cat([y_tr, y_tr]))
    train(second, Clean(), mixed, test_data, config, run_dir=run, metadata=metadata)
    fresh = craft(fgsm, second, x_te, y_te, config.eval_batch_size)
    metrics.update(
        {
            "retrained_clean_accuracy": accuracy(second, x_te, y_te),
            "retrained_fgsm_stage1_accuracy": accuracy(second, x_te_adv, y_te),
            "retrained_fgsm_fresh_accuracy": accuracy(second, fresh, y_te),
            "offline": {"eps": threat.eps, "norm": threat.norm, "train_samples": len(mixed[1])},
        }
    )
    return second, metrics
