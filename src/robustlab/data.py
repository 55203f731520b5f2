"""Image datasets for robustness experiments, read from local files only.

``load_dataset(name, split, root)`` returns ``(x, y, info)``: ``x`` float32 NCHW in [0, 1]
(contiguous), ``y`` int64 of shape (N,), and a :class:`DatasetInfo` describing what was loaded.

Supported datasets (nothing is ever downloaded):

* ``fashion-mnist`` -- IDX files, by default from ``/usr/share/datasets/fashion-mnist``
  (Debian package ``dataset-fashion-mnist``); ``root=`` overrides.
* ``mnist`` -- the same IDX format; ``root=`` is required.
* ``cifar10`` -- the *binary* CIFAR-10 release (``data_batch_1.bin`` .. ``test_batch.bin``);
  ``root=`` is required. The pickle release is refused: unpickling runs arbitrary code.
* ``digits`` -- scikit-learn's bundled 8x8 digits, with a fixed stratified split.

Every file is validated in full (magic numbers, dtype, shape, exact size, label range) and any
problem raises one :class:`DataError` naming the file and how to get good data, instead of a
reshape error or, worse, silently wrong images.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "FASHION_MNIST_ROOT",
    "DataError",
    "DatasetInfo",
    "load_dataset",
    "read_idx",
]

DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist", "cifar10", "digits")
SPLITS: tuple[str, ...] = ("train", "test")
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
_CIFAR_DIR = "cifar-10-batches-bin"
_CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + channel-major 3x32x32 pixels
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# IDX dtype codes (third magic byte); only unsigned bytes are valid for image datasets.
_IDX_DTYPES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """A dataset file is missing, unreadable or corrupt; the message names the path and a fix."""


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`load_dataset` loaded: enough to rebuild a model's input/output layer."""

    name: str  # "fashion-mnist" | "mnist" | "cifar10" | "digits"
    split: str  # "train" | "test"
    class_names: tuple[str, ...]
    shape: tuple[int, int, int]  # (C, H, W) of one image
    num_classes: int
    root: str | None  # directory the files were read from (None for digits)

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists), e.g. for run metadata."""
        return {
            "name": self.name,
            "split": self.split,
            "class_names": list(self.class_names),
            "shape": list(self.shape),
            "num_classes": self.num_classes,
            "root": self.root,
        }


# --------------------------------------------------------------------------------------------
# Hints: how to get the data, appended to every DataError.


def _fashion_hint(default_root: bool) -> str:
    files = ", ".join(f"{stem}.gz" for pair in _IDX_FILES.values() for stem in pair)
    if default_root:
        return (
            "Install it with `apt-get install dataset-fashion-mnist`, or pass root= a directory "
            f"holding {files} (gzipped or not)."
        )
    return (
        f"Pass root= a directory holding {files} (gzipped or not), or root=None to use "
        f"{FASHION_MNIST_ROOT} (`apt-get install dataset-fashion-mnist`)."
    )


def _mnist_hint() -> str:
    files = ", ".join(f"{stem}.gz" for pair in _IDX_FILES.values() for stem in pair)
    return f"Pass root= a directory holding the MNIST IDX files {files} (gzipped or not)."


def _cifar_hint() -> str:
    return (
        f"Download the CIFAR-10 *binary* version (cifar-10-binary.tar.gz) from {_CIFAR_URL}, "
        f"extract it and pass root= the {_CIFAR_DIR} directory (or its parent)."
    )


_IDX_HINT = "Re-download the file; it must be a (possibly gzipped) IDX file of unsigned bytes."


def _fail(path: str | os.PathLike, problem: str, hint: str) -> DataError:
    return DataError(f"{os.fspath(path)}: {problem}. {hint}")


# --------------------------------------------------------------------------------------------
# IDX


def _read_bytes(path: Path, hint: str) -> bytes:
    """The file's contents, gunzipped if it starts with the gzip magic (whatever its name)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _fail(path, "file not found", hint) from None
    except OSError as e:
        raise _fail(path, f"cannot read file ({e.strerror or e})", hint) from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        problem = f"corrupt or truncated gzip data ({type(e).__name__}: {e})"
        raise _fail(path, problem, hint) from None


def _read_idx(path: Path, hint: str, ndim: int | None = None) -> np.ndarray:
    data = _read_bytes(path, hint)
    if len(data) < 4:
        raise _fail(path, f"too short for an IDX header ({len(data)} bytes)", hint)
    zero, code, nd = int.from_bytes(data[0:2], "big"), data[2], data[3]
    magic = int.from_bytes(data[0:4], "big")
    if zero != 0 or code not in _IDX_DTYPES or nd == 0:
        raise _fail(path, f"bad IDX magic number 0x{magic:08X} (not an IDX file)", hint)
    if code != 0x08:
        raise _fail(
            path,
            f"IDX dtype code 0x{code:02X} ({_IDX_DTYPES[code]}); only 0x08 (unsigned byte) is "
            "supported",
            hint,
        )
    if ndim is not None and nd != ndim:
        kind = {1: "label", 3: "image"}
        raise _fail(
            path,
            f"IDX magic 0x{magic:08X} has {nd} dimension(s), expected {ndim} "
            f"(magic 0x{0x0800 | ndim:08X}, an {kind.get(ndim, f'{ndim}-d')} file)",
            hint,
        )
    header = 4 + 4 * nd
    if len(data) < header:
        raise _fail(path, f"truncated IDX header ({len(data)} bytes, need {header})", hint)
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=nd, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise _fail(
            path,
            f"size mismatch: dims {dims} need {expected} bytes, file has {len(data)} "
            "(truncated or padded)",
            hint,
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not, detected from its content) as a read-only uint8 array.

    Validates the magic number (two zero bytes, dtype code 0x08 = unsigned byte, the number of
    dimensions, which must equal ``ndim`` when given) and that the size is exactly the header
    plus ``prod(dims)``. Any problem raises :class:`DataError` naming ``path``. The array is a
    read-only view of the file's bytes; ``.copy()`` it to modify.
    """
    return _read_idx(Path(path), _IDX_HINT, ndim)


def _find_idx(root: Path, stem: str, hint: str) -> Path:
    """``root/stem.gz`` if present, else the un-gzipped ``root/stem``; DataError if neither."""
    gz, raw = root / f"{stem}.gz", root / stem
    if gz.is_file():
        return gz
    if raw.is_file():
        return raw
    raise _fail(gz, f"file not found (nor un-gzipped {raw.name})", hint)


def _load_idx_pair(images: Path, labels: Path, num_classes: int, hint: str):
    x = _read_idx(images, hint, ndim=3)
    y = _read_idx(labels, hint, ndim=1)
    if x.shape[0] == 0:
        raise _fail(images, "contains no images", hint)
    if x.shape[0] != y.shape[0]:
        raise _fail(
            labels,
            f"holds {y.shape[0]} labels but {images.name} holds {x.shape[0]} images",
            hint,
        )
    _check_labels(y, num_classes, labels, hint)
    return x[:, None, :, :], y


def _check_labels(y: np.ndarray, num_classes: int, path: Path, hint: str) -> None:
    bad = np.flatnonzero(y >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise _fail(
            path,
            f"label {int(y[i])} at index {i} is out of range 0..{num_classes - 1} "
            f"({bad.size} bad label(s))",
            hint,
        )


# --------------------------------------------------------------------------------------------
# CIFAR-10 (binary)


def _cifar_dir(root: Path) -> Path:
    """The directory holding the .bin batches: ``root`` itself or ``root/cifar-10-batches-bin``."""
    hint = _cifar_hint()
    names = set(_CIFAR_FILES["train"] + _CIFAR_FILES["test"])
    if root.is_dir() and any((root / n).is_file() for n in names):
        return root
    if (root / _CIFAR_DIR).is_dir():
        return root / _CIFAR_DIR
    pickle_dir = root if root.name == "cifar-10-batches-py" else root / "cifar-10-batches-py"
    if pickle_dir.is_dir() or (root / "data_batch_1").is_file():
        where = pickle_dir if pickle_dir.is_dir() else root
        raise _fail(
            where,
            "this is the Python pickle version of CIFAR-10; only the binary version is "
            "supported (unpickling can run arbitrary code)",
            hint,
        )
    if not root.exists():
        raise _fail(root, "directory not found", hint)
    raise _fail(root, f"no CIFAR-10 binary batches (data_batch_1.bin or {_CIFAR_DIR}/) here", hint)


def _read_cifar_batch(path: Path, hint: str) -> tuple[np.ndarray, np.ndarray]:
    data = _read_bytes(path, hint)
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise _fail(
            path,
            f"size {len(data)} bytes is not a positive multiple of the {_CIFAR_RECORD}-byte "
            "record (1 label byte + 3x32x32 pixels); truncated or not a CIFAR-10 binary batch",
            hint,
        )
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    y = rec[:, 0]
    _check_labels(y, 10, path, hint)
    return rec[:, 1:].reshape(-1, 3, 32, 32), y


def _cifar_class_names(folder: Path, hint: str) -> tuple[str, ...]:
    meta = folder / "batches.meta.txt"
    if not meta.is_file():
        return CIFAR10_CLASSES
    try:
        names = tuple(s.strip() for s in meta.read_text(encoding="utf-8").splitlines() if s.strip())
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(meta, f"cannot read class names ({e})", hint) from None
    if len(names) != 10:
        raise _fail(meta, f"expected 10 class names (one per line), found {len(names)}", hint)
    return names


# --------------------------------------------------------------------------------------------
# Loading and caching


def _canonical(name: object, split: object) -> tuple[str, str]:
    key = str(name).strip().lower().replace("_", "-") if isinstance(name, str) else None
    if key == "cifar-10":
        key = "cifar10"
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    sp = split.strip().lower() if isinstance(split, str) else None
    if sp not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return key, sp


def _stamp(paths: list[Path]) -> tuple:
    """Cache key part that changes whenever a file is replaced or rewritten."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _cached_idx(name: str, split: str, root: str, default_root: bool, stamp: tuple):
    hint = _fashion_hint(default_root) if name == "fashion-mnist" else _mnist_hint()
    images, labels = (Path(s[0]) for s in stamp)
    return _load_idx_pair(images, labels, 10, hint)


@functools.lru_cache(maxsize=8)
def _cached_cifar(split: str, folder: str, stamp: tuple):
    hint = _cifar_hint()
    parts = [_read_cifar_batch(Path(s[0]), hint) for s in stamp]
    x = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    y = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
    return x, y, _cifar_class_names(Path(folder), hint)


@functools.lru_cache(maxsize=2)
def _cached_digits(split: str):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _resolve_root(root: str | os.PathLike) -> Path:
    return Path(os.fspath(root)).expanduser().resolve()


def _idx(name: str, split: str, root: str | os.PathLike | None):
    if name == "mnist" and root is None:
        raise ValueError(
            "mnist needs root=: a directory holding train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
            "(gzipped or not); it is not bundled or downloaded"
        )
    default_root = root is None
    folder = _resolve_root(FASHION_MNIST_ROOT if root is None else root)
    if name == "fashion-mnist":
        hint, classes = _fashion_hint(default_root), FASHION_MNIST_CLASSES
    else:
        hint, classes = _mnist_hint(), MNIST_CLASSES
    if not folder.is_dir():
        raise _fail(folder, "not a directory" if folder.exists() else "directory not found", hint)
    paths = [_find_idx(folder, stem, hint) for stem in _IDX_FILES[split]]
    x, y = _cached_idx(name, split, str(folder), default_root, _stamp(paths))
    return x, y, classes, str(folder)


def _cifar(split: str, root: str | os.PathLike | None):
    if root is None:
        raise ValueError(
            f"cifar10 needs root=: the {_CIFAR_DIR} directory of the binary release "
            f"(cifar-10-binary.tar.gz from {_CIFAR_URL}) or its parent; it is not downloaded"
        )
    folder = _cifar_dir(_resolve_root(root))
    paths = [folder / n for n in _CIFAR_FILES[split]]
    for p in paths:
        if not p.is_file():
            raise _fail(p, "file not found", _cifar_hint())
    x, y, classes = _cached_cifar(split, str(folder), _stamp(paths))
    return x, y, classes, str(folder)


def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """Load a whole split as ``(x, y, info)``: x float32 NCHW in [0, 1], y int64 (N,).

    ``name`` is one of :data:`DATASETS`, ``split`` is ``"train"`` or ``"test"``.
    ``root`` is the directory to read from: optional for ``fashion-mnist`` (default
    :data:`FASHION_MNIST_ROOT`), required for ``mnist`` and ``cifar10`` (for CIFAR-10, the
    ``cifar-10-batches-bin`` folder or its parent), and must be None for ``digits``.

    ``digits`` (scikit-learn's 1797 8x8 images, pixels 0..16 divided by 16) has no official
    split, so a fixed one is used: ``train_test_split(x, y, test_size=0.25, random_state=0,
    stratify=y)``, giving 1347 train and 450 test images with every class in both.

    Files are parsed once per process (cached as uint8 arrays keyed on the files' paths,
    sizes and mtimes); every call returns fresh tensors, so callers may modify them freely.
    Missing or corrupt files raise :class:`DataError`; a bad name, split or root ValueError.
    """
    name, split = _canonical(name, split)
    if name == "digits":
        if root is not None:
            raise ValueError("digits is bundled with scikit-learn and takes no root= (pass None)")
        x8, y8 = _cached_digits(split)
        x_np, y_np = x8.copy(), y8.copy()
        classes, where = MNIST_CLASSES, None
    else:
        if name == "cifar10":
            xu, yu, classes, where = _cifar(split, root)
        else:
            xu, yu, classes, where = _idx(name, split, root)
        x_np = xu.astype(np.float32)  # fresh, C-contiguous
        x_np /= np.float32(255.0)
        y_np = yu.astype(np.int64)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    info = DatasetInfo(
        name=name,
        split=split,
        class_names=tuple(classes),
        shape=tuple(int(s) for s in x.shape[1:]),  # type: ignore[arg-type]
        num_classes=len(classes),
        root=where,
    )
    return x, y, info
