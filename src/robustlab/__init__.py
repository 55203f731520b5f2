"""robustlab: attack, harden and honestly evaluate image classifiers.

Public names are kept stable: ``ThreatModel``, ``attacks``, ``data``, ``models``,
``load_dataset``, ``build_model``, ``save_model``, ``load_model``, ``evaluate``.
"""

from . import attacks, data, models
from ._version import __version__
from .data import load_dataset
from .evaluation import EvaluationResult, evaluate
from .models import build_model
from .storage import load_model, save_model
from .threat import ThreatModel

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
