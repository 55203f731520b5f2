"""A real read-only file system, which root cannot write through either (CI runs as root, where
the chmod-based tests skip and the simulated read-only test only patches Python's os/open).

The CLI runs inside a private mount namespace (``unshare --mount``) in which a folder is
bind-mounted onto itself and remounted read-only: the kernel refuses every write below it with
EROFS, from Python and from native code (safetensors) alike, and the mount disappears with the
process. Needs ``unshare`` and the right to create a mount namespace (root, or CAP_SYS_ADMIN);
skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NEW_DIGITS_RUN = ["train", "--dataset", "digits", "--model-option", "channels=[8,16]", "--model-option", "hidden=32",
                  "--epochs", "1", "--monitor-attack", "none", "--quiet", "--device", "cpu"]

# Inside the namespace: make $1 read-only, then exec the rest of the command line.
WRAPPER = 'set -e; mount --bind "$1" "$1"; mount -o remount,ro,bind "$1"; shift; exec "$@"'


def _ro_cmd(folder: Path, *cmd: str) -> list[str]:
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", WRAPPER, "sh", str(folder), *cmd]


def _why_no_read_only_mount(tmp: Path) -> str | None:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare/mount not installed"
    probe = tmp / "probe"
    probe.mkdir()
    r = subprocess.run(_ro_cmd(probe, "sh", "-c", f'touch "{probe}/x"'), capture_output=True, text=True, timeout=30)
    if r.returncode == 0:
        return "a read-only bind mount was writable here (unexpected)"
    if "Read-only file system" not in r.stderr:
        return f"cannot create a read-only bind mount in a mount namespace: {r.stderr.strip() or r.returncode}"
    return None


@pytest.fixture()
def read_only_dir(tmp_path: Path) -> Path:
    reason = _why_no_read_only_mount(tmp_path)
    if reason:
        pytest.skip(reason)
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_text("precious\n")
    return ro


def test_train_out_on_a_read_only_mount_exits_2_with_one_line(read_only_dir: Path):
    before = {p.name: p.read_bytes() for p in read_only_dir.iterdir()}
    out = read_only_dir / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(_ro_cmd(read_only_dir, sys.executable, "-m", "robustlab", *NEW_DIGITS_RUN, "--out", str(out)),
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: ") and str(out) in lines[0] and "Read-only file system" in lines[0], lines[0]
    assert r.stdout.strip() == ""
    # nothing lost, nothing created (the mount is gone with the namespace: the folder is writable again)
    assert {p.name: p.read_bytes() for p in read_only_dir.iterdir()} == before


def test_the_read_only_mount_is_real_for_native_writes_too(read_only_dir: Path):
    """The control: a write from outside Python (dd) is refused too, and the same command without
    the mount succeeds, so the refusal above comes from the file system."""
    target = read_only_dir / "native.bin"
    r = subprocess.run(_ro_cmd(read_only_dir, "dd", "if=/dev/zero", f"of={target}", "bs=1k", "count=1"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "Read-only file system" in r.stderr, r.stderr
    assert not target.exists()
    r = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1k", "count=1"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and target.stat().st_size == 1024
