"""Data of your own: ``--data PATH`` on the command line, :func:`load_data_path` in Python.

``PATH`` is one of

* a folder with one subfolder per class (the sorted subfolder names are the labels 0, 1, ...),
  holding images Pillow reads (PNG, JPEG, ...), grayscale or RGB, all of one size;
* an ``.npz`` or ``.safetensors`` file with ``x`` (N,C,H,W or N,H,W,C; or N,H,W grayscale) and
  ``y`` (N class indices); ``x`` is uint8 (0..255) or float in [0, 1]. An optional
  ``class_names`` array (npz) names the classes.

Every problem is a :class:`~robustlab.data.DataError` (a ValueError) naming the file. Images come
back as float32 NCHW in [0, 1] and labels as int64, as :func:`robustlab.data.load_dataset` gives.
:func:`check_model_input` runs one forward pass to catch a model/data mismatch before any attack.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import DataError, DatasetInfo

ARRAY_SUFFIXES = (".npz", ".safetensors")
CHANNELS = (1, 3)


def _to_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    """(N,H,W) -> (N,1,H,W); (N,H,W,C) -> (N,C,H,W) when the last axis looks like channels."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise DataError(f"{path}: x has shape {tuple(x.shape)}; expected (N, C, H, W), (N, H, W, C) or (N, H, W)")
    if x.shape[1] not in CHANNELS and x.shape[3] in CHANNELS:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.shape[1] not in CHANNELS:
        raise DataError(f"{path}: x has shape {tuple(x.shape)}: neither axis 1 nor axis 3 holds 1 or 3 channels")
    return x


def _pixels(x: np.ndarray, path: Path) -> torch.Tensor:
    """uint8 0..255 or float in [0, 1] -> float32 in [0, 1]."""
    if x.dtype == np.uint8:
        return torch.from_numpy(x.astype(np.float32) / np.float32(255.0))
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: x has dtype {x.dtype}; expected uint8 (0..255) or float in [0, 1]")
    xf = x.astype(np.float32)
    if xf.size and not np.isfinite(xf).all():
        raise DataError(f"{path}: x holds NaN or infinite values")
    lo, hi = (float(xf.min()), float(xf.max())) if xf.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{path}: float x has values in [{lo:g}, {hi:g}], outside [0, 1] "
                        "(store 0..255 pixels as uint8, or divide by 255)")
    return torch.from_numpy(np.ascontiguousarray(xf))


def _labels(y: np.ndarray, n: int, path: Path) -> torch.Tensor:
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: y has shape {tuple(y.shape)}; expected ({n},), one label per image")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{path}: y has dtype {y.dtype}; expected integer class indices")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: y holds negative labels (min {int(y.min())})")
    return torch.from_numpy(y.astype(np.int64))


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{path}: not a readable .npz file ({e})") from None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable safetensors file ({e})") from None


def load_array_file(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """``(x, y, info)`` from an ``.npz`` or ``.safetensors`` file with ``x`` and ``y``."""
    p = Path(path)
    arrays = _read_arrays(p)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{p}: no {' and '.join(missing)} array (found {sorted(arrays)}); expected x (images) and y (labels)")
    x_np = _to_nchw(np.asarray(arrays["x"]), p)
    if len(x_np) == 0:
        raise DataError(f"{p}: x holds no images")
    x = _pixels(x_np, p)
    y = _labels(np.asarray(arrays["y"]), len(x), p)
    names = arrays.get("class_names")
    classes = tuple(str(c) for c in names.tolist()) if names is not None and names.ndim == 1 else ()
    num_classes = max(len(classes), int(y.max()) + 1)
    if not classes:
        classes = tuple(str(i) for i in range(num_classes))
    info = DatasetInfo(name=str(p), split="file", class_names=classes, shape=tuple(x.shape[1:]),  # type: ignore[arg-type]
                       num_classes=num_classes, root=str(p.resolve().parent))
    return x, y, info


def _read_image(path: Path) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3); DataError naming the file when Pillow cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "1", "LA", "I", "I;16", "F"):
                gray = im.convert("L") if mode in ("L", "1", "LA") else im
                arr = np.asarray(gray)
                if arr.dtype != np.uint8:  # 16-bit / float grayscale
                    raise DataError(f"{path}: {mode} images are not supported; save 8-bit grayscale or RGB")
            else:
                arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read this image ({type(e).__name__}: {e})") from None
    return arr


def load_image_folder(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """``(x, y, info)`` from a folder with one subfolder of images per class (sorted names are
    the labels). Grayscale images become 1 channel; a mix with RGB makes every image RGB."""
    root = Path(path)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders; expected one subfolder of images per class (e.g. {root}/cat/1.png)")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files += [(f, label) for f in sorted((root / name).iterdir()) if f.is_file() and not f.name.startswith(".")]
    if not files:
        raise DataError(f"{root}: the class subfolders {classes[:5]} hold no images")
    images = []
    first: tuple[Path, tuple[int, int]] | None = None
    for f, _ in files:
        arr = _read_image(f)
        if first is None:
            first = (f, arr.shape[:2])
        elif arr.shape[:2] != first[1]:
            raise DataError(f"{f}: image is {arr.shape[1]}x{arr.shape[0]} (WxH) but {first[0]} is "
                            f"{first[1][1]}x{first[1][0]}; all images must have one size")
        images.append(arr)
    rgb = any(a.ndim == 3 for a in images)
    stack = np.stack([np.repeat(a[..., None], 3, axis=2) if rgb and a.ndim == 2 else a for a in images])
    x = _pixels(np.ascontiguousarray(stack.transpose(0, 3, 1, 2)) if rgb else stack[:, None], root)
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    info = DatasetInfo(name=str(root), split="folder", class_names=tuple(classes), shape=tuple(x.shape[1:]),  # type: ignore[arg-type]
                       num_classes=len(classes), root=str(root.resolve()))
    return x, y, info


def load_data_path(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """``(x, y, info)`` from a folder of class subfolders, an ``.npz`` or a ``.safetensors`` file."""
    p = Path(path)
    if p.is_dir():
        return load_image_folder(p)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder (--data takes a folder of class subfolders, .npz or .safetensors)")
    if p.suffix not in ARRAY_SUFFIXES:
        raise DataError(f"{p}: unknown data file type {p.suffix!r}; --data takes a folder of class subfolders, "
                        "an .npz or a .safetensors file with x and y")
    return load_array_file(p)


def data_identity(path: str | os.PathLike, n: int) -> dict[str, Any]:
    """What an evaluation records about ``--data PATH``: its path, kind, ``n`` and a sha256 (of
    the file, or for a folder of every file's relative path and bytes, in sorted order)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0")
            h.update(f.read_bytes())
        kind = "folder"
    else:
        with open(p, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        kind = p.suffix.lstrip(".")
    return {"path": str(p.resolve()), "kind": kind, "n": int(n), "sha256": h.hexdigest()}


def check_model_input(model: nn.Module, x: torch.Tensor, y: torch.Tensor, what: str) -> int:
    """Run ``model`` on one sample of ``x`` and return its number of classes; a ValueError naming
    the expected and the given image shape when the model does not take these images, or gives
    fewer classes than the labels need."""
    shape = "x".join(str(s) for s in x.shape[1:])
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if isinstance(first, nn.Conv2d) and first.in_channels != x.shape[1]:
        raise ValueError(f"the model expects {first.in_channels}-channel images (its first layer is {first}), "
                         f"but {what} holds {shape} (CxHxW) images")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:1])
    except Exception as e:  # a shape error deep inside the user's model
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        expect = f" (its first layer: {first})" if first is not None else ""
        raise ValueError(f"the model does not take the images of {what}: got {shape} (CxHxW){expect}; "
                         f"{type(e).__name__}: {msg}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits of shape (N, classes); on one image of {what} it returned {got}")
    classes = int(out.shape[1])
    if len(y) and int(y.max()) >= classes:
        raise ValueError(f"the model gives {classes} classes, but {what} has label {int(y.max())}")
    return classes


__all__ = ["check_model_input", "data_identity", "load_array_file", "load_data_path", "load_image_folder"]
