"""Model checkpoints: safetensors weights plus a JSON sidecar, written atomically, never pickled.

A model is saved as ``model.safetensors`` (weights only) and ``model.json`` (architecture and
options, dataset, training config, metrics, versions). Loading rebuilds the architecture from the
registry, checks every tensor name and shape against it, and only then loads the weights: a file
can carry data, never code.

A model of your own (not built by ``build_model``) is saved with its entry point,
``save_model(model, path, entry="net.py:Net", kwargs={...})``; ``model.json`` then names that
code, and :func:`load_model` imports it **only** when asked to: ``trust_code=True`` (on the
command line ``--trust-code``), or inside :func:`trusted_code`. A downloaded run never runs code
by being loaded; what is imported is printed on stderr.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import platform
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

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


_TRUST_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar("robustlab_trust_code", default=False)


@contextlib.contextmanager
def trusted_code() -> Iterator[None]:
    """Inside this block :func:`load_model` imports the user code a ``model.json`` names (what the
    command line's ``--trust-code`` does for every model a command loads)."""
    token = _TRUST_CODE.set(True)
    try:
        yield
    finally:
        _TRUST_CODE.reset(token)


def entry_config(entry: str, kwargs: dict[str, Any] | None = None, normalize: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``architecture`` record of a model built by an entry point: the entry as given, the
    absolute path and sha256 of its file (``file.py:Name``), kwargs and normalisation."""
    import json

    from ..models.entry import sha256_file, split_entry

    where, name = split_entry(entry)
    kw = dict(kwargs or {})
    try:
        json.dumps(kw)
    except (TypeError, ValueError):
        raise CheckpointError(f"kwargs of {entry} must be JSON values to be recorded, got {kw!r}") from None
    cfg: dict[str, Any] = {"name": str(entry), "entry": str(entry), "kwargs": kw}
    if where.endswith(".py") and Path(where).is_file():
        cfg.update(file=str(Path(where).resolve()), code_sha256=sha256_file(where))
    if normalize:
        cfg["normalize"] = dict(normalize)
    return cfg


def model_config(model: nn.Module) -> dict[str, Any]:
    """The config a model was built with: the registry config ``build_model`` attaches, or the
    entry point :func:`robustlab.models.entry.load_entry` attaches."""
    inner = getattr(model, "module", model)  # DDP / DataParallel wrappers
    cfg = getattr(inner, "robustlab_config", None)
    if isinstance(cfg, dict):
        return cfg
    info = getattr(inner, "robustlab_entry", None)
    if isinstance(info, dict) and "entry" in info:
        norm = {k: info[k] for k in ("mean", "std") if k in info}
        return entry_config(info["entry"], info.get("kwargs"), norm or None)
    raise CheckpointError("this model was not built by robustlab.models.build_model; save it with its entry point: "
                          "save_model(model, path, entry='net.py:Net', kwargs={...}) so load_model can rebuild it")


def save_model(model: nn.Module, path: str | os.PathLike, entry: str | None = None,
               kwargs: dict[str, Any] | None = None, **metadata: Any) -> Path:
    """Save weights (safetensors) and a JSON sidecar (architecture + ``metadata``), atomically.

    ``path`` is a run directory (``model.safetensors`` + ``model.json`` inside it) or a
    ``*.safetensors`` file (sidecar ``*.json`` beside it). Returns the weights path.
    A model not built by ``build_model`` needs its ``entry`` point (``"net.py:Net"`` or
    ``"package.module:Name"``, a class or factory) and the ``kwargs`` to call it with, so that
    :func:`load_model` (with ``trust_code=True``) can rebuild it.
    """
    weights, meta_path = _resolve(path)
    inner = getattr(model, "module", model)
    state = dict(inner.state_dict())
    arch = entry_config(entry, kwargs) if entry is not None else model_config(model)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch,
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


def _build_from_entry(arch: dict[str, Any], path: Any, trust_code: bool) -> nn.Module:
    """Rebuild an entry-point model (its code imported only when trusted; see the module docstring)."""
    from ..models.entry import Normalized, build_from_entry, split_entry

    entry = str(arch["entry"])
    where, name = split_entry(entry)
    if not (trust_code or _TRUST_CODE.get()):
        shown = arch.get("file") or where
        raise CheckpointError(f"{path} names user code {entry} ({shown}); loading it imports and runs that code. "
                              "Load it only if you trust it: load_model(..., trust_code=True), on the command line "
                              "--trust-code")
    code = entry
    if where.endswith(".py"):
        candidates = [Path(str(arch["file"]))] if arch.get("file") else []
        base = Path(path) if Path(path).is_dir() else Path(path).parent
        candidates += [Path(where), base / Path(where).name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CheckpointError(f"{path} names user code {entry}, but none of {[str(c) for c in candidates]} exists")
        code = f"{found}:{name}"
    try:
        model = build_from_entry(code, arch.get("kwargs") or {})
    except ValueError as e:
        raise CheckpointError(f"cannot rebuild {entry} from {path}: {e}") from None
    norm = arch.get("normalize")
    if isinstance(norm, dict):
        # a checkpoint's "normalize" holds both lists (save writes them together)
        model = Normalized(model, cast(Sequence[float], norm.get("mean")), cast(Sequence[float], norm.get("std")))
    model.robustlab_entry = {"entry": entry, "kwargs": arch.get("kwargs") or {}, **(norm or {})}  # type: ignore[assignment]
    return model


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", allow_pickle: bool = False,
               trust_code: bool = False) -> nn.Module:
    """Rebuild a model from a run directory or ``*.safetensors`` file and load its weights.

    Never unpickles. The architecture must be a registered one, and every tensor name and shape in
    the file must match it exactly. ``allow_pickle=True`` is needed to read a ``.pt``/``.pth``
    state dict, and then only with ``torch.load(weights_only=True)`` and a sidecar JSON.
    A model saved with an entry point (user code) is rebuilt by importing that code, which happens
    only with ``trust_code=True`` (or inside :func:`trusted_code`); the import is announced on stderr.
    ``"zoo:NAME"`` loads a model of the zoo (:mod:`robustlab.pretrained`), offline.
    """
    from ..models.zoo import build_model
    from ..pretrained import entry_path, is_zoo_ref

    p = entry_path(str(path)) if is_zoo_ref(path) else Path(path)
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
    if "entry" in arch:
        model = _build_from_entry({"name": name, **arch}, path, trust_code)
    else:
        try:
            model = build_model(name, **arch)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"cannot rebuild architecture {name!r} from {path}: {e}") from None
    check_state_dict(state, model.state_dict(), f"{path} (architecture {name!r})")
    model.load_state_dict(state, strict=True)
    model.robustlab_metadata = meta  # type: ignore[assignment]
    model.eval()
    return model.to(map_location)
