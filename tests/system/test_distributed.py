"""torch.distributed (gloo, 2 processes on CPU) through torchrun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from robustlab.storage import load_model
from robustlab.training import read_history

HELPERS = Path(__file__).parent.parent / "helpers"


def torchrun(*args, timeout=600, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_ddp_adversarial_training_identical_ranks_and_loadable(tmp_path):
    r = torchrun(HELPERS / "ddp_train_worker.py", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    info = json.loads((tmp_path / "rank0.json").read_text())
    assert info["world"] == 2
    losses = [h["train_loss"] for h in info["history"]]
    assert losses[-1] < losses[0]
    single = load_model(tmp_path / "run")  # rank 0's checkpoint loads in one process
    for k, v in single.state_dict().items():
        assert torch.equal(v, w0[k]), k


def test_cli_nproc_trains_and_resumes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "robustlab", "train", "--dataset", "digits", "--model-option", "channels=[8,16]",
            "--model-option", "hidden=32", "--batch-size", "64", "--lr", "3e-3", "--quiet", "--device", "cpu",
            "--nproc", "2", "--monitor-n", "100"]
    r = subprocess.run([*base, "--epochs", "2", "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(read_history(tmp_path / "run")) == 2
    # extend the run: resume continues from the saved state under two processes
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    cfg["training"]["epochs"] = 3
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg))
    r = subprocess.run([sys.executable, "-m", "robustlab", "train", "--resume", str(tmp_path / "run"), "--quiet",
                        "--nproc", "2"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    h = read_history(tmp_path / "run")
    assert [line["epoch"] for line in h] == [1, 2, 3]
    assert h[-1]["clean_accuracy"] > 0.5


def test_killing_one_rank_fails_fast_and_keeps_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", ROBUSTLAB_DIST_TIMEOUT="30")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "robustlab", "train",
           "--dataset", "fashion-mnist", "--train-limit", "4000", "--test-limit", "500", "--model-option", "channels=[8,16]",
           "--model-option", "hidden=32", "--epochs", "50", "--batch-size", "64", "--quiet", "--device", "cpu",
           "--monitor-attack", "none", "--out", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(read_history(run)) < 1:
            time.sleep(0.1)
        assert read_history(run), "no epoch finished in time"
        # find the rank-1 worker: a child python process with RANK=1 in its environment
        victim = None
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"RANK=1" in environ and str(run).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                victim = int(pid)
                break
        assert victim is not None, "rank 1 not found"
        t0 = time.time()
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=180)
        elapsed = time.time() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert elapsed < 150, f"the job took {elapsed:.0f}s to fail"
    assert "FAILED" in stderr or "failed" in stderr.lower()
    model = load_model(run)  # the last checkpoint written by rank 0 is intact
    assert sum(p.numel() for p in model.parameters()) > 0


def test_sharded_evaluation_equals_single_process_sample_for_sample(tmp_path):
    import shutil

    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "robustlab", "train", "--dataset", "digits", "--model-option",
                        "channels=[8,16]", "--model-option", "hidden=32", "--epochs", "4", "--batch-size", "64",
                        "--lr", "3e-3", "--quiet", "--device", "cpu", "--monitor-attack", "none", "--out", str(run)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    shutil.copytree(run, tmp_path / "run2")
    # --n: an abbreviation torchrun's own parser would call ambiguous if it reached it
    args = ["evaluate", "--attacks", "noise,fgsm,pgd,apgd", "--steps", "10", "--eps", "0.1", "--batch-size", "64",
            "--n", "300", "--quiet", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "robustlab", args[0], str(run), *args[1:]], capture_output=True,
                         text=True, env=env, timeout=600)
    two = subprocess.run([sys.executable, "-m", "robustlab", args[0], str(tmp_path / "run2"), *args[1:], "--nproc", "2"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a = json.loads((run / "evaluation.json").read_text())
    b = json.loads((tmp_path / "run2" / "evaluation.json").read_text())
    assert a["per_sample"] == b["per_sample"]
    assert a["robust_accuracy"] == b["robust_accuracy"] and a["per_attack"] == b["per_attack"]
    assert 0 < a["robust_accuracy"] < a["clean_accuracy"] and a["n"] == 300
