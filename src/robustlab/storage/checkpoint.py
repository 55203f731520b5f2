"""Model checkpoints: safetensors weights plus a JSON sidecar, written atomically, never pickled.

A model is saved as ``model.safetensors`` (weights only) and ``model.json`` (architecture and
options, dataset, training config, metrics, versions). Loading rebuilds the architecture from the
registry, checks every tensor name and shape against it, and only then loads the weights: a file
can carry data, never code.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from .atomic import CheckpointError, atomic_save_safetensors, atomic_write_json, read_json_record, read_safetensors
from .layout import MODEL_META, MODEL_WEIGHTS

FORMAT = "robustlab-model"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")


def environment_info() -> dict[str, Any]:
    """Versions and the git commit, recorded with every checkpoint for reproducibility."""
    info: dict[str, Any] = {
        "robustlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def check_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: Any) -> None:
    """Raise :class:`CheckpointError` (naming ``source``) unless ``state`` holds exactly the
    tensor names of ``expected``, each with the same shape and dtype."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: tensors do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape) or state[k].dtype != v.dtype:
            raise CheckpointError(
                f"{source}: tensor {k!r} has shape {tuple(state[k].shape)} {state[k].dtype}, "
                f"architecture expects {tuple(v.shape)} {v.dtype}"
            )


def _resolve(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, json) paths for a run directory or a ``*.safetensors`` file."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return p, p.with_suffix(".json")
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{p} is a pickle-based checkpoint; robustlab loads safetensors only "
            f"(use load_model(..., allow_pickle=True) to read plain weights with torch.load(weights_only=True))"
        )
    return p / MODEL_WEIGHTS, p / MODEL_META


def model_config(model: nn.Module) -> dict[str, Any]:
    """The registry config a model was built with (``build_model`` attaches it)."""
    inner = getattr(model, "module", model)  # DDP / DataParallel wrappers
    cfg = getattr(inner, "robustlab_config", None)
    if not isinstance(cfg, dict):
        raise CheckpointError("this model was not built by robustlab.models.build_model, so its architecture cannot be recorded")
    return cfg


def save_model(model: nn.Module, path: str | os.PathLike, **metadata: Any) -> Path:
    """Save weights (safetensors) and a JSON sidecar (architecture + ``metadata``), atomically.

    ``path`` is a run directory (``model.safetensors`` + ``model.json`` inside it) or a
    ``*.safetensors`` file (sidecar ``*.json`` beside it). Returns the weights path.
    """
    weights, meta_path = _resolve(path)
    inner = getattr(model, "module", model)
    state = dict(inner.state_dict())
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": model_config(model),
        "weights": weights.name,
        "tensors": {k: list(v.shape) for k, v in state.items()},
        "environment": environment_info(),
        **metadata,
    }
    atomic_save_safetensors(state, weights, metadata={"format": FORMAT})
    atomic_write_json(meta_path, meta)
    return weights


def read_model_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON sidecar of a saved model (validated to be a robustlab model record)."""
    _, meta_path = _resolve(path)
    meta = read_json_record(meta_path, FORMAT, FORMAT_VERSION, "model")
    arch = meta.get("architecture")
    if not isinstance(arch, dict) or "name" not in arch:
        raise CheckpointError(f"{meta_path} has no architecture")
    name = meta.get("weights", MODEL_WEIGHTS)
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise CheckpointError(f"{meta_path} names weights file {name!r}, which escapes the run directory")
    return meta


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", allow_pickle: bool = False) -> nn.Module:
    """Rebuild a model from a run directory or ``*.safetensors`` file and load its weights.

    Never unpickles. The architecture must be a registered one, and every tensor name and shape in
    the file must match it exactly. ``allow_pickle=True`` is needed to read a ``.pt``/``.pth``
    state dict, and then only with ``torch.load(weights_only=True)`` and a sidecar JSON.
    """
    from ..models.zoo import build_model

    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES and allow_pickle:
        meta = read_model_metadata(p.with_suffix(".safetensors"))
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{p} could not be read with weights_only=True ({e})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{p} does not hold a flat state dict of tensors")
    else:
        weights, _ = _resolve(p)
        meta = read_model_metadata(p)
        state = read_safetensors(weights.with_name(meta.get("weights", MODEL_WEIGHTS)))
    arch = dict(meta["architecture"])
    name = arch.pop("name")
    try:
        model = build_model(name, **arch)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot rebuild architecture {name!r} from {path}: {e}") from None
    check_state_dict(state, model.state_dict(), f"{path} (architecture {name!r})")
    model.load_state_dict(state, strict=True)
    model.robustlab_metadata = meta  # type: ignore[assignment]
    model.eval()
    return model.to(map_location)
