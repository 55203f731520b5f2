"""Files on disk: the one atomic write every robustlab file goes through, and the validated
readers of safetensors files and JSON sidecars.

A write goes to a temp file ``.NAME.XXXX.tmp`` in the destination's folder, is fsynced, given
the mode a plain ``open()`` would have created (the umask applies) and renamed over the
destination with ``os.replace``: readers see the old file or the new one, never half of either.
A failed write raises an OSError naming the destination, not the temp file, and leaves the old
file as it was. Safetensors files are serialised to bytes and written the same way.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not match its declared architecture."""


# --- writing ----------------------------------------------------------------------------------
def _umask_mode() -> int:
    """0o666 minus the process umask: what a plain open() would have created (mkstemp uses 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_error(path: Path, e: OSError) -> OSError:
    """The OSError of a failed write, naming the destination instead of the temp file."""
    return OSError(e.errno, f"cannot write {path} ({e.strerror or e}); the previous file, if any, is unchanged")


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create directory ``path`` if needed and check that a file can be created in it, so an
    unwritable or read-only output location fails before any work is done (OSError naming it)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(e.errno, f"cannot write to directory {path} ({e.strerror or e})") from None
    return path


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files a killed atomic write leaves behind in ``folder`` (``.NAME.*.tmp``,
    and ``.tmp*`` from the safetensors file writer that older versions used); the committed
    files are untouched. Returns the removed paths."""
    removed = []
    for p in Path(folder).iterdir():
        if p.is_file() and p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.startswith(".tmp")):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, then rename: readers
    see the old file or the new one, never half of either. A failed write (disk full, read-only
    folder) raises OSError naming ``path`` and leaves the old file as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8) written to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON written to ``path`` atomically; tuples, sets, paths
    and one-element tensors / numpy scalars are converted."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot store {type(o).__name__} in JSON")


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """``tensors`` (moved to the CPU, made contiguous) as a safetensors file at ``path``, with
    string ``metadata`` in its header, written atomically (see :func:`atomic_write_bytes`)."""
    data = safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


# --- reading ----------------------------------------------------------------------------------
def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (on the CPU). Never unpickles: a pickle / ``torch.save``
    file, a missing file or a malformed one raises :class:`CheckpointError` naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path))  # never unpickles, whatever the file holds
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        # Only now look at the first bytes, to say what the file probably is: a valid safetensors
        # header length can start with 0x80 too (about one file in 256), so this is no pre-check.
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80" or head == b"PK":
            raise CheckpointError(
                f"{path} looks like a pickle / torch.save file; robustlab never unpickles. Convert it to safetensors"
            ) from None
        raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None


def read_json_record(path: str | os.PathLike, fmt: str, version: int, what: str) -> dict[str, Any]:
    """A JSON sidecar that must be a ``{"format": fmt, "format_version": N, ...}`` object with
    ``1 <= N <= version``; anything else raises :class:`CheckpointError` naming ``path``.
    ``what`` names the record in messages ("model", "detector")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} metadata not found: {path}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CheckpointError(f"{path} is not a robustlab {what} record (format != {fmt!r})")
    found = meta.get("format_version")
    if isinstance(found, bool) or not isinstance(found, int) or not 1 <= found <= version:
        raise CheckpointError(
            f"{path} has format_version {found!r}; this robustlab reads {fmt} versions 1 to {version}"
        )
    return meta
