"""Training: one loop (:mod:`.loop`) and pluggable per-batch objectives (:mod:`.objectives`)."""

from .loop import TrainConfig, TrainResult, accuracy, read_history, train, write_metrics
from .objectives import OBJECTIVES, Clean, Objective, build_objective

__all__ = ["TrainConfig", "TrainResult", "accuracy", "read_history", "train", "write_metrics", "Clean", "Objective", "OBJECTIVES", "build_objective"]
