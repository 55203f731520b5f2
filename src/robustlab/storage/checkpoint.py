"""Safe checkpoints: safetensors weights plus a JSON sidecar, written atomically, never pickled.

A model is saved as ``model.safetensors`` (weights only) and ``model.json`` (architecture and
options, dataset, training config, metrics, versions). Loading rebuilds the architecture from the
registry, checks every tensor name and shape against it, and only then loads the weights: a file
can carry data, never code. Training state (optimizer, scheduler, epoch, RNG states) goes into one
safetensors file whose JSON skeleton rides in the header metadata, so a snapshot is a single atomic
file.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .._version import __version__

MODEL_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"
FORMAT = "robustlab-model"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not match its declared architecture."""


# --- atomic file writes ---------------------------------------------------------------------
def _umask_mode() -> int:
    """0o666 minus the process umask: what a plain open() would have created (mkstemp uses 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_error(path: Path, e: OSError) -> OSError:
    """The OSError of a failed write, naming the destination instead of the temp file."""
    return OSError(e.errno, f"cannot write {path} ({e.strerror or e}); the previous file, if any, is unchanged")


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create directory ``path`` if needed and check that a file can be created in it, so an
    unwritable or read-only output location fails before any work is done (OSError naming it)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(e.errno, f"cannot write to directory {path} ({e.strerror or e})") from None
    return path


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files a killed atomic write leaves behind in ``folder`` (``.NAME.*.tmp``
    from this module, ``.tmp*`` from safetensors' writer); the committed files are untouched."""
    removed = []
    for p in Path(folder).iterdir():
        if p.is_file() and p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.startswith(".tmp")):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, then rename: readers
    see the old file or the new one, never half of either. A failed write (disk full, read-only
    folder) raises OSError naming ``path`` and leaves the old file as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot store {type(o).__name__} in JSON")


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """safetensors.save_file, made atomic (temp file + fsync + rename)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    os.close(fd)
    try:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        except SafetensorError as e:
            # The Rust writer reports I/O failures (a full disk) as SafetensorError("... (os error N)").
            m = re.search(r"os error (\d+)", str(e))
            if m is None:
                raise
            code = int(m.group(1))
            raise OSError(code, os.strerror(code)) from None
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80" or head == b"PK":
        raise CheckpointError(f"{path} looks like a pickle / torch.save file; robustlab never unpickles. Convert it to safetensors")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None


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


# --- models -----------------------------------------------------------------------------------
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
    state = {k: v for k, v in inner.state_dict().items()}
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
    weights, meta_path = _resolve(path)
    if not meta_path.is_file():
        raise CheckpointError(f"model metadata not found: {meta_path}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a robustlab model record (format != {FORMAT!r})")
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
        except Exception as e:  # noqa: BLE001 - any failure of the restricted unpickler
            raise CheckpointError(f"{p} could not be read with weights_only=True ({e})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{p} does not hold a flat state dict of tensors")
    else:
        weights, _ = _resolve(p)
        meta = read_model_metadata(p)
        weights = weights.with_name(meta.get("weights", MODEL_WEIGHTS))
        state = _read_safetensors(weights)
    arch = dict(meta["architecture"])
    name = arch.pop("name")
    try:
        model = build_model(name, **arch)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot rebuild architecture {name!r} from {path}: {e}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match architecture {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape) or state[k].dtype != v.dtype:
            raise CheckpointError(
                f"{path}: tensor {k!r} has shape {tuple(state[k].shape)} {state[k].dtype}, "
                f"architecture expects {tuple(v.shape)} {v.dtype}"
            )
    model.load_state_dict(state, strict=True)
    model.robustlab_metadata = meta  # type: ignore[assignment]
    model.eval()
    return model.to(map_location)


# --- generic nested state (optimizer, scheduler, RNG) -----------------------------------------
def flatten_state(obj: Any, prefix: str = "s") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, scalars, tensors) into a JSON skeleton and a flat dict
    of tensors; ``unflatten_state`` inverts it. Used for optimizer and scheduler states."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any, key: str) -> Any:
        if isinstance(o, torch.Tensor):
            tensors[key] = o.detach().cpu().clone()
            return {"__tensor__": key}
        if isinstance(o, dict):
            return {"__dict__": [[walk(k, f"{key}.k{i}"), walk(v, f"{key}.{i}")] for i, (k, v) in enumerate(o.items())]}
        if isinstance(o, (list, tuple)):
            return {"__list__" if isinstance(o, list) else "__tuple__": [walk(v, f"{key}.{i}") for i, v in enumerate(o)]}
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        if hasattr(o, "tolist") and hasattr(o, "dtype"):  # numpy arrays / scalars
            return {"__array__": o.tolist(), "dtype": str(o.dtype)}
        raise TypeError(f"cannot checkpoint a {type(o).__name__} at {key}")

    return walk(obj, prefix), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [unflatten_state(v, tensors) for v in skeleton["__list__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        if "__array__" in skeleton:
            import numpy as np

            return np.asarray(skeleton["__array__"], dtype=skeleton["dtype"])
    return skeleton


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """One atomic safetensors file holding a nested training state (no pickle)."""
    skeleton, tensors = flatten_state(state)
    atomic_save_safetensors(tensors, path, metadata={"format": "robustlab-state", "skeleton": json.dumps(skeleton)})


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors import safe_open

    path = Path(path)
    tensors = _read_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "robustlab-state" or "skeleton" not in meta:
        raise CheckpointError(f"{path} is not a robustlab training state")
    return unflatten_state(json.loads(meta["skeleton"]), tensors)
