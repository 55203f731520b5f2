"""Torn JSON writes: a kill or a full disk in the middle of writing ``model.json``,
``history.jsonl``, ``metrics.json`` or ``config.json`` leaves the previous file intact, and never
a partial file under the final name.

The failures are real and happen inside the write, whatever the code that writes: a child process
runs the library call with RLIMIT_FSIZE below the size of the new file, so the kernel stops the
write part-way through. With SIGXFSZ at its default action the kernel *kills* the process at that
moment (a kill mid-write); with SIGXFSZ ignored (Python's default) the write fails with EFBIG as
a full disk fails with ENOSPC. Only ``robustlab.storage`` package-level names and OS-level hooks
are used, so the tests do not depend on how the storage package is split into modules.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from robustlab.models import build_model
from robustlab.storage import atomic_write_json, atomic_write_text, remove_stale_temp_files, save_model
from robustlab.training import TrainConfig, build_objective, train, write_metrics

LIMIT = 64 * 1024  # the largest file the child may write; every new file below is ~10x larger
BIG = "x" * (10 * LIMIT)

# What writes each file, as the library does it (the training loop writes history.jsonl with
# atomic_write_text, train_run writes config.json with atomic_write_json, write_metrics merges
# into metrics.json, save_model writes model.json after the weights).
WRITERS = {
    "model.json": "save_model(small(), run, note=payload)",
    "history.jsonl": "atomic_write_text(run / 'history.jsonl', "
                     "''.join(json.dumps({'epoch': i, 'pad': payload}) + '\\n' for i in range(3)))",
    "metrics.json": "write_metrics(run, {'clean_accuracy': 0.5, 'pad': payload})",
    "config.json": "atomic_write_json(run / 'config.json', {'spec': {'pad': payload}, 'training': {}})",
}

# One child process imports torch once, then forks one grandchild per (file, mode): the limit and
# the signal disposition are set in the grandchild only, just before its single write.
CHILD = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    from pathlib import Path
    import torch
    from robustlab.models import build_model
    from robustlab.storage import atomic_write_json, atomic_write_text, save_model
    from robustlab.training import write_metrics

    def small():
        torch.manual_seed(0)
        return build_model("small-cnn", 10, 1, input_size=8, channels=(4, 8), hidden=16)

    jobs, limit, payload = json.loads(sys.argv[1]), int(sys.argv[2]), "x" * int(sys.argv[3])
    results = {}
    for key, (run, mode, writer) in jobs.items():
        run = Path(run)
        err_path = run.parent / (run.name + ".err")
        pid = os.fork()
        if pid == 0:
            fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            code = 0
            if mode != "none":
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            if mode == "kill":
                signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # the kernel kills us when the write crosses the limit
            try:
                exec(writer)
            except OSError as e:
                os.write(2, f"OSError: {e}".encode())
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        results[key] = {"returncode": code, "stderr": err_path.read_text()}
    print(json.dumps(results))
    """
)
MODES = {"kill": "kill", "disk full": "full", "no limit": "none"}


def small():
    torch.manual_seed(0)
    return build_model("small-cnn", 10, 1, input_size=8, channels=(4, 8), hidden=16)


def _old_run(run: Path) -> None:
    """A run folder holding small, valid versions of all four files (and the weights)."""
    run.mkdir()
    save_model(small(), run, note="old")
    atomic_write_text(run / "history.jsonl", json.dumps({"epoch": 1}) + "\n")
    write_metrics(run, {"clean_accuracy": 0.25})
    atomic_write_json(run / "config.json", {"spec": {"dataset": "digits"}, "training": {"epochs": 1}})


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def _visible(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if not k.startswith(".")}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """{(file, mode): (run folder, files before, child result)} for every file and mode."""
    root = tmp_path_factory.mktemp("torn")
    jobs, before = {}, {}
    for name, writer in WRITERS.items():
        for mode, arg in MODES.items():
            run = root / f"{name}-{arg}"
            _old_run(run)
            before[f"{name}|{mode}"] = (run, _files(run))
            jobs[f"{name}|{mode}"] = (str(run), arg, writer)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(jobs), str(LIMIT), str(len(BIG))],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout.strip().splitlines()[-1])
    return {tuple(k.split("|")): (*before[k], results[k]) for k in jobs}


@pytest.mark.parametrize("name", list(WRITERS))
@pytest.mark.parametrize("mode", ["kill", "disk full"])
def test_failure_in_the_middle_of_a_json_write_keeps_the_previous_file(outcomes, name, mode):
    run, before, r = outcomes[(name, mode)]
    assert all(len(v) < LIMIT for v in before.values())  # the old files fit; only the new one does not
    after = _files(run)
    if mode == "kill":
        assert r["returncode"] == -signal.SIGXFSZ, r
        # the kill landed inside the write: a hidden temp file holds exactly the part written
        partial = {k: v for k, v in after.items() if k not in before}
        assert list(partial) and all(k.startswith(".") for k in partial), list(partial)
        assert [len(v) for v in partial.values()] == [LIMIT], {k: len(v) for k, v in partial.items()}
    else:
        assert r["returncode"] == 3, r
        assert str(run / name) in r["stderr"] and "File too large" in r["stderr"], r
        assert after.keys() == before.keys(), "a failed write leaves no temp file behind"
    # the previous file is intact, byte for byte, and nothing partial is visible under any name
    assert _visible(after) == before
    remove_stale_temp_files(run)  # what resume does first
    assert _files(run) == before


@pytest.mark.parametrize("name", list(WRITERS))
def test_the_same_write_without_a_limit_succeeds(outcomes, name):
    """The control: the child's writes are real (so the failures above come from the limit)."""
    run, before, r = outcomes[(name, "no limit")]
    assert r["returncode"] == 0, r
    new = (run / name).read_bytes()
    assert new != before[name] and len(new) > len(BIG)


def test_a_failing_history_write_during_training_keeps_the_last_committed_history(digits, tmp_path, monkeypatch):
    """In-process, through the training loop: the rename of epoch 2's history.jsonl fails (as a
    full disk would fail the write); the epoch-1 history is intact and no torn file is visible."""
    xtr, ytr, xte, yte = digits
    cfg = TrainConfig(epochs=2, batch_size=128, lr=3e-3, seed=0, progress=False)
    run = tmp_path / "run"
    model = small()
    obj = build_objective("clean")
    epoch1: dict[str, bytes] = {}

    def snapshot(epoch, line):
        if epoch == 2:
            epoch1.update(_files(run))
            real_replace, real_rename = os.replace, os.rename

            def failing(src, dst, *a, **kw):
                if os.path.basename(os.fsdecode(dst)) == "history.jsonl":
                    raise OSError(28, os.strerror(28), os.fsdecode(dst))  # ENOSPC
                return real_replace(src, dst, *a, **kw)

            monkeypatch.setattr(os, "replace", failing)
            monkeypatch.setattr(
                os,
                "rename",
                lambda s, d, *a, **kw: (
                    failing(s, d) if os.path.basename(os.fsdecode(d)) == "history.jsonl" else real_rename(s, d, *a, **kw)
                ),
            )

    with pytest.raises(OSError, match="history.jsonl"):
        train(model, obj, (xtr[:512], ytr[:512]), (xte[:64], yte[:64]), cfg, run_dir=run, on_epoch_end=snapshot)
    monkeypatch.undo()
    after = _files(run)
    assert epoch1, "epoch 2 never ended"
    assert after["history.jsonl"] == epoch1["history.jsonl"]
    assert [json.loads(s)["epoch"] for s in after["history.jsonl"].decode().splitlines()] == [1]
    assert not [k for k in after if k.startswith(".")], "the failed write left a temp file"


def test_atomic_write_flushes_to_disk_before_the_rename(tmp_path, monkeypatch):
    """Durability order: the new bytes are fsync'ed (in a temp file of the same folder) before the
    rename makes them visible; a write that skipped the fsync could, after a power cut, leave an
    empty file under the final name."""
    target = tmp_path / "metrics.json"
    target.write_text("{}\n")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *a, **kw):
        events.append(("rename", os.fsdecode(src), os.fsdecode(dst)))
        return real_replace(src, dst, *a, **kw)

    def rename(src, dst, *a, **kw):
        events.append(("rename", os.fsdecode(src), os.fsdecode(dst)))
        return real_rename(src, dst, *a, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    atomic_write_json(target, {"a": 1})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}
    renames = [e for e in events if e[0] == "rename" and e[2] == str(target)]
    assert len(renames) == 1, events
    tmp = renames[0][1]
    assert os.path.dirname(tmp) == str(tmp_path) and tmp != str(target)
    synced = [i for i, e in enumerate(events) if e == ("fsync", tmp)]
    assert synced and synced[0] < events.index(renames[0]), events
