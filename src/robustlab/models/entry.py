"""Models of your own: ``--model ENTRY`` on the command line, ``load_entry`` in Python.

An entry point is one of

* ``path/to/file.py:Name`` or ``package.module:Name``: a class or factory that returns an
  ``nn.Module`` (called with ``kwargs``); weights from ``weights=``: a safetensors state dict, or a
  ``.pt``/``.pth`` state dict read with ``torch.load(weights_only=True)`` (never unpickled code);
* a TorchScript file (``torch.jit.save``) or a ``torch.export`` program (``.pt2``), which carry
  their weights.

Importing a Python entry point **runs that file's code**: it is the user's own choice, made by
naming it. Every import is announced on stderr. ``mean``/``std`` wrap the model in
:class:`~robustlab.models.Normalize`, so inputs and the threat model stay in pixel space [0, 1].
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .zoo import Normalize

EXPORT_SUFFIXES = (".pt2",)
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def announce(message: str) -> None:
    """Say on stderr what user code is imported (a click-free print: the library is used from
    scripts too)."""
    print(f"robustlab: {message}", file=sys.stderr, flush=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Normalized(nn.Module):
    """``model(Normalize(mean, std)(x))``: a model that expects normalised inputs, fed pixels."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's output on ``(x - mean) / std``, ``x`` in pixel units (N, C, H, W)."""
        return self.model(self.normalize(x))


class ExportedModel(nn.Module):
    """A ``torch.export`` program as a module: ``train()``/``eval()`` (which exported programs
    refuse) only set the flag here; the program runs as it was exported."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> ExportedModel:
        """Only record ``mode`` in ``training`` (the exported program keeps its behaviour); returns ``self``."""
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The exported program's output on ``x``."""
        return self.program(x)


def is_code_entry(entry: str) -> bool:
    """True for ``file.py:Name`` / ``module:Name`` (Python code), False for a model file."""
    return ":" in str(entry) and not Path(str(entry)).is_file()


def split_entry(entry: str) -> tuple[str, str]:
    """``("net.py", "Net")`` for ``"net.py:Net"``; a ValueError naming what is missing."""
    text = str(entry).strip()
    if ":" not in text:
        if text.endswith(".py"):
            raise ValueError(f"--model {text!r} names a Python file but no class or factory: use {text}:Name")
        raise ValueError(f"--model {text!r} is neither an existing model file (TorchScript, .pt2) nor an entry point "
                         f"'file.py:Name' / 'package.module:Name' (missing ':Name')")
    where, name = text.rsplit(":", 1)
    if not where or not name.isidentifier():
        raise ValueError(f"--model {text!r}: expected 'file.py:Name' or 'package.module:Name' with Name a Python identifier")
    return where, name


def _import_file(path: Path) -> Any:
    """Import a .py file as a module (its folder on sys.path while it runs, for its own imports)."""
    if not path.is_file():
        raise ValueError(f"--model: no such Python file: {path}")
    announce(f"importing user code {path.resolve()} (this runs the file's code)")
    mod_name = f"robustlab_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--model: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[mod_name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise ValueError(f"--model: importing {path} failed: {type(e).__name__}: {e}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _import_module(name: str) -> Any:
    announce(f"importing user code: module {name} (this runs its code)")
    try:
        return importlib.import_module(name)
    except Exception as e:
        raise ValueError(f"--model: cannot import module {name!r}: {type(e).__name__}: {e}") from None


def resolve_callable(entry: str) -> Callable[..., Any]:
    """The class or factory an entry point names (importing its file or module)."""
    where, name = split_entry(entry)
    module = _import_file(Path(where)) if where.endswith(".py") or os.sep in where or "/" in where else _import_module(where)
    obj = getattr(module, name, None)
    if obj is None:
        raise ValueError(f"--model {entry!r}: {where} has no {name!r}")
    if not callable(obj):
        raise ValueError(f"--model {entry!r}: {name} is not a class or function")
    return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a ``.pt``/``.pth`` file with ``weights_only=True``
    (a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped; DDP's ``module.``
    prefix dropped)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--weights: no such file: {p}")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"--weights {p} is not a readable safetensors file ({e})") from None
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            why = str(e).split(". ")[0].splitlines()[0] if str(e) else ""
            raise ValueError(f"--weights {p} could not be read as a state dict with torch.load(weights_only=True) "
                             f"({type(e).__name__}: {why})") from None
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--weights {p} does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` after checking every name and shape (a ValueError naming
    ``source`` and the first mismatches otherwise)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"weights {source} do not fit {type(model).__name__}: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"weights {source} do not fit {type(model).__name__}: {k!r} has shape "
                             f"{tuple(state[k].shape)}, the model expects {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)


def build_from_entry(entry: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Import ``entry`` (``file.py:Name`` / ``module:Name``) and call it with ``kwargs``."""
    factory = resolve_callable(entry)
    kw = dict(kwargs or {})
    try:
        if kw:
            inspect.signature(factory).bind(**kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--model-kwargs {kw} do not fit {entry}: {e}") from None
    try:
        model = factory(**kw)
    except Exception as e:
        raise ValueError(f"--model {entry}: calling it failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {entry} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_model_file(path: Path) -> nn.Module:
    """A TorchScript file or a torch.export program (.pt2), as an nn.Module."""
    if path.suffix in EXPORT_SUFFIXES:
        try:
            program = torch.export.load(str(path))
        except Exception as e:
            raise ValueError(f"--model {path} is not a torch.export program ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
        return ExportedModel(program.module())
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception:
        hint = " (weights: give them with --weights and the model as --model file.py:Name)" if path.suffix in (
            ".safetensors", *STATE_DICT_SUFFIXES) else ""
        raise ValueError(f"--model {path} is not a model file: neither TorchScript (torch.jit.save) nor a torch.export "
                         f"program (.pt2){hint}") from None


def load_entry(entry: str, kwargs: dict[str, Any] | None = None, weights: str | os.PathLike | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> nn.Module:
    """The model an entry point names, with its weights, wrapped in Normalize when ``mean`` or
    ``std`` is given, in eval mode on the CPU (see the module docstring for the forms).

    The returned module carries ``robustlab_entry`` (entry, kwargs, normalisation) when it is a
    Python entry point, so :func:`robustlab.save_model` records it and
    :func:`robustlab.load_model` can rebuild it."""
    text = str(entry).strip()
    path = Path(text)
    if path.is_file() and path.suffix != ".py":
        if kwargs:
            raise ValueError("--model-kwargs only apply to a class or factory (file.py:Name), not to a model file")
        if weights is not None:
            raise ValueError(f"--weights: {path} carries its own weights (TorchScript / torch.export)")
        model = _load_model_file(path)
        code = False
    else:
        model = build_from_entry(text, kwargs)
        code = True
        if weights is not None:
            load_weights(model, read_state_dict(weights), str(weights))
    if mean is not None or std is not None:
        c = len(mean if mean is not None else std)  # type: ignore[arg-type]
        mean_v = list(mean) if mean is not None else [0.0] * c
        std_v = list(std) if std is not None else [1.0] * c
        if len(mean_v) != len(std_v):
            raise ValueError(f"--mean and --std need one value per channel each, got {mean_v} and {std_v}")
        model = Normalized(model, mean_v, std_v)
    if code:
        info: dict[str, Any] = {"entry": text, "kwargs": dict(kwargs or {})}
        if mean is not None or std is not None:
            info.update(mean=mean_v, std=std_v)
        model.robustlab_entry = info  # type: ignore[assignment]
    return model.eval()


def entry_identity(entry: str, kwargs: dict[str, Any] | None = None, weights: str | os.PathLike | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> dict[str, Any]:
    """What an evaluation records about an entry-point model: the entry (and its file's path
    and sha256), kwargs, the weights file and its sha256, the normalisation."""
    text = str(entry).strip()
    out: dict[str, Any] = {"entry": text}
    path = Path(text)
    if path.is_file():
        out.update(kind="torch.export" if path.suffix in EXPORT_SUFFIXES else "torchscript", file=str(path.resolve()),
                   sha256=sha256_file(path))
    else:
        where, _ = split_entry(text)
        out["kind"] = "python"
        if where.endswith(".py") and Path(where).is_file():
            out.update(file=str(Path(where).resolve()), code_sha256=sha256_file(where))
        if kwargs:
            out["kwargs"] = dict(kwargs)
    if weights is not None:
        out.update(weights=str(Path(weights).resolve()), weights_sha256=sha256_file(weights))
    if mean is not None or std is not None:
        out.update(mean=list(mean) if mean is not None else None, std=list(std) if std is not None else None)
    return out


def freeze(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter whose name (or a module prefix of it)
    matches one of the fnmatch ``patterns`` (``features.*``, ``backbone``); returns the frozen
    parameter names. A pattern that matches nothing is a ValueError (a typo must not train
    everything)."""
    frozen: list[str] = []
    names = [n for n, _ in model.named_parameters()]
    for pat in patterns:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pat) or any(
            fnmatch.fnmatchcase(".".join(n.split(".")[:i]), pat) for i in range(1, n.count(".") + 1))]
        if not hit:
            raise ValueError(f"--freeze {pat!r} matches no parameter; names look like {names[:4]}")
        frozen.extend(h for h in hit if h not in frozen)
    params = dict(model.named_parameters())
    for n in frozen:
        params[n].requires_grad_(False)
    return frozen


__all__ = ["ExportedModel", "Normalized", "build_from_entry", "entry_identity", "freeze", "is_code_entry", "load_entry", "load_weights",
           "read_state_dict", "resolve_callable", "sha256_file", "split_entry"]
