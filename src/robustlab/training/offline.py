"""Offline adversarial retraining: FGSM examples crafted once against a fixed, cleanly trained
model are added to the training set of a fresh one, in seven steps.

1. train a model on clean data; 2. craft FGSM versions of the training set and 3. of the test set
against it; 4. evaluate it on both test sets; 5. retrain a fresh model on organic + perturbed
training data; 6. evaluate it on the clean and the perturbed test sets; 7. also attack the
retrained model afresh (the honest number: the old perturbations were made for another model).

``on_stage(stage, text, numbers)`` hears of every step as it finishes. The retraining's history
has, per epoch, its accuracy on the stage-1 perturbed test set (``fgsm_stage1_accuracy``) next
to the clean one (and the monitor attack's, when given one).

Resuming: both trainings checkpoint like any run (the first in ``run_dir/stage1``, the second
in ``run_dir``); steps 2-4, 6 and 7 are deterministic functions of the trained models and are
recomputed, so a resumed pipeline ends with the same weights and numbers as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import FGSM
from ..storage.layout import STATE_FILE
from ..threat import ThreatModel, canonical_norm
from .loop import TrainConfig, TrainingInterrupted, accuracy, train
from .objectives import Clean

STAGES = 7
StageCallback = Callable[[int, str, dict[str, Any]], None]


def craft(attack: FGSM, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Adversarial versions of a whole data set, in batches."""
    return torch.cat([attack(model, x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _train_stage(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], test_data: tuple[torch.Tensor, torch.Tensor],
                 config: TrainConfig, folder: Path | None, run: Path | None, resume: bool, monitor_attack: Any | None,
                 metadata: dict[str, Any] | None, on_epoch_end: Callable[[int, dict[str, Any]], None] | None) -> None:
    """One training of the pipeline, resumed from ``folder`` when it holds a state; an interruption
    names the pipeline's run directory (the one to ``--resume``), not the stage's folder."""
    resume_here = resume and folder is not None and (folder / STATE_FILE).is_file()
    try:
        train(model, Clean(), data, test_data, config, run_dir=folder, resume=resume_here,
              monitor_attack=monitor_attack, metadata=metadata, on_epoch_end=on_epoch_end)
    except TrainingInterrupted as e:
        raise TrainingInterrupted(e.signum, run) from None


def offline_retraining(
    make_model: Callable[[], nn.Module],
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
    eps: float = 0.1,
    norm: str = "linf",
    run_dir: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
    resume: bool = False,
    monitor_attack: Any | None = None,
    on_stage: StageCallback | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Run the seven steps; returns the retrained model and the metrics of every step.

    The first model is written to ``run_dir/stage1``, the retrained one to ``run_dir``;
    ``resume`` continues both from their checkpoints. ``monitor_attack`` is measured after every
    epoch of both trainings (history ``adv_accuracy``).
    """
    threat = ThreatModel(canonical_norm(norm), eps)
    fgsm = FGSM(threat)
    (x_tr, y_tr), (x_te, y_te) = train_data, test_data
    run = Path(run_dir) if run_dir is not None else None
    if resume and run is not None and (run / STATE_FILE).is_file() and not (run / "stage1" / STATE_FILE).is_file():
        raise ValueError(f"cannot resume {run}: the retrained model's state is there but the first model's "
                         f"({run / 'stage1' / STATE_FILE}) is missing, and steps 2-4 need it")
    bs = config.eval_batch_size
    what = f"FGSM {threat.norm} eps {threat.eps:g}"

    def stage(n: int, text: str, **numbers: Any) -> None:
        if on_stage is not None:
            on_stage(n, text, numbers)

    first = make_model()
    _train_stage(first, train_data, test_data, config, run / "stage1" if run else None, run, resume, monitor_attack,
                 metadata, None)
    organic = accuracy(first, x_te, y_te, bs)
    stage(1, f"first model trained on {len(y_tr)} organic images: test accuracy {organic:.4f}",
          clean_accuracy=organic, train_samples=len(y_tr))
    x_tr_adv = craft(fgsm, first, x_tr, y_tr, bs)
    fooled_train = accuracy(first, x_tr_adv, y_tr, bs)
    stage(2, f"{what} training set crafted ({len(y_tr)} images): the first model's accuracy on it {fooled_train:.4f}",
          fgsm_train_accuracy=fooled_train, samples=len(y_tr))
    x_te_adv = craft(fgsm, first, x_te, y_te, bs)
    stage(3, f"{what} test set crafted ({len(y_te)} images)", samples=len(y_te))
    metrics: dict[str, Any] = {
        "stage1_clean_accuracy": organic,
        "stage1_fgsm_accuracy": accuracy(first, x_te_adv, y_te, bs),
        "stage1_fgsm_train_accuracy": fooled_train,
    }
    stage(4, f"first model: organic test accuracy {organic:.4f}, perturbed test accuracy "
             f"{metrics['stage1_fgsm_accuracy']:.4f}", clean_accuracy=organic, fgsm_accuracy=metrics["stage1_fgsm_accuracy"])

    def old_perturbed(epoch: int, line: dict[str, Any]) -> None:
        # Added to the epoch's history line (the loop writes history.jsonl after this callback).
        line["fgsm_stage1_accuracy"] = accuracy(second, x_te_adv, y_te, bs)

    second = make_model()
    mixed = (torch.cat([x_tr, x_tr_adv]), torch.cat([y_tr, y_tr]))
    _train_stage(second, mixed, test_data, config, run, run, resume, monitor_attack, metadata, old_perturbed)
    stage(5, f"fresh model retrained on {len(y_tr)} organic + {len(y_tr)} perturbed images for {config.epochs} epochs",
          train_samples=len(mixed[1]), epochs=config.epochs)
    metrics["retrained_clean_accuracy"] = accuracy(second, x_te, y_te, bs)
    metrics["retrained_fgsm_stage1_accuracy"] = accuracy(second, x_te_adv, y_te, bs)
    stage(6, f"retrained model: organic test accuracy {metrics['retrained_clean_accuracy']:.4f}, old perturbed test "
             f"accuracy {metrics['retrained_fgsm_stage1_accuracy']:.4f}",
          clean_accuracy=metrics["retrained_clean_accuracy"], fgsm_stage1_accuracy=metrics["retrained_fgsm_stage1_accuracy"])
    fresh = craft(fgsm, second, x_te, y_te, bs)
    metrics["retrained_fgsm_fresh_accuracy"] = accuracy(second, fresh, y_te, bs)
    stage(7, f"retrained model under fresh {what}: test accuracy {metrics['retrained_fgsm_fresh_accuracy']:.4f}",
          fgsm_fresh_accuracy=metrics["retrained_fgsm_fresh_accuracy"])
    metrics["offline"] = {"eps": threat.eps, "norm": threat.norm, "train_samples": len(mixed[1])}
    return second, metrics
