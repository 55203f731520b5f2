"""The detector (SafetyNet-style, Lu et al. 2017): a small binary classifier on the hidden
features of a trained classifier tells clean inputs from adversarial ones.

* :class:`FeatureDetector` -- an MLP (``hidden=()`` gives logistic regression) on standardised
  features; one logit per sample, positive = "adversarial".
* :class:`Detector` -- the head plus where its features come from and its decision threshold;
  saved as ``detector.safetensors`` + ``detector.json`` and rebuilt from the JSON architecture
  (never pickled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._torch import model_guard
from ..models.zoo import make_activation
from ..storage import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write_json,
    check_state_dict,
    environment_info,
    read_json_record,
    read_safetensors,
)
from ..storage.layout import DETECTOR_META, DETECTOR_WEIGHTS
from .features import CAPTURES, capture_features

DETECTOR_FORMAT = "robustlab-detector"
DETECTOR_FORMAT_VERSION = 1
HEAD_OPTIONS = ("in_features", "hidden", "activation", "dropout")


class FeatureDetector(nn.Module):
    """Standardise features (statistics fitted on the training features), then an MLP to one
    logit; positive means "adversarial". ``hidden=()`` is logistic regression."""

    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, in_features: int, hidden: Sequence[int] = (64,), activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        if int(in_features) < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        self.in_features = int(in_features)
        self.hidden = [int(h) for h in hidden]
        self.activation = str(activation)
        self.dropout = float(dropout)
        self.register_buffer("feature_mean", torch.zeros(self.in_features))
        self.register_buffer("feature_std", torch.ones(self.in_features))
        layers: list[nn.Module] = []
        width = self.in_features
        for h in self.hidden:
            if h < 1:
                raise ValueError(f"hidden sizes must be >= 1, got {list(hidden)}")
            layers += [nn.Linear(width, h), make_activation(activation)]
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (stored as the architecture in ``detector.json``)."""
        return {"in_features": self.in_features, "hidden": list(self.hidden), "activation": self.activation,
                "dropout": self.dropout}

    @torch.no_grad()
    def fit_standardisation(self, features: torch.Tensor) -> None:
        """Set the per-feature mean and standard deviation (floored at 1e-6) from ``features``."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp_min(1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """One logit per sample (positive: "adversarial") for features of shape (N, ...)."""
        return self.net((features.flatten(1) - self.feature_mean) / self.feature_std).squeeze(1)


@dataclass
class Detector:
    """A trained detector: head, where its features come from, and its decision threshold
    (``logit > threshold`` flags an input as adversarial)."""

    head: FeatureDetector
    layer: str
    capture: str = "input"
    threshold: float = 0.0
    target_fpr: float = 0.05
    info: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Detector:
        """Move the head to ``device`` (in place); returns self."""
        self.head.to(device)
        return self

    def joint(self, classifier: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and detector logits from one forward pass (gradients flow; the caller
        decides about modes and no_grad)."""
        with capture_features(classifier, self.layer, self.capture) as store:
            logits = classifier(x)
        return logits, self.head(store["features"])

    @torch.no_grad()
    def scores(self, classifier: nn.Module, x: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits, detector logits) for ``x`` in eval mode, batched."""
        cls, det = [], []
        with model_guard(classifier), model_guard(self.head):
            for i in range(0, len(x), batch_size):
                c, d = self.joint(classifier, x[i : i + batch_size])
                cls.append(c)
                det.append(d)
        return torch.cat(cls), torch.cat(det)

    def flags(self, classifier: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Per sample: True where the detector rejects the input as adversarial."""
        return self.scores(classifier, x, batch_size)[1] > self.threshold

    # --- files ------------------------------------------------------------------------------
    def save(self, directory: str | Path, **metadata: Any) -> Path:
        """``detector.safetensors`` (weights) + ``detector.json`` (architecture, threshold,
        ``metadata``), both written atomically. Returns the weights path."""
        d = Path(directory)
        state = dict(self.head.state_dict())
        meta = {
            "format": DETECTOR_FORMAT,
            "format_version": DETECTOR_FORMAT_VERSION,
            "architecture": self.head.config(),
            "layer": self.layer,
            "capture": self.capture,
            "threshold": float(self.threshold),
            "target_fpr": float(self.target_fpr),
            "weights": DETECTOR_WEIGHTS,
            "tensors": {k: list(v.shape) for k, v in state.items()},
            "environment": environment_info(),
            **self.info,
            **metadata,
        }
        atomic_save_safetensors(state, d / DETECTOR_WEIGHTS, metadata={"format": DETECTOR_FORMAT})
        atomic_write_json(d / DETECTOR_META, meta)
        return d / DETECTOR_WEIGHTS

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Detector:
        """Rebuild the head from ``detector.json`` and load ``detector.safetensors`` (every tensor
        name and shape must match the architecture)."""
        d = Path(directory)
        meta_path = d / DETECTOR_META
        meta = read_json_record(meta_path, DETECTOR_FORMAT, DETECTOR_FORMAT_VERSION, "detector")
        arch = meta.get("architecture")
        if not isinstance(arch, dict):
            raise CheckpointError(f"{meta_path} has no architecture")
        unknown = set(arch) - set(HEAD_OPTIONS)
        if unknown:
            raise CheckpointError(f"{meta_path}: unknown architecture keys {sorted(unknown)}")
        capture = meta.get("capture", "input")
        if capture not in CAPTURES or not isinstance(meta.get("layer"), str):
            raise CheckpointError(f"{meta_path}: bad layer/capture")
        try:
            head = FeatureDetector(**arch)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"cannot rebuild the detector from {meta_path}: {e}") from None
        state = read_safetensors(d / DETECTOR_WEIGHTS)
        check_state_dict(state, head.state_dict(), d / DETECTOR_WEIGHTS)
        head.load_state_dict(state, strict=True)
        head.eval()
        return cls(head=head.to(map_location), layer=meta["layer"], capture=capture,
                   threshold=float(meta.get("threshold", 0.0)), target_fpr=float(meta.get("target_fpr", 0.05)))
