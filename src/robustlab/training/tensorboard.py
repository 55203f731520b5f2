"""``robustlab train --tensorboard DIR``: the history line of every epoch as TensorBoard scalars.

Uses ``torch.utils.tensorboard`` (an optional extra: ``pip install 'robustlab[tensorboard]'``);
only rank 0 writes. Tags: ``train/<key>`` for the training averages (loss, accuracy, the
objective's own terms), ``test/<key>`` for the test-set numbers (clean and adversarial accuracy),
``lr`` and ``seconds``; the step is the epoch number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEST_KEYS = ("clean_accuracy", "adv_accuracy", "adv_accuracy_on_correct")


class TensorBoardLog:
    """An ``on_epoch_end(epoch, line)`` callback that writes the line's numbers to ``log_dir``."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch raises ImportError when the tensorboard package is missing
            raise ValueError("--tensorboard needs the tensorboard package: pip install 'robustlab[tensorboard]'") from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def __call__(self, epoch: int, line: dict[str, Any]) -> None:
        for key, value in line.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            tag = key if key in ("lr", "seconds") else (f"test/{key}" if key in TEST_KEYS else f"train/{key}")
            self.writer.add_scalar(tag, float(value), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
