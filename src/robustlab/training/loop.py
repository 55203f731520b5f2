"""The one training loop: epochs, batches, optimiser, schedule, seed, progress, history, resume.

Objectives plug in (see :mod:`.objectives`); the loop never changes for a new defense. After each
epoch it records clean test accuracy (and, when given a monitor attack, adversarial accuracy on
a fixed test subset) to ``history.jsonl``, saves the model, and saves one atomic training-state
file, so a run killed at any point resumes from its last finished epoch and ends with the same
weights as an uninterrupted run. ``TrainConfig.checkpoint_every`` adds mid-epoch states every N
optimiser steps (a kill -9 then loses at most N steps), written by the same code that saves the
state on SIGINT/SIGTERM.

Under torch.distributed every checkpoint is taken at a step all ranks agree on (a deterministic
function of the step count, or a stop request reduced over the ranks), rank 0 writes it, and it
holds every rank's RNG state, so a distributed resume is bit-identical too (on CPU).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._torch import predict
from ..distributed import any_rank, average_buffers, dist_info, gather_rng_states, sum_across_ranks, unwrap
from ..progress import bar as progress_bar
from ..progress import echo
from ..storage import atomic_write_json, atomic_write_text, load_state, remove_stale_temp_files, save_model, save_state
from ..storage.layout import HISTORY_FILE, METRICS_FILE, STATE_FILE, read_json
from .extras import TrainingExtras, check_extras_config, split_holdout
from .objectives import Objective

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "step", "onecycle")


@dataclass
class TrainConfig:
    """Everything that decides the result of a training run (recorded in model.json)."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"
    seed: int = 0
    eval_batch_size: int = 1000
    progress: bool = True
    #: Print each epoch's history line (``--quiet`` turns off ``progress`` only: results stay).
    verbose: bool = True
    monitor_n: int = 500
    sync_batchnorm: bool = False
    checkpoint_every: int = 0  # also save the training state every N optimiser steps (0: epoch ends only)
    ema: float = 0.0  # decay of an average of the weights, evaluated and saved (0: off; see .extras)
    holdout: int = 0  # training images held out (never trained on) for a per-epoch robust accuracy
    select_best: str = "last"  # "robust" / "robust-1se": the run's model is the epoch the holdout's robust accuracy picks

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (self.momentum >= 0 and math.isfinite(self.momentum)):
            raise ValueError(f"momentum must be a finite number >= 0, got {self.momentum}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: checkpoints at epoch ends only), got {self.checkpoint_every}")
        if self.monitor_n < 1:
            raise ValueError(f"monitor_n must be >= 1 (the monitor attack's test images), got {self.monitor_n}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        check_extras_config(self)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict for model.json: every field except ``progress`` and
        ``verbose`` (display only)."""
        d = asdict(self)
        d.pop("progress")
        d.pop("verbose")
        return d


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``cfg`` names over the trainable parameters: SGD (Nesterov when momentum > 0),
    AdamW or Adam, with ``cfg``'s learning rate and weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-batch schedules (stepped after every optimiser step)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(total * 0.5), int(total * 0.75)], gamma=0.1)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    return None


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Clean accuracy in eval mode (every submodule's mode restored afterwards), through the shared
    :func:`robustlab._torch.predict`: NaN or infinite logits are a ValueError. 0.0 for no samples."""
    if len(x) == 0:
        return 0.0
    return int((predict(model, x, batch_size) == y).sum()) / len(x)


def robust_accuracy_of(attack: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Accuracy on ``attack``'s examples (the attack guards the model state itself)."""
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        correct += int((predict(model, attack(model, xb, yb), batch_size) == yb).sum())
    return correct / max(len(x), 1)


def sharded_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, attack: Any | None = None
) -> float:
    """Clean (or, with ``attack``, adversarial) accuracy; under torch.distributed each rank scores
    every world-th sample and the counts are summed, so the result equals a single-process run."""
    rank, world = dist_info()
    xs, ys = (x[rank::world], y[rank::world]) if world > 1 else (x, y)
    inner = unwrap(model)
    if len(xs) == 0:
        correct = 0.0
    elif attack is None:
        correct = accuracy(inner, xs, ys, batch_size) * len(xs)
    else:
        correct = robust_accuracy_of(attack, inner, xs, ys, batch_size) * len(xs)
    if world > 1:
        correct = sum_across_ranks(correct, x.device)
    return correct / max(len(x), 1)


def monitor_counts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Any, batch_size: int) -> dict[str, float]:
    """The monitor attack's numbers on (x, y): ``adv_accuracy`` (over all samples) and
    ``adv_accuracy_on_correct`` (over the originals the model classifies correctly, the exercise's
    measure; 0.0 when none is). Sharded like :func:`sharded_accuracy`; equal to one process."""
    rank, world = dist_info()
    xs, ys = (x[rank::world], y[rank::world]) if world > 1 else (x, y)
    inner = unwrap(model)
    counts = [0.0, 0.0, 0.0]  # adversarially correct, clean correct, both
    for i in range(0, len(xs), batch_size):
        xb, yb = xs[i : i + batch_size], ys[i : i + batch_size]
        clean = predict(inner, xb, batch_size) == yb
        adv = predict(inner, attack(inner, xb, yb), batch_size) == yb
        counts[0] += int(adv.sum())
        counts[1] += int(clean.sum())
        counts[2] += int((adv & clean).sum())
    if world > 1:
        counts = [sum_across_ranks(c, x.device) for c in counts]
    return {"adv_accuracy": counts[0] / max(len(x), 1),
            "adv_accuracy_on_correct": counts[2] / counts[1] if counts[1] else 0.0}


@dataclass
class TrainResult:
    """The history lines of all epochs (resumed ones included) and the epoch a resume started at."""

    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_epoch: int = 0


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    model: nn.Module,
    objective: Objective,
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor] | None,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    monitor_attack: Any | None = None,
    metadata: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place with ``objective``.

    ``train_data``/``test_data`` are (x, y) tensors already on the model's device. With a
    ``run_dir`` the model, ``history.jsonl`` and a training state are written atomically after
    every epoch (and the state every ``config.checkpoint_every`` steps); ``resume=True`` continues
    from that state. ``monitor_attack`` (an Attack) adds
    an adversarial accuracy on the first ``config.monitor_n`` test images to each history line.
    """
    x_train, y_train = train_data
    if len(x_train) != len(y_train) or len(x_train) == 0:
        raise ValueError(f"train_data needs matching non-empty x and y, got {len(x_train)} and {len(y_train)}")
    x_train, y_train, holdout = split_holdout(x_train, y_train, config.holdout, config.seed)
    run = Path(run_dir) if run_dir is not None else None
    _seed_all(config.seed)
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    rank, world = dist_info()
    if world > 1 and 0 < len(x_train) % config.batch_size < world:
        steps_per_epoch -= 1  # a last batch smaller than the world would leave a rank without data
    opt = make_optimizer(model, config)
    sched = make_scheduler(opt, config, steps_per_epoch)
    extras = TrainingExtras(model, opt, config, holdout, monitor_attack)  # EMA, holdout, best epoch
    history: list[dict[str, Any]] = []
    start_epoch, start_batch = 0, 0
    resumed_logs: dict[str, torch.Tensor] = {}

    if run is not None and run.is_dir() and rank == 0:
        remove_stale_temp_files(run)  # left by a kill in the middle of an atomic write
    if resume:
        if run is None or not (run / STATE_FILE).is_file():
            raise ValueError(f"nothing to resume: no {STATE_FILE} in {run}")
        state = load_state(run / STATE_FILE)
        unwrap(model).load_state_dict(state["model"])
        extras.load(state.get("extras"), model)
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        rngs = state.get("rng_ranks")  # every rank's generator (distributed runs); else rank 0's
        if isinstance(rngs, torch.Tensor) and rngs.dim() == 2 and len(rngs) == world:
            torch.set_rng_state(rngs[rank].clone())
        else:
            torch.set_rng_state(state["rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        start_batch = int(state.get("batch", 0))  # > 0: the run was interrupted mid-epoch
        resumed_logs = {k: torch.as_tensor(v) for k, v in (state.get("partial_logs") or {}).items()}

    setup = getattr(objective, "setup", None)
    if callable(setup):
        setup(model, (x_train, y_train))
    stop = StopFlag()
    with stop.installed():
        for epoch in range(start_epoch, config.epochs):
            first = start_batch if epoch == start_epoch else 0
            logs_acc = dict(resumed_logs) if epoch == start_epoch else {}
            line = _train_epoch(model, objective, opt, sched, x_train, y_train, config, epoch, first, steps_per_epoch,
                                logs_acc, stop, run, history, extras)
            if test_data is not None:
                line.update(_evaluate_epoch(extras.eval_model(model), test_data, config, monitor_attack, epoch))
            line.update(extras.holdout_metrics(model, config.eval_batch_size))
            line["seconds"] = round(time.perf_counter() - line.pop("_t0"), 3)
            history.append(line)
            extras.after_epoch(model, history)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, line)
            if config.verbose and rank == 0:
                shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items() if k != "adv_attack")
                echo(shown)
            if run is not None:
                rngs = gather_rng_states(x_train.device)  # a collective: on every rank
                if rank == 0:
                    _write_epoch(run, model, opt, sched, epoch + 1, history, config, objective, metadata, rngs, extras)
            if any_rank(stop.signum is not None, x_train.device):  # a signal during evaluation: the epoch is saved
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, run)
    extras.finish(model)  # the model takes the weights the run saved (best epoch or average)
    return TrainResult(history=history, resumed_from_epoch=start_epoch)


def _evaluate_epoch(model: nn.Module, test_data: tuple[torch.Tensor, torch.Tensor], config: TrainConfig,
                    monitor_attack: Any | None, epoch: int) -> dict[str, Any]:
    """The epoch's test accuracy (and the monitor attack's). The loss check in the batch loop
    catches a diverging run at its next batch; a divergence in the epoch's very last step shows
    here, as NaN/inf weights or logits (``predict`` refuses the latter with a ValueError), and is
    reported the same way: a FloatingPointError that says to lower the learning rate."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # the same on every rank
        raise FloatingPointError(f"the weights became NaN or infinite in epoch {epoch + 1}; lower the learning rate")
    out: dict[str, Any] = {}
    try:
        out["clean_accuracy"] = sharded_accuracy(model, *test_data, batch_size=config.eval_batch_size)
        if monitor_attack is not None:
            n = min(config.monitor_n, len(test_data[0]))
            out.update(monitor_counts(model, test_data[0][:n], test_data[1][:n], monitor_attack, config.eval_batch_size))
            out["adv_attack"] = repr(monitor_attack)
    except ValueError as e:
        if "NaN or infinite" not in str(e):  # not the logits check of predict / the attacks
            raise
        raise FloatingPointError(f"the model diverged in epoch {epoch + 1} ({e}); lower the learning rate") from None
    return out


def _train_epoch(model, objective, opt, sched, x_train, y_train, config: TrainConfig, epoch: int, first: int,
                 steps_per_epoch: int, logs_acc: dict[str, torch.Tensor], stop: StopFlag, run: Path | None,
                 history: list[dict[str, Any]], extras: TrainingExtras | None = None) -> dict[str, Any]:
    """One epoch of optimiser steps from batch ``first``; returns the epoch's history line (without
    evaluation). Every ``config.checkpoint_every`` global steps it saves a mid-epoch state; on
    SIGINT/SIGTERM (on any rank) it saves one and raises TrainingInterrupted."""
    rank, world = dist_info()
    t0 = time.perf_counter()
    model.train()
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
    order = order.to(x_train.device)
    bar = progress_bar(range(first, steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batches",
                       enabled=config.progress and rank == 0)
    for b in bar:
        idx = order[b * config.batch_size : (b + 1) * config.batch_size]
        if world > 1:
            idx = idx[rank::world]  # each rank trains (and crafts) on its own shard of the global batch
        xb, yb = x_train[idx], y_train[idx]
        loss, logs = objective(model, xb, yb)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {float(loss.detach())} at epoch {epoch + 1}, batch {b}; "
                                     "lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        try:
            opt.step()
        except RuntimeError as e:  # e.g. Adam's lr / (1 - beta1) beyond float32 for an absurd --lr
            if "overflow" not in str(e):
                raise
            raise FloatingPointError(f"the optimiser step overflowed at epoch {epoch + 1}, batch {b} ({e}); "
                                     "lower the learning rate") from None
        if sched is not None:
            sched.step()
        for k, v in logs.items():
            v = v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            logs_acc[k] = logs_acc.get(k, 0) + v
        if config.progress and b % 20 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        # All ranks agree on the step: a stop request is reduced over the ranks, and the periodic
        # checkpoint is a function of the global step count (at an epoch's last step the epoch
        # checkpoint follows instead).
        stopping = any_rank(stop.signum is not None, x_train.device)
        step = epoch * steps_per_epoch + b + 1
        due = config.checkpoint_every > 0 and step % config.checkpoint_every == 0 and b + 1 < steps_per_epoch
        if run is not None and (stopping or due):
            rngs = gather_rng_states(x_train.device)  # a collective: on every rank
            if rank == 0:
                _write_state(run, model, opt, sched, epoch, history, config, batch=b + 1,
                             partial_logs={k: v.detach().cpu() for k, v in logs_acc.items()}, rng_ranks=rngs,
                             extras=extras)
        if stopping:
            bar.close()
            raise TrainingInterrupted(stop.signum or signal.SIGTERM, run)
    bar.close()
    average_buffers(model)
    sums = {f"train_{k}": float(v) / steps_per_epoch for k, v in logs_acc.items()}
    return {"epoch": epoch + 1, **sums, "lr": opt.param_groups[0]["lr"],
            "train_seconds": round(time.perf_counter() - t0, 3), "_t0": t0}


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a consistent state (resume continues it)."""

    def __init__(self, signum: int, run: Path | None) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        where = f"; state saved in {run}, continue with: robustlab train --resume {run}" if run else ""
        super().__init__(f"training interrupted by signal {signum}{where}")


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checks it between batches, so a signal never lands in
    the middle of an optimiser step or a checkpoint write."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handler(self, signum, frame) -> None:
        self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        """Context manager: the flag's SIGINT/SIGTERM handlers while inside, the previous ones restored
        on exit; in a thread other than the main one (where signals cannot be caught) it does nothing."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _write_epoch(run: Path, model: nn.Module, opt, sched, epoch: int, history, config: TrainConfig, objective, metadata,
                 rng_ranks: torch.Tensor | None = None, extras: TrainingExtras | None = None) -> None:
    """Model, history and training state for one finished epoch. The state file is written last:
    it is the commit point that ``resume`` trusts; model and history are derived from it."""
    inner, chosen = extras.saved_model(model) if extras is not None else (unwrap(model), {})
    meta = dict(metadata or {}, **chosen)
    meta.update({"training": config.to_dict(), "objective": objective.config(), "epoch": epoch, "last": history[-1]})
    save_model(inner, run, **meta)
    atomic_write_text(run / HISTORY_FILE, "".join(json.dumps(h, sort_keys=True) + "\n" for h in history))
    _write_state(run, model, opt, sched, epoch, history, config, rng_ranks=rng_ranks, extras=extras)


def _write_state(run: Path, model: nn.Module, opt, sched, epoch: int, history, config: TrainConfig, batch: int = 0,
                 partial_logs: dict[str, torch.Tensor] | None = None, rng_ranks: torch.Tensor | None = None,
                 extras: TrainingExtras | None = None) -> None:
    """The single atomic file ``resume`` trusts: ``epoch`` finished epochs plus ``batch`` steps of
    the next one (0 at an epoch boundary). ``rng_ranks``: every rank's RNG state (distributed runs;
    ``rng`` is this process's, rank 0's there)."""
    extra = {"rng_ranks": rng_ranks} if rng_ranks is not None else {}
    save_state(
        run / STATE_FILE,
        {
            **extra,
            "epoch": epoch,
            "batch": batch,
            "partial_logs": partial_logs or {},
            "model": unwrap(model).state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "rng": torch.get_rng_state(),
            "history": history,
            "config": config.to_dict(),
            "extras": extras.state() if extras is not None else {},
        },
    )


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> None:
    """Merge ``metrics`` into the run's metrics.json (atomically); a key set to None is removed.
    A missing or unreadable metrics.json counts as empty."""
    p = Path(run_dir) / METRICS_FILE
    old = read_json(p)
    old = dict(old) if isinstance(old, dict) else {}
    old.update(metrics)
    atomic_write_json(p, {k: v for k, v in old.items() if v is not None})
