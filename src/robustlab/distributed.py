"""Scale-out on torch.distributed (DDP): gloo on CPU, nccl on CUDA, launched by torchrun.

``robustlab train|evaluate --nproc N`` re-launches the same command under
``python -m torch.distributed.run --nproc-per-node N``; each process then calls
:func:`init_from_env`, which joins the process group that torchrun's environment describes.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

DEFAULT_TIMEOUT_S = 120


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside an initialised torch.distributed group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the model itself).
    Attacks always run on the inner module: crafting must not touch DDP's gradient reducer."""
    return getattr(model, "module", model)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: torch.device, timeout_s: float | None = None) -> torch.device:
    """Join the process group torchrun set up (no-op outside torchrun). Returns this rank's
    device (cuda:LOCAL_RANK on GPU). A dead peer makes collectives fail after ``timeout_s``
    (env ROBUSTLAB_DIST_TIMEOUT, default 120 s) instead of hanging."""
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    timeout = float(timeout_s or os.environ.get("ROBUSTLAB_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
    return device


def wrap(model: nn.Module, device: torch.device, sync_batchnorm: bool = False) -> nn.Module:
    """DDP-wrap ``model`` when running distributed (optionally converting BatchNorm to SyncBatchNorm)."""
    _, world = dist_info()
    if world == 1:
        return model
    if sync_batchnorm:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA devices (torch's SyncBatchNorm is GPU-only); on CPU each "
                             "process keeps its own BatchNorm statistics and DDP broadcasts rank 0's buffers")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sum_across_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


ARGV_ENV = "ROBUSTLAB_RELAUNCH_ARGV"


def relaunched_argv() -> list[str] | None:
    """The arguments :func:`relaunch` handed to this process (None when not relaunched)."""
    text = os.environ.get(ARGV_ENV)
    if text is None:
        return None
    argv = json.loads(text)
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"{ARGV_ENV} must be a JSON list of strings")
    return argv


def relaunch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m robustlab ARGV`` under torchrun with ``nproc`` local processes and return
    its exit code. Multi-node runs use torchrun directly (see README)."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    # The command's own arguments travel in the environment, not on torchrun's command line:
    # torchrun's argparse reads every option-like word, and an abbreviation such as robustlab's
    # --n is "ambiguous" there (--nnodes, --nproc-per-node, ...) and kills the launch.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "robustlab"]
    env = dict(os.environ)
    env[ARGV_ENV] = json.dumps([str(a) for a in argv])
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(cmd, env=env).returncode


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def average_buffers(model: nn.Module) -> None:
    """Average floating buffers (BatchNorm running statistics) over ranks, so every rank holds
    the same model (and a better estimate than any one rank's) before evaluation and saving."""
    _, world = dist_info()
    if world == 1:
        return
    for b in unwrap(model).buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(world)
