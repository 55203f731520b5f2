"""Training: one loop (:mod:`.loop`) and pluggable per-batch objectives (:mod:`.objectives`)."""

from .loop import TrainConfig, TrainResult, accuracy, read_history, train, write_metrics
from .objectives import Clean, Objective

__all__ = ["TrainConfig", "TrainResult", "accuracy", "read_history", "train", "write_metrics", "Clean", "Objective"]
