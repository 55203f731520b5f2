"""Where a command's model and data come from: a run directory, or ``--model ENTRY`` and
``--data PATH`` / ``--dataset NAME --split``; each with the identity an evaluation records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DatasetInfo


@dataclass
class ModelSource:
    """A run directory (``run``) or an entry point (``entry`` with ``kwargs``, ``weights``,
    ``mean``/``std``; see :mod:`robustlab.models.entry`). Either may be ``zoo:NAME``, a model of
    the zoo (:mod:`robustlab.pretrained`)."""

    run: str | None = None
    entry: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    def check(self) -> None:
        """Exactly one of a run and an entry point; the entry options only with an entry."""
        if (self.run is None) == (self.entry is None):
            raise ValueError("give the model: a RUN directory or --model ENTRY (not both)")
        if self.entry is None and (self.kwargs or self.weights or self.mean is not None or self.std is not None):
            raise ValueError("--model-kwargs, --weights, --mean and --std go with --model ENTRY, not with a RUN")
        if self.zoo is not None and (self.kwargs or self.weights or self.mean is not None or self.std is not None):
            raise ValueError(f"{self.zoo} is a complete model: --model-kwargs, --weights, --mean and --std do not go with it")

    @property
    def zoo(self) -> str | None:
        """``zoo:NAME`` when the model is one of the zoo's, else None."""
        from ..pretrained import is_zoo_ref

        return next((s for s in (self.run, self.entry) if is_zoo_ref(s)), None)

    def load(self, device: torch.device) -> nn.Module:
        """The model, in eval mode on ``device``."""
        from ..storage import load_model

        self.check()
        if self.run is not None or self.zoo is not None:
            return load_model(self.run or self.entry, map_location=device)  # type: ignore[arg-type]
        from ..models.entry import load_entry

        return load_entry(self.entry, self.kwargs, self.weights, self.mean, self.std).to(device)  # type: ignore[arg-type]

    def identity(self) -> dict[str, Any]:
        """What the evaluation records: the run (and its weights' sha256) or the entry point."""
        from ..models.entry import entry_identity, sha256_file
        from ..pretrained import entry_path, zoo_name
        from ..storage.layout import MODEL_META, MODEL_WEIGHTS, read_json

        if self.entry is not None and self.zoo is None:
            return entry_identity(self.entry, self.kwargs, self.weights, self.mean, self.std)
        run = entry_path(self.zoo) if self.zoo else Path(str(self.run))
        meta = read_json(run / MODEL_META) or {}
        weights = run / str(meta.get("weights", MODEL_WEIGHTS))
        out: dict[str, Any] = {"run": str(run.resolve()), "architecture": meta.get("architecture")}
        if weights.is_file():
            out.update(weights=str(weights.resolve()), weights_sha256=sha256_file(weights))
        if self.zoo:
            out["zoo"] = zoo_name(self.zoo)
        return out

    def describe(self) -> str:
        """The model for messages: the entry point or the run directory, as given."""
        return str(self.entry if self.entry is not None else self.run)


@dataclass
class DataSource:
    """``--data PATH`` (folder / .npz / .safetensors), ``--dataset NAME --split``, or (neither)
    the run's own data set."""

    path: str | None = None
    dataset: str | None = None
    split: str | None = None
    root: str | None = None

    def check(self, run: str | None) -> None:
        """Raise a ValueError for conflicting options (``--data`` with ``--dataset`` or ``--split``) or for
        no data at all when there is no ``run`` to take it from."""
        if self.path is not None and self.dataset is not None:
            raise ValueError("give --data PATH or --dataset NAME, not both")
        if self.path is not None and self.split is not None:
            raise ValueError("--split goes with --dataset NAME (a --data file or folder is used whole)")
        if self.path is None and self.dataset is None and run is None:
            raise ValueError("a model given with --model needs data: --data PATH (a folder of class subfolders, "
                             ".npz or .safetensors) or --dataset NAME [--split test]")

    @property
    def given(self) -> bool:
        """True when ``--data`` or ``--dataset`` was given (False: the run's own data set)."""
        return self.path is not None or self.dataset is not None

    def load(self, run: str | None, device: torch.device, limit: int | None = None,
             split: str = "test") -> tuple[torch.Tensor, torch.Tensor, DatasetInfo, dict[str, Any]]:
        """``(x, y, info, identity)`` on ``device``, the first ``limit`` samples when given;
        ``split`` is the run's or the named data set's split when no --split was given."""
        from ..data import load_dataset
        from ..data_files import data_identity, load_data_path
        from .train import load_run_data

        self.check(run)
        if limit is not None and limit < 1:
            raise ValueError(f"--n must be >= 1, got {limit}")
        if self.path is not None:
            x, y, info = load_data_path(self.path)
            ident = data_identity(self.path, len(y))
        elif self.dataset is not None:
            x, y, info = load_dataset(self.dataset, self.split or split, root=self.root)
            ident = {"dataset": info.name, "split": info.split, "n": int(len(y))}
        else:
            x, y, info = load_run_data(run, split, "cpu")  # type: ignore[arg-type]
            where = run if str(run).startswith("zoo:") else str(Path(str(run)).resolve())
            ident = {"dataset": info.name, "split": info.split, "n": int(len(y)), "from_run": where}
        ident["class_names"] = list(info.class_names)
        if limit is not None:
            x, y = x[:limit], y[:limit]
            ident["first"] = int(len(y))
        return x.to(device), y.to(device), info, ident

    def describe(self, run: str | None) -> str:
        """The data for messages: the path, ``NAME (split)``, or the test set of ``run``."""
        if self.path is not None:
            return str(self.path)
        if self.dataset is not None:
            return f"{self.dataset} ({self.split or 'test'})"
        return f"the test set of {run}"


def model_and_data(model: ModelSource, data: DataSource, device: torch.device, limit: int | None = None,
                   split: str = "test") -> tuple[nn.Module, torch.Tensor, torch.Tensor, DatasetInfo, dict[str, Any]]:
    """Load both, then check on one image that the model takes the data (before any attack)."""
    from ..data_files import check_model_input

    model.check()
    data.check(model.run)
    net = model.load(device)
    x, y, info, ident = data.load(model.run, device, limit, split)
    check_model_input(net, x, y, data.describe(model.run))
    return net, x, y, info, ident


def model_report_dir(model: ModelSource, data: DataSource, out: Path, n_examples: int = 8, eps: float = 0.1,
                     norm: str = "linf", device: str = "cpu") -> Path:
    """``OUT/model/``: what ``robustlab report --model ENTRY --data PATH`` shows of a model that has
    no run directory: its clean accuracy on the data (metrics.json), its identity (config.json's
    spec) and the report artifacts computed on that data."""
    from .._torch import clean_accuracy
    from ..storage import atomic_write_json
    from ..storage.layout import CONFIG_FILE, METRICS_FILE
    from .artifacts import write_artifacts
    from .train import resolve_device

    dev = resolve_device(device)
    net, x, y, info, ident = model_and_data(model, data, dev)
    folder = out / "model"
    write_artifacts(folder, n_examples=n_examples, eps=eps, norm=norm, device=str(dev), model_and_data=(net, x, y, info))
    atomic_write_json(folder / METRICS_FILE, {"clean_accuracy": clean_accuracy(net, x, y, 500), "test_samples": len(y)})
    atomic_write_json(folder / CONFIG_FILE, {"spec": {"model": model.describe(), "dataset": data.describe(model.run),
                                                      "defense": None}, "model": model.identity(), "data": ident})
    return folder


__all__ = ["DataSource", "ModelSource", "model_and_data", "model_report_dir"]
