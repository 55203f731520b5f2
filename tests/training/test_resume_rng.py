"""Resume restores the global RNG: a *randomised* objective (PGD-AT with a random start, noise
training) interrupted mid-epoch (SIGINT) or killed (SIGKILL) and resumed ends bit-identical to the
uninterrupted run.

The other resume tests train the deterministic ``clean`` objective, so they cannot see a resume
that forgets ``torch.set_rng_state``; here every batch draws from the global generator, and a
resumed run that restarts it from the seed diverges at the first batch after the resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from robustlab.models import build_model
from robustlab.storage import load_model, load_state
from robustlab.training import TrainConfig, build_objective, read_history, train
from robustlab.training.loop import TrainingInterrupted

OBJECTIVES = {"pgd-at": {"eps": 0.1, "steps": 2}, "noise": {"alpha": 0.1}}
CFG = dict(epochs=2, batch_size=64, lr=3e-3, seed=4, progress=False)
STOP_AT = 30  # global batch 30: epoch 2 (22 batches per epoch on digits), batch 8


def _small(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32)


def _assert_identical(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"tensor {k} differs after resume"


class _SignalAt:
    """Wraps an objective; sends ``sig`` to this process when the ``at``-th batch is computed."""

    def __init__(self, inner, at: int, sig: int) -> None:
        self.inner, self.at, self.sig, self.calls = inner, at, sig, 0
        self.name = inner.name

    def config(self):
        return self.inner.config()

    def __call__(self, model, x, y):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.sig)
        return self.inner(model, x, y)


@pytest.fixture(scope="module")
def uninterrupted(digits, tmp_path_factory):
    """One uninterrupted reference per objective (model, history)."""
    xtr, ytr, xte, yte = digits
    out = {}
    for name, opts in OBJECTIVES.items():
        run = tmp_path_factory.mktemp(f"full-{name}")
        model = _small()
        train(model, build_objective(name, **opts), (xtr, ytr), (xte[:100], yte[:100]), TrainConfig(**CFG), run_dir=run)
        out[name] = (model, read_history(run))
    return out


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_sigint_mid_epoch_then_resume_is_bit_identical(name, digits, uninterrupted, tmp_path):
    xtr, ytr, xte, yte = digits
    per_epoch = -(-len(xtr) // 64)
    assert per_epoch == 22, "STOP_AT assumes 22 batches per epoch"
    run = tmp_path / "part"
    obj = _SignalAt(build_objective(name, **OBJECTIVES[name]), STOP_AT, signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        train(_small(), obj, (xtr, ytr), (xte[:100], yte[:100]), TrainConfig(**CFG), run_dir=run)
    assert info.value.exit_code == 130
    state = load_state(run / "train_state.safetensors")
    assert (state["epoch"], state["batch"]) == (1, STOP_AT - per_epoch)  # mid-epoch: the RNG has moved on
    # Something else uses the global generator between the interrupt and the resume, and the
    # resumed run starts from a different initialisation: all must come from the saved state.
    torch.rand(1000)
    resumed = _small(seed=99)
    res = train(resumed, build_objective(name, **OBJECTIVES[name]), (xtr, ytr), (xte[:100], yte[:100]),
                TrainConfig(**CFG), run_dir=run, resume=True)
    assert res.resumed_from_epoch == 1
    full, full_history = uninterrupted[name]
    _assert_identical(full, resumed)
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]  # noqa: E731
    assert strip(read_history(run)) == strip(full_history)


KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from robustlab.data import load_dataset
    from robustlab.models import build_model
    from robustlab.training import TrainConfig, build_objective, train
    name, opts, cfg, run, at = sys.argv[1], {opts}, {cfg}, sys.argv[2], int(sys.argv[3])
    xtr, ytr, _ = load_dataset("digits", "train")
    xte, yte, _ = load_dataset("digits", "test")
    inner = build_objective(name, **opts[name])
    calls = [0]
    class KillAt:
        name = inner.name
        def config(self):
            return inner.config()
        def __call__(self, model, x, y):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no handler, no cleanup
            return inner(model, x, y)
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32)
    train(model, KillAt(), (xtr, ytr), (xte[:100], yte[:100]), TrainConfig(**cfg), run_dir=run)
    """
).format(opts=repr(OBJECTIVES), cfg=repr(CFG))


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_kill_9_mid_epoch_then_resume_is_bit_identical(name, digits, uninterrupted, tmp_path):
    """A real SIGKILL in a child process in the middle of epoch 2; the last commit is epoch 1,
    whose state holds the RNG as it was after epoch 1 (not the seed's)."""
    xtr, ytr, xte, yte = digits
    run = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", KILLED_CHILD, name, str(run), str(STOP_AT)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    state = load_state(run / "train_state.safetensors")
    assert (state["epoch"], state["batch"]) == (1, 0)
    assert len(read_history(run)) == 1
    resumed = _small(seed=99)
    train(resumed, build_objective(name, **OBJECTIVES[name]), (xtr, ytr), (xte[:100], yte[:100]),
          TrainConfig(**CFG), run_dir=run, resume=True)
    full, _ = uninterrupted[name]
    _assert_identical(full, resumed)
    _assert_identical(full, load_model(run))  # the committed model file too
    assert json.loads((run / "model.json").read_text())["epoch"] == 2
