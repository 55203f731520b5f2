"""Training: one loop (:mod:`.loop`) and pluggable per-batch objectives (:mod:`.objectives`).

``read_history`` is :func:`robustlab.storage.layout.read_history` (re-exported here, where
callers have always found it)."""

from ..storage.layout import read_history
from .loop import TrainConfig, TrainingInterrupted, TrainResult, accuracy, train, write_metrics
from .objectives import OBJECTIVES, Clean, Objective, build_objective

__all__ = ["TrainConfig", "TrainResult", "TrainingInterrupted", "accuracy", "read_history", "train", "write_metrics", "Clean", "Objective",
           "OBJECTIVES", "build_objective"]
