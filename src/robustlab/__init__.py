"""robustlab: attack, harden and honestly evaluate image classifiers."""

from ._version import __version__
from .threat import ThreatModel
from . import attacks

__all__ = ["__version__", "ThreatModel", "attacks"]
