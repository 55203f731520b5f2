"""Training state (optimizer, scheduler, epoch, RNG states) as one safetensors file, no pickle.

A nested state is split into a JSON skeleton and a flat dict of tensors; the tensors are the
file's content and the skeleton rides in its header metadata, so a snapshot is a single atomic
file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .atomic import CheckpointError, atomic_save_safetensors, read_safetensors

STATE_FORMAT = "robustlab-state"


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
    """The nested state that :func:`flatten_state` split into ``skeleton`` and ``tensors``."""
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
    atomic_save_safetensors(tensors, path, metadata={"format": STATE_FORMAT, "skeleton": json.dumps(skeleton)})


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """The training state :func:`save_state` wrote to ``path`` (CheckpointError if it is not one)."""
    path = Path(path)
    tensors = read_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != STATE_FORMAT or "skeleton" not in meta:
        raise CheckpointError(f"{path} is not a robustlab training state")
    return unflatten_state(json.loads(meta["skeleton"]), tensors)
