"""Fault-tolerant, multi-node training on torch.distributed (issue 21).

- ``--checkpoint-every``: a crash mid-epoch loses at most that many steps, and the resumed run is
  bit-identical to an uninterrupted one (in-process, no torchrun);
- torchrun restarts (``TORCHELASTIC_RESTART_COUNT > 0``) resume by themselves, only into a run
  with the same settings (in-process, the variable set by hand);
- two torchrun agents (``--nnodes 2``, c10d rendezvous on 127.0.0.1, one process each) end with the
  same weights as one agent with two processes;
- a worker SIGKILLed mid-epoch under ``--max-restarts 1``: the job completes by itself and ends
  with an uninterrupted run's weights and history (one agent; and, marked slow, two agents).

All torchrun jobs run on gloo with one thread per process, every wait is bounded, and a job that
outlives its test is killed with its whole process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustlab.models import build_model
from robustlab.runs import RunSpec, train_run
from robustlab.storage import load_model, load_state
from robustlab.training import TrainConfig, build_objective, read_history, train

WORKER = Path(__file__).parent.parent / "helpers" / "ddp_train_worker.py"
WALL_CLOCK = {"seconds", "train_seconds"}
JOB_TIMEOUT = 240  # seconds for one torchrun job (they take ~10-30 s on a loaded 2-core machine)
CHECKPOINT_EVERY = 5
KILL_CALL = 30  # rank 1 dies when the objective is called the 30th time: 29 steps done, 22 per epoch
TRAIN_ARGS = ["train", "--dataset", "digits", "--test-limit", "100", "--model-option", "channels=[8,16]",
              "--model-option", "hidden=32", "--defense", "pgd-at", "--eps", "0.1", "--defense-option", "steps=2",
              "--epochs", "2", "--batch-size", "64", "--lr", "3e-3", "--seed", "3", "--monitor-attack", "none",
              "--checkpoint-every", str(CHECKPOINT_EVERY), "--quiet", "--device", "cpu"]


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ROBUSTLAB_DIST_TIMEOUT="30", **extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(torchrun_args: list[str], target: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """A torchrun agent in its own process group (so a stuck job can be killed whole)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args, *target]
    with open(log, "w") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(procs: list[subprocess.Popen], timeout: float = JOB_TIMEOUT) -> list[int]:
    """Exit codes of ``procs``; kills every process group still running at the deadline."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _robustlab(out: Path) -> list[str]:
    return ["-m", "robustlab", "--", *TRAIN_ARGS, "--out", str(out)]


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = load_model(a).state_dict(), load_model(b).state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"tensor {k} differs"
    strip = lambda h: [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in h]  # noqa: E731
    assert strip(read_history(a)) == strip(read_history(b))


@pytest.fixture(scope="module")
def one_node_two_procs(tmp_path_factory) -> Path:
    """The reference: one torchrun agent, two processes, no failure."""
    out = tmp_path_factory.mktemp("one-node") / "run"
    log = out.parent / "log.txt"
    p = _start(["--standalone", "--nproc-per-node", "2"], _robustlab(out), log, _env())
    assert _wait([p]) == [0], log.read_text()[-3000:]
    assert [h["epoch"] for h in read_history(out)] == [1, 2]
    return out


# --- in-process: --checkpoint-every and the restart rule -----------------------------------------
class _Crash(Exception):
    pass


class _CrashAt:
    """Wraps an objective; raises at its ``at``-th call (no signal: nothing is saved on the way out,
    as after a kill -9)."""

    def __init__(self, inner, at: int) -> None:
        self.inner, self.at, self.calls, self.name = inner, at, 0, inner.name

    def config(self):
        return self.inner.config()

    def __call__(self, model, x, y):
        self.calls += 1
        if self.calls == self.at:
            raise _Crash
        return self.inner(model, x, y)


def _small():
    torch.manual_seed(0)
    return build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32)


def test_checkpoint_every_bounds_the_loss_and_resume_is_bit_identical(digits, tmp_path):
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = digits
    cfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=5, progress=False, checkpoint_every=CHECKPOINT_EVERY)
    objective = lambda: build_objective("pgd-at", eps=0.1, steps=2)  # noqa: E731 -- randomised: uses the RNG
    full = _small()
    train(full, objective(), (xtr, ytr), (xte[:100], yte[:100]), cfg, run_dir=tmp_path / "full")
    run = tmp_path / "crashed"
    with pytest.raises(_Crash):
        train(_small(), _CrashAt(objective(), KILL_CALL), (xtr, ytr), (xte[:100], yte[:100]), cfg, run_dir=run)
    state = load_state(run / "train_state.safetensors")
    # 29 steps done (22 in epoch 1); the last multiple of 5 is step 25 = epoch 2, batch 3: 4 steps lost
    assert (state["epoch"], state["batch"]) == (1, 3)
    torch.rand(100)  # the global RNG moves on before the resume: it must come from the state
    resumed = _small()
    train(resumed, objective(), (xtr, ytr), (xte[:100], yte[:100]), cfg, run_dir=run, resume=True)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    _assert_same_run(tmp_path / "full", run)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 0"):
        TrainConfig(checkpoint_every=-1)


def test_torchrun_restart_resumes_only_the_same_run(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    run = tmp_path / "run"
    spec = RunSpec(dataset="digits", train_limit=256, test_limit=50, model_options={"channels": [4, 8], "hidden": 16},
                   defense="pgd-at", defense_options={"eps": 0.1, "steps": 1})
    cfg = TrainConfig(epochs=2, batch_size=64, seed=1, progress=False, checkpoint_every=3)
    train_run(spec, run, TrainConfig(**{**cfg.to_dict(), "epochs": 1}, progress=False), device="cpu")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with pytest.raises(ValueError, match=r"other settings: training\.epochs \(1 in the run, 2 now\)"):
        train_run(spec, run, cfg, device="cpu")
    other = RunSpec(**{**spec.to_dict(), "defense_options": {"eps": 0.2, "steps": 1}})
    with pytest.raises(ValueError, match=r"spec\.defense_options"):
        train_run(other, run, TrainConfig(**{**cfg.to_dict(), "epochs": 1}, progress=False), device="cpu")
    # the same settings: a restart resumes without --resume (here: nothing left to do)
    train_run(spec, run, TrainConfig(**{**cfg.to_dict(), "epochs": 1}, progress=False), device="cpu")
    assert len(read_history(run)) == 1
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # a first attempt never resumes silently
    with pytest.raises(ValueError, match="already holds a run"):
        train_run(spec, run, cfg, device="cpu")


# --- torchrun: two nodes, and a worker killed under --max-restarts --------------------------------
def test_two_nodes_equal_one_node_with_two_processes(one_node_two_procs, tmp_path):
    out, port = tmp_path / "run", _free_port()
    agents = []
    for node in (0, 1):
        args = ["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"two-nodes-{port}", "--local-addr", "127.0.0.1"]
        agents.append(_start(args, _robustlab(out), tmp_path / f"node{node}.txt", _env()))
    codes = _wait(agents)
    logs = "\n".join((tmp_path / f"node{n}.txt").read_text()[-2000:] for n in (0, 1))
    assert codes == [0, 0], logs
    _assert_same_run(one_node_two_procs, out)


def _assert_killed_and_resumed(text: str) -> None:
    """The timeline: rank 1 died at its 30th objective call (29 steps done), the group restarted
    and resumed from the checkpoint of step 25 (epoch 2, batch 3), then finished both epochs."""
    assert f"ELASTIC kill rank=1 call={KILL_CALL}" in text, text[-4000:]
    assert "ELASTIC restart state_epoch=1 state_batch=3" in text, text[-4000:]
    assert "torchrun restarted the workers: resuming" in text, text[-4000:]


def test_killed_worker_is_restarted_and_the_run_ends_as_if_uninterrupted(one_node_two_procs, tmp_path):
    """One agent, plain torchrun (no environment variable needed), --max-restarts 1."""
    out, log = tmp_path / "run", tmp_path / "log.txt"
    env = _env(ROBUSTLAB_TEST_KILL=f"1:{KILL_CALL}:{tmp_path / 'killed'}")
    p = _start(["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--monitor-interval", "0.5"],
               [str(WORKER), "--cli", "--", *TRAIN_ARGS, "--out", str(out)], log, env)
    codes = _wait([p])
    text = log.read_text()
    assert codes == [0], text[-4000:]
    _assert_killed_and_resumed(text)
    _assert_same_run(one_node_two_procs, out)
    assert load_model(out).robustlab_metadata["epoch"] == 2


@pytest.mark.slow
def test_two_nodes_killed_worker_is_restarted_and_the_run_ends_as_if_uninterrupted(one_node_two_procs, tmp_path):
    """Two agents (as on a cluster), --max-restarts 1: the killed worker's agent restarts it, the
    other agent restarts its healthy worker (without counting a restart: the resume decision is
    reduced over the ranks). Reproduce: pytest -m slow tests/system/test_elastic.py -k two_nodes_killed"""
    out, port = tmp_path / "run", _free_port()
    env = _env(ROBUSTLAB_TEST_KILL=f"1:{KILL_CALL}:{tmp_path / 'killed'}", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    agents = []
    for node in (0, 1):
        args = ["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"two-nodes-kill-{port}", "--local-addr", "127.0.0.1",
                "--max-restarts", "1", "--monitor-interval", "0.5"]
        agents.append(_start(args, [str(WORKER), "--cli", "--", *TRAIN_ARGS, "--out", str(out)], tmp_path / f"node{node}.txt", env))
    codes = _wait(agents, timeout=2 * JOB_TIMEOUT)
    text = "\n".join((tmp_path / f"node{n}.txt").read_text() for n in (0, 1))
    assert codes == [0, 0], text[-4000:]
    _assert_killed_and_resumed(text)
    _assert_same_run(one_node_two_procs, out)
