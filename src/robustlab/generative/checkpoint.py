"""Checkpoints of generative runs, through :mod:`robustlab.storage` (safetensors + JSON, atomic,
never pickled), and the training state that makes ``--resume`` bit-identical.

A generative run directory holds, beside the shared files of :mod:`robustlab.storage.layout`
(``config.json``, ``train_state.safetensors``, ``history.jsonl``, ``metrics.json``,
``artifacts/``, ``report.html``)::

    networks.json            kind (gan | cyclegan | advgan), each network's architecture, metadata
    <name>.safetensors       one weights file per network (generator, discriminator, g_ab, ...)

Loading rebuilds every architecture from :data:`.models.NETWORKS` and checks each tensor's name
and shape before loading, as :func:`robustlab.storage.load_model` does for classifiers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..storage import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_json,
    check_state_dict,
    environment_info,
    flatten_state,
    load_state,
    read_json_record,
    read_safetensors,
)
from ..storage.layout import NETWORKS_META, STATE_FILE
from ..storage.state import STATE_FORMAT
from .models import build_network

FORMAT = "robustlab-generative"
FORMAT_VERSION = 1
KINDS = ("gan", "cyclegan", "advgan")


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """``tensors`` as a safetensors file, written with :func:`robustlab.storage.atomic_write_bytes`.

    Works around a false alarm of :func:`robustlab.storage.read_safetensors`, which takes a first
    byte 0x80 (a pickle's) for a pickle file: a safetensors file starts with its header length,
    and 1 header in 256 has length 128 mod 256. The header is padded with a metadata entry until
    its first byte is anything else, so every file written here reads back."""
    meta = dict(metadata or {})
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    data = safetensors_bytes(flat, metadata=meta)
    while data[:1] == b"\x80":
        meta["pad"] = meta.get("pad", "") + " " * 8
        data = safetensors_bytes(flat, metadata=meta)
    atomic_write_bytes(path, data)


def save_networks(run: str | os.PathLike, networks: dict[str, nn.Module], kind: str, **metadata: Any) -> None:
    """Every network's weights (``<name>.safetensors``), then ``networks.json``, atomically."""
    if kind not in KINDS:
        raise ValueError(f"unknown generative run kind {kind!r}: expected one of {', '.join(KINDS)}")
    run = Path(run)
    entries = {}
    for name, net in networks.items():
        cfg = getattr(net, "robustlab_config", None)
        if not isinstance(cfg, dict):
            raise CheckpointError(f"network {name!r} was not built by robustlab.generative.models.build_network")
        state = net.state_dict()
        write_safetensors(run / f"{name}.safetensors", dict(state), metadata={"format": FORMAT})
        entries[name] = {"file": f"{name}.safetensors", "architecture": cfg,
                         "tensors": {k: list(v.shape) for k, v in state.items()}}
    atomic_write_json(run / NETWORKS_META, {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
                                            "networks": entries, "environment": environment_info(), **metadata})


def read_networks_meta(run: str | os.PathLike) -> dict[str, Any]:
    """The validated ``networks.json`` of a generative run (CheckpointError when it is not one)."""
    meta = read_json_record(Path(run) / NETWORKS_META, FORMAT, FORMAT_VERSION, "generative run")
    if not isinstance(meta.get("networks"), dict) or meta.get("kind") not in KINDS:
        raise CheckpointError(f"{Path(run) / NETWORKS_META} lists no networks or an unknown kind")
    return meta


def load_network(run: str | os.PathLike, name: str, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild network ``name`` of a generative run and load its weights (eval mode)."""
    run = Path(run)
    meta = read_networks_meta(run)
    entry = meta["networks"].get(name)
    if not isinstance(entry, dict):
        raise CheckpointError(f"{run} has no network {name!r} (it has {', '.join(sorted(meta['networks']))})")
    file = str(entry.get("file", ""))
    if Path(file).name != file or not file:
        raise CheckpointError(f"{run / NETWORKS_META} names weights file {file!r}, which escapes the run directory")
    arch = dict(entry.get("architecture") or {})
    try:
        net = build_network(arch.pop("name"), **arch)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot rebuild network {name!r} of {run}: {e}") from None
    state = read_safetensors(run / file)
    check_state_dict(state, net.state_dict(), f"{run / file}")
    net.load_state_dict(state, strict=True)
    return net.eval().to(map_location)


def save_training_state(run: Path, *, epoch: int, batch: int, networks: dict[str, nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer], generator: torch.Generator,
                        history: list[dict[str, Any]], config: dict[str, Any],
                        partial: dict[str, float] | None = None) -> None:
    """The one atomic file ``resume`` trusts: ``epoch`` finished epochs plus ``batch`` steps of
    the next, every network and optimiser, the loop's random generator and torch's global one."""
    state = {
        "epoch": epoch, "batch": batch, "partial": partial or {},
        "networks": {k: v.state_dict() for k, v in networks.items()},
        "optimizers": {k: v.state_dict() for k, v in optimizers.items()},
        "rng": generator.get_state(), "global_rng": torch.get_rng_state(),
        "history": history, "config": config,
    }
    skeleton, tensors = flatten_state(state)  # robustlab.storage.save_state's format, through the padded writer
    write_safetensors(run / STATE_FILE, tensors, metadata={"format": STATE_FORMAT, "skeleton": json.dumps(skeleton)})


def restore_training_state(run: Path, networks: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                           generator: torch.Generator) -> dict[str, Any]:
    """Load what :func:`save_training_state` wrote into the given objects; returns the rest
    (``epoch``, ``batch``, ``partial``, ``history``, ``config``)."""
    if not (run / STATE_FILE).is_file():
        raise ValueError(f"nothing to resume: no {STATE_FILE} in {run}")
    state = load_state(run / STATE_FILE)
    for k, net in networks.items():
        net.load_state_dict(state["networks"][k])
    for k, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][k])
    generator.set_state(state["rng"])
    torch.set_rng_state(state["global_rng"])
    return {k: state[k] for k in ("epoch", "batch", "partial", "history", "config")}
