"""The epoch loop shared by the generative trainers (GAN, CycleGAN, AdvGAN): batches, progress,
checkpoints, history, resume, SIGINT.

A trainer supplies its networks, optimisers, one ``torch.Generator`` for all of its randomness, a
``step(epoch, batch)`` that does one batch of updates and returns numbers to average, and an
``epoch_end(epoch)`` that returns the epoch's metrics and the tensors to keep for the report.
After every epoch the networks (``networks.json`` + one safetensors file each), ``history.jsonl``,
the artifacts and then the training state (the commit point) are written atomically; on
SIGINT/SIGTERM a mid-epoch state is saved between batches. Resuming restores networks,
optimisers, the trainer's generator and torch's global generator, so the run ends bit-identical to
an uninterrupted one, provided the trainer draws its batch order from ``(seed, epoch)`` alone
(:func:`epoch_order`) and everything else from its generator.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..progress import bar as progress_bar
from ..progress import echo
from ..storage import CheckpointError, atomic_write_text, ensure_writable_dir, read_safetensors
from ..storage import remove_stale_temp_files as _remove_stale
from ..storage.layout import ARTIFACTS_DIR, HISTORY_FILE
from ..training.loop import StopFlag, TrainingInterrupted
from .checkpoint import restore_training_state, save_networks, save_training_state, write_safetensors

Step = Callable[[int, int], dict[str, float]]
EpochEnd = Callable[[int], tuple[dict[str, Any], dict[str, torch.Tensor]]]


class GenerativeInterrupted(TrainingInterrupted):
    """Training of a generative run stopped on SIGINT/SIGTERM after saving a consistent state."""

    def __init__(self, signum: int, run: Path | None, command: str) -> None:
        super().__init__(signum, run)
        where = f"; state saved in {run}, continue with: robustlab {command} --resume {run}" if run else ""
        self.args = (f"training interrupted by signal {signum}{where}",)


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int, salt: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1000 + epoch + 7_000_003 * salt)
    return torch.randperm(n, generator=g)


def epoch_order(n: int, seed: int, epoch: int, device: torch.device | str = "cpu", salt: int = 0) -> torch.Tensor:
    """A permutation of ``n`` that depends on (seed, epoch, salt) only, so a mid-epoch resume
    redraws it (cached: trainers ask for it once per batch)."""
    return _permutation(n, seed, epoch, salt).to(device)


def run_epochs(*, kind: str, command: str, run: Path | None, networks: dict[str, torch.nn.Module],
               optimizers: dict[str, torch.optim.Optimizer], rng: torch.Generator, config: dict[str, Any], epochs: int,
               steps: int, step: Step, epoch_end: EpochEnd, artifacts_file: str, resume: bool = False,
               progress: bool = True, metadata: dict[str, Any] | None = None, verbose: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) ``epochs`` epochs of ``steps`` batches; returns the history. ``progress``: the
    batch bar; ``verbose``: each epoch's history line (``--quiet`` turns off the bar only)."""
    history: list[dict[str, Any]] = []
    start_epoch, start_batch, partial = 0, 0, {}
    if run is not None:
        ensure_writable_dir(run)
        _remove_stale(run)
    if resume:
        if run is None:
            raise ValueError("resume needs a run directory")
        saved = restore_training_state(run, networks, optimizers, rng)
        if saved["config"] != json.loads(json.dumps(config)):
            raise ValueError(f"{run} was trained with other settings; resume continues with the saved ones")
        history, partial = list(saved["history"]), dict(saved["partial"])
        start_epoch, start_batch = int(saved["epoch"]), int(saved["batch"])
    stop = StopFlag()
    with stop.installed():
        for epoch in range(start_epoch, epochs):
            t0, c0 = time.perf_counter(), time.process_time()
            first = start_batch if epoch == start_epoch else 0
            sums: dict[str, float] = dict(partial) if epoch == start_epoch else {}
            for net in networks.values():
                net.train()
            bar = progress_bar(range(first, steps), desc=f"epoch {epoch + 1}/{epochs}", unit="batches", enabled=progress)
            for b in bar:
                logs = step(epoch, b)
                for k, v in logs.items():
                    if not math.isfinite(v):
                        raise FloatingPointError(f"{k} became {v} at epoch {epoch + 1}, batch {b}; lower the learning rate")
                    sums[k] = sums.get(k, 0.0) + v
                    sums[f"_n.{k}"] = sums.get(f"_n.{k}", 0.0) + 1
                if progress and b % 20 == 0:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in list(logs.items())[:3]})
                if stop.signum is not None:
                    bar.close()
                    if run is not None:
                        save_training_state(run, epoch=epoch, batch=b + 1, networks=networks, optimizers=optimizers,
                                            generator=rng, history=history, config=config, partial=sums)
                    raise GenerativeInterrupted(stop.signum, run, command)
            bar.close()
            line: dict[str, Any] = {"epoch": epoch + 1}
            line.update({k: v / sums[f"_n.{k}"] for k, v in sums.items() if not k.startswith("_n.")})
            line["train_seconds"] = round(time.perf_counter() - t0, 3)
            for name, net in networks.items():
                if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
                    raise FloatingPointError(f"the {name}'s weights became NaN or infinite in epoch {epoch + 1}; lower the learning rate")
            metrics, tensors = epoch_end(epoch)
            line.update(metrics)
            line["seconds"] = round(time.perf_counter() - t0, 3)
            line["cpu_seconds"] = round(time.process_time() - c0, 3)  # on a shared machine, wall time says little
            history.append(line)
            if verbose:
                echo(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()))
            if run is not None:
                save_networks(run, networks, kind, config=config, epoch=epoch + 1, last=line, **(metadata or {}))
                atomic_write_text(run / HISTORY_FILE, "".join(json.dumps(h, sort_keys=True) + "\n" for h in history))
                if tensors:
                    write_artifact_tensors(run, artifacts_file, tensors)
                save_training_state(run, epoch=epoch + 1, batch=0, networks=networks, optimizers=optimizers, generator=rng,
                                    history=history, config=config)
            if stop.signum is not None:
                raise GenerativeInterrupted(stop.signum, run, command)
    return history


def write_artifact_tensors(run: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Merge ``tensors`` into ``run/artifacts/name`` (a safetensors file), atomically."""
    path = run / ARTIFACTS_DIR / name
    try:
        merged = dict(read_safetensors(path))
    except CheckpointError:
        merged = {}
    merged.update({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    write_safetensors(path, merged)
