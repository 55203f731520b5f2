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
from collections.abc import Sequence

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
    """True inside a multi-process torchrun worker (WORLD_SIZE > 1 and RANK set)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: torch.device, timeout_s: float | None = None) -> torch.device:
    """Join the process group torchrun set up (no-op outside torchrun). Returns this rank's
    device (cuda:LOCAL_RANK on GPU). A dead peer makes collectives fail after ``timeout_s``
    (env ROBUSTLAB_DIST_TIMEOUT, default 120 s) instead of hanging."""
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    timeout = float(timeout_s if timeout_s else os.environ.get("ROBUSTLAB_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        backend = "gloo"
    td = datetime.timedelta(seconds=timeout)
    shared_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    one_agent = os.environ.get("GROUP_WORLD_SIZE", "1") == "1"
    if shared_store and one_agent and restart_count() > 0:
        # torchrun >= 2.4 hands every attempt the agent's TCPStore, keys of the failed attempt
        # included: a restarted gloo/nccl group would read its dead predecessors' addresses and time
        # out connecting (pytorch/pytorch#135712). With one agent the restart count is the same on
        # every worker, so it isolates the attempts.
        store, rank, world = next(dist.rendezvous("env://", timeout=td))
        store = dist.PrefixStore(f"robustlab/attempt_{restart_count()}", store)
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=td)
    else:
        dist.init_process_group(backend=backend, timeout=td)
    if shared_store and not one_agent and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and dist.get_rank() == 0:
        print("robustlab: several torchrun agents with --max-restarts: start them with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
              "so that a restarted worker group gets a fresh store (pytorch/pytorch#135712)", file=sys.stderr)
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


def restart_count() -> int:
    """How often this node's torchrun agent has restarted its workers (``--max-restarts N``): env
    TORCHELASTIC_RESTART_COUNT, 0 on the first attempt and outside torchrun. With several agents
    it is per agent: an agent restarts its healthy workers without counting it, so reduce it over
    the ranks (:func:`any_rank`) to decide anything."""
    try:
        return max(0, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
    except ValueError:
        return 0


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (a collective: every rank must call it at the same
    point). Used so that all ranks agree to stop at the same step after a signal."""
    _, world = dist_info()
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_rng_states(device: torch.device) -> torch.Tensor | None:
    """Every rank's CPU RNG state, stacked as a (world, n) uint8 tensor on the CPU (None outside a
    group). A collective: every rank must call it at the same point. The ranks' generators drift
    apart (shards of unequal size draw different amounts), so a bit-identical resume needs all of them."""
    _, world = dist_info()
    if world == 1:
        return None
    mine = torch.get_rng_state().to(device)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    return torch.stack([p.cpu() for p in parts])


def sum_across_ranks(value: float, device: torch.device) -> float:
    """``value`` summed over all ranks (a collective)."""
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


def shutdown(wait: bool = False) -> None:
    """Leave the process group (no-op outside one). ``wait``: first wait for every rank (after a
    successful run), so no rank tears down its communication threads while another is still
    finishing its last writes; a rank that did so aborted at exit ("terminate called without an
    active exception"). Not after an error: a dead peer would make the wait time out."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
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
