"""robustlab: attack, harden and honestly evaluate image classifiers.

Public names are kept stable: ``ThreatModel``, ``attacks``, ``data``, ``models``,
``load_dataset``, ``build_model``, ``save_model``, ``load_model``, ``evaluate``.
"""

from ._version import __version__
from .threat import ThreatModel
from . import attacks, data, models
from .storage import load_model, save_model
from .data import load_dataset
from .evaluation import EvaluationResult, evaluate
from .models import build_model

__all__ = [
    "__version__",
    "ThreatModel",
    "attacks",
    "data",
    "models",
    "load_dataset",
    "build_model",
    "save_model",
    "load_model",
    "evaluate",
    "EvaluationResult",
]
