"""A worker script for torchrun, in two modes.

``ddp_train_worker.py OUT`` (tests/system/test_distributed.py): adversarial training (pgd-at) on
digits with DDP (BatchNorm buffers broadcast from rank 0); each rank writes its final weights and
its loss history so the test can check that every rank ends identical and that the loss went down.

``ddp_train_worker.py --cli [--] ARGS...`` (tests/system/test_elastic.py): robustlab's command line
(``python -m robustlab ARGS``) with one TEST HOOK, inert unless its environment variable is set:

- ``ROBUSTLAB_TEST_KILL=RANK:CALL:MARKER`` -- the worker of global rank RANK SIGKILLs itself
  (kill -9: no handler, no cleanup) when the training objective is called for the CALL-th time,
  i.e. after CALL - 1 finished optimiser steps, unless the file MARKER exists; it creates MARKER
  first, so only one worker is ever killed. (TORCHELASTIC_RESTART_COUNT cannot tell: with several
  agents, an agent that restarts its healthy workers does not count it.)

In a restarted group (MARKER exists), rank 0 prints ``ELASTIC restart state_epoch=E
state_batch=B`` (the checkpoint it resumes from) to stderr, so the test can report the timeline.
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

KILL_ENV = "ROBUSTLAB_TEST_KILL"


def _cli(argv: list[str]) -> None:
    """Run robustlab's CLI with the kill hook installed (when ROBUSTLAB_TEST_KILL is set)."""
    from robustlab.cli import main
    from robustlab.runs import train as runs_train

    rank = int(os.environ.get("RANK", "0"))
    hook = os.environ.get(KILL_ENV)
    marker = Path(hook.split(":", 2)[2]) if hook else None
    if marker is not None and not marker.exists():
        kill_rank, kill_call = (int(v) for v in hook.split(":")[:2])
        if rank == kill_rank:
            make = runs_train.objective_for_spec

            def killing_objective(spec):
                inner = make(spec)

                class KillAt:
                    name = inner.name
                    calls = 0

                    def config(self):
                        return inner.config()

                    def __call__(self, model, x, y):
                        KillAt.calls += 1
                        if KillAt.calls == kill_call:
                            marker.touch()
                            print(f"ELASTIC kill rank={rank} call={kill_call}", file=sys.stderr, flush=True)
                            os.kill(os.getpid(), signal.SIGKILL)
                        return inner(model, x, y)

                return KillAt()

            runs_train.objective_for_spec = killing_objective
    elif marker is not None and rank == 0 and "--out" in argv:
        from robustlab.storage import load_state

        state_file = Path(argv[argv.index("--out") + 1]) / "train_state.safetensors"
        if state_file.is_file():
            st = load_state(state_file)
            print(f"ELASTIC restart state_epoch={int(st['epoch'])} state_batch={int(st['batch'])}",
                  file=sys.stderr, flush=True)
    main(args=argv, prog_name="robustlab")


def _ddp(out: Path) -> None:
    """Adversarial training through the Python API; each rank saves its weights and history."""
    from robustlab.data import load_dataset
    from robustlab.distributed import dist_info, init_from_env, shutdown, unwrap, wrap
    from robustlab.models import build_model
    from robustlab.training import TrainConfig, build_objective, train

    dev = init_from_env(torch.device("cpu"))
    rank, world = dist_info()
    xtr, ytr, _ = load_dataset("digits", "train")
    xte, yte, _ = load_dataset("digits", "test")
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32, batchnorm=True)
    model = wrap(model, dev)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, seed=0, progress=False)
    res = train(model, build_objective("pgd-at", eps=0.1, steps=3), (xtr, ytr), (xte, yte), cfg, run_dir=out / "run")
    save_file({k: v.contiguous() for k, v in unwrap(model).state_dict().items()}, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({"world": world, "history": res.history}))
    shutdown(wait=True)  # every rank done writing before any tears down gloo (an early one aborts at exit)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cli"]:
        args = sys.argv[2:]
        _cli(args[1:] if args[:1] == ["--"] else args)
    else:
        _ddp(Path(sys.argv[1]))
