"""Run directories: a training run from one JSON-able spec.

A run directory holds ``config.json`` (the spec: data, model, defense, training), ``model.safetensors``
and ``model.json`` (the checkpoint), ``history.jsonl`` (one line per epoch), ``train_state.safetensors``
(to resume) and ``metrics.json``; the names live in :mod:`robustlab.storage.layout`. The CLI, the
demo and the tests all go through :func:`train_run`.

Under ``torchrun --max-restarts N`` a restarted worker group (TORCHELASTIC_RESTART_COUNT > 0)
resumes the run from its latest checkpoint by itself, but only a run with exactly the same
settings: a difference is a ValueError that names the settings.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..storage import atomic_write_json, ensure_writable_dir
from ..storage.layout import CONFIG_FILE, STATE_FILE
from ..training.loop import TrainConfig, sharded_accuracy, train, write_metrics

MONITOR_EPS = 0.1  # the monitor attack's budget when neither --monitor-eps nor --eps is given
MONITOR_PGD = {"steps": 20, "rel_step_size": 0.1, "seed": 0}  # the per-epoch PGD monitor's settings


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    d = str(device).lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if d != "cpu" and not d.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: expected auto, cpu or cuda[:N]")
    return torch.device(d)


@dataclass
class RunSpec:
    """What a training run is: data, model, defense and optimisation (all JSON-able)."""

    dataset: str = "fashion-mnist"
    data_root: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    model: str = "small-cnn"
    model_options: dict[str, Any] = field(default_factory=dict)
    defense: str = "clean"
    defense_options: dict[str, Any] = field(default_factory=dict)
    monitor: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    # a model of your own (model = "file.py:Name"; model_options are its kwargs) and fine-tuning
    normalize: dict[str, Any] | None = None  # {"mean": [...], "std": [...]}: a Normalize layer in front
    init_from: str | None = None  # weights to start from (safetensors / .pt state dict, or a run directory)
    freeze: list[str] = field(default_factory=list)  # fnmatch patterns of parameter / module names

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-able dict, one key per field; ``from_dict`` reads it back."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """The spec from a ``to_dict`` dict (missing keys take their defaults); unknown keys are a ValueError."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown run config keys: {sorted(unknown)}")
        return cls(**d)


def load_split(spec: RunSpec, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """The spec's data set split, limited to its first N samples when asked, on ``device``."""
    from ..data import load_dataset

    x, y, info = load_dataset(spec.dataset, split, root=spec.data_root)
    limit = spec.train_limit if split == "train" else spec.test_limit
    if limit is not None:
        if limit < 1:
            raise ValueError(f"{split} limit must be >= 1, got {limit}")
        x, y = x[:limit], y[:limit]
    return x.to(device), y.to(device), info


def objective_for_spec(spec: RunSpec) -> Any:
    """The per-batch objective for ``spec.defense`` (see :func:`robustlab.training.build_objective`)."""
    from ..training import build_objective

    return build_objective(spec.defense, **spec.defense_options)


def monitor_spec(attack: str | None, eps: float | None = None, defense_eps: float | None = None,
                 norm: str | None = None) -> dict[str, Any] | None:
    """The ``RunSpec.monitor`` for ``train --monitor-attack/--monitor-eps``: None for no attack or
    'none'; the budget is ``eps``, else the defense's ``defense_eps``, else 0.1; PGD gets 20 seeded
    steps of 0.1 * eps."""
    if not attack or attack.lower() == "none":
        return None
    if eps == 0:  # negative, nan and inf are refused by the threat model itself
        raise ValueError("--monitor-eps must be > 0, got 0 (--monitor-attack none turns the monitor off)")
    budget = eps if eps is not None else (defense_eps if defense_eps else MONITOR_EPS)
    monitor: dict[str, Any] = {"attack": attack, "eps": budget, "norm": norm or "linf"}
    if attack == "pgd":
        monitor.update(MONITOR_PGD)
    return monitor


def build_monitor(spec: RunSpec) -> Any | None:
    """The attack measured on a fixed test subset after every epoch (history's adv_accuracy)."""
    if not spec.monitor:
        return None
    from ..attacks import build_attack
    from ..threat import ThreatModel

    m = dict(spec.monitor)
    threat = ThreatModel(m.pop("norm", "linf"), m.pop("eps", 0.1))
    return build_attack(m.pop("attack", "pgd"), threat, **m)


def setting_differences(spec: RunSpec, config: TrainConfig, saved: dict[str, Any]) -> list[str]:
    """The settings (``spec.KEY`` / ``training.KEY``) in which ``spec`` and ``config`` differ from a
    run's saved ``config.json`` content (``progress`` is not a setting)."""

    def norm(d: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(d, sort_keys=True))

    now = {"spec": norm(spec.to_dict()), "training": norm(config.to_dict())}
    then = {"spec": norm(RunSpec.from_dict(saved.get("spec", {})).to_dict()),
            "training": norm(TrainConfig(**saved.get("training", {})).to_dict())}
    return [f"{part}.{k} ({then[part].get(k)!r} in the run, {now[part].get(k)!r} now)"
            for part in ("spec", "training") for k in sorted(set(now[part]) | set(then[part]))
            if now[part].get(k) != then[part].get(k)]


def elastic_resume(spec: RunSpec, config: TrainConfig, run: Path, device: torch.device) -> bool:
    """True when torchrun's elastic agent restarted this worker group (TORCHELASTIC_RESTART_COUNT
    > 0 on any rank: a collective) and ``run`` holds a checkpoint of this very run (then it resumes
    without --resume). A checkpoint of a run with other settings is a ValueError naming them."""
    from ..distributed import any_rank, restart_count

    restarted = any_rank(restart_count() > 0, device)  # an agent does not count restarts of its healthy workers
    if not restarted or not (run / STATE_FILE).is_file():
        return False  # a first attempt, or a restart before the first checkpoint: start afresh
    cfg_path = run / CONFIG_FILE
    if not cfg_path.is_file():
        raise ValueError(f"torchrun restarted the workers, but {run} has a {STATE_FILE} without {CONFIG_FILE}; "
                         "cannot tell whether it is this run")
    diffs = setting_differences(spec, config, json.loads(cfg_path.read_text()))
    if diffs:
        raise ValueError(f"torchrun restarted the workers, but {run} holds a run with other settings: "
                         f"{'; '.join(diffs)}; it is not resumed (use another --out)")
    return True


def build_run_model(spec: RunSpec, info: Any, x_one: torch.Tensor, y: torch.Tensor) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The spec's model and the options it was built with: a registered architecture (input_size
    from the data), or an entry point ``file.py:Name`` / ``module:Name`` (importing that code,
    announced on stderr; ``model_options`` are its kwargs; checked on one image); then the
    ``init_from`` weights and the ``freeze`` patterns."""
    from ..data_files import check_model_input
    from ..models import build_model
    from ..models.entry import freeze, is_code_entry, load_entry, load_weights, read_state_dict
    from ..storage.layout import MODEL_WEIGHTS

    c, h, w = info.shape
    opts = dict(spec.model_options)
    init = spec.init_from
    if init is not None and Path(init).is_dir():
        init = str(Path(init) / MODEL_WEIGHTS)
    if is_code_entry(spec.model):
        norm = spec.normalize or {}
        model = load_entry(spec.model, opts, init, norm.get("mean"), norm.get("std"))
        check_model_input(model, x_one.cpu(), y.cpu(), f"{info.name} ({c}x{h}x{w} images)")
        model.train()
    else:
        if spec.normalize:
            raise ValueError("--mean/--std go with --model file.py:Name; registered models take "
                             "--model-option mean=[...] --model-option std=[...]")
        if spec.model != "resnet18" and opts.get("input_size", h) != h:  # resnet18 pools globally
            raise ValueError(f"model option input_size={opts['input_size']!r} does not match the {info.name} images ({h}x{w})")
        opts.setdefault("input_size", h)
        model = build_model(spec.model, info.num_classes, c, **opts)
        if init is not None:
            load_weights(model, read_state_dict(init), init)
    if spec.freeze:
        freeze(model, spec.freeze)
    return model, opts


def train_run(spec: RunSpec, run_dir: str | Path, config: TrainConfig, device: str = "auto", resume: bool = False,
              on_stage: Any | None = None, on_epoch_end: Any | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir`` and return its metrics. Under torchrun, a restarted
    worker group resumes by itself (see :func:`elastic_resume`). ``on_stage(stage, text, numbers)``
    hears of each finished step of the offline pipeline (``defense="offline"``); ``on_epoch_end(epoch,
    line)`` of each finished epoch of the other defenses (e.g. a TensorBoard log)."""
    from ..distributed import dist_info, init_from_env, wrap

    run = Path(run_dir)
    dev = init_from_env(resolve_device(device))
    rank, _world = dist_info()
    if not resume and elastic_resume(spec, config, run, dev):
        resume = True
        if rank == 0:
            print(f"torchrun restarted the workers: resuming {run} from its latest checkpoint", file=sys.stderr)
    if resume:
        cfg_path = run / CONFIG_FILE
        if not cfg_path.is_file() or not _has_state(run):
            raise ValueError(f"cannot resume: {run} has no {CONFIG_FILE} and {STATE_FILE} (was it started with --out {run}?)")
        saved = json.loads(cfg_path.read_text())
        spec = RunSpec.from_dict(saved["spec"])
        tc = dict(saved["training"])
        tc["progress"] = config.progress
        config = TrainConfig(**tc)
    else:
        if _has_state(run):
            raise ValueError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
    x_tr, y_tr, info = load_split(spec, "train", dev)
    x_te, y_te, _ = load_split(spec, "test", dev)
    torch.manual_seed(config.seed)
    model, opts = build_run_model(spec, info, x_tr[:1], y_tr)
    model = model.to(dev)
    monitor = build_monitor(spec)
    ensure_writable_dir(run)  # a read-only or unwritable --out fails here, before any training
    if not resume and rank == 0:
        atomic_write_json(run / CONFIG_FILE, {"spec": spec.to_dict(), "training": config.to_dict()})
    metadata = {"dataset": info.to_dict(), "spec": spec.to_dict()}
    if spec.defense == "offline":
        if on_epoch_end is not None:
            raise ValueError("--tensorboard is not available for the offline pipeline (two trainings in one run)")
        return _offline_run(spec, run, config, (x_tr, y_tr), (x_te, y_te), info, opts, metadata, resume, on_stage)
    objective = objective_for_spec(spec)
    prepare = getattr(objective, "prepare", None)
    if callable(prepare):
        prepare(model)  # before the optimiser is built (advprop's auxiliary BatchNorms)
    model = wrap(model, dev, config.sync_batchnorm)
    result = train(
        model,
        objective,
        (x_tr, y_tr),
        (x_te, y_te),
        config,
        run_dir=run,
        resume=resume,
        monitor_attack=monitor,
        metadata=metadata,
        on_epoch_end=on_epoch_end,
    )
    finish = getattr(objective, "finish", None)
    if callable(finish):
        finish(model, run if rank == 0 else None)  # advprop: drop the twins, save the plain model
    metrics = {
        "clean_accuracy": sharded_accuracy(model, x_te, y_te, config.eval_batch_size),
        "test_samples": int(len(y_te)),
        "epochs": config.epochs,
        "train_seconds": round(sum(h.get("seconds", 0.0) for h in result.history), 2),
    }
    last = result.history[-1] if result.history else {}
    if "selected_epoch" in last:  # --select-best robust: the saved model is that epoch's
        metrics["selected_epoch"] = last["selected_epoch"]
        last = result.history[last["selected_epoch"] - 1]
    metrics.update({k: last[k] for k in ("holdout_adv_accuracy",) if k in last})
    if "adv_accuracy" in last:
        metrics["monitor_adv_accuracy"] = last["adv_accuracy"]
    if rank == 0:
        write_metrics(run, metrics)
    return metrics


def load_run_data(run_dir: str | Path, split: str = "test", device: str | torch.device = "cpu", limit: int | None = None):
    """The data set a run (or a zoo model, ``zoo:NAME``) was trained on (from its config), for evaluation."""
    from ..pretrained import entry_path, is_zoo_ref

    run = entry_path(str(run_dir)) if is_zoo_ref(str(run_dir)) else Path(run_dir)
    cfg_path = run / CONFIG_FILE
    if cfg_path.is_file():
        spec = RunSpec.from_dict(json.loads(cfg_path.read_text())["spec"])
    else:
        from ..storage import read_model_metadata

        meta = read_model_metadata(run)
        spec = RunSpec(dataset=meta.get("dataset", {}).get("name", "fashion-mnist"))
    spec.test_limit = limit if limit is not None else spec.test_limit
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return load_split(spec, split, dev)


def _has_state(run: Path) -> bool:
    """A training state in ``run`` (or in its offline pipeline's first stage, ``run/stage1``)."""
    return (run / STATE_FILE).is_file() or (run / "stage1" / STATE_FILE).is_file()


def _offline_run(spec: RunSpec, run: Path, config: TrainConfig, train_data, test_data, info, opts, metadata,
                 resume: bool, on_stage: Any | None = None) -> dict[str, Any]:
    """The slides' offline retraining pipeline (see :mod:`robustlab.training.offline`)."""
    from ..models import build_model
    from ..training.offline import offline_retraining

    unknown = set(spec.defense_options) - {"eps", "norm"}
    if unknown:
        raise ValueError(f"unknown option(s) for defense 'offline': {', '.join(sorted(unknown))}; allowed: eps, norm")
    c = info.shape[0]
    dev = train_data[0].device

    def make_model():
        if ":" in spec.model or spec.init_from or spec.freeze:
            return build_run_model(spec, info, train_data[0][:1], train_data[1])[0].to(dev)
        return build_model(spec.model, info.num_classes, c, **opts).to(dev)

    model, metrics = offline_retraining(make_model, train_data, test_data, config, run_dir=run, metadata=metadata,
                                        resume=resume, monitor_attack=build_monitor(spec), on_stage=on_stage,
                                        **spec.defense_options)
    metrics.update({"clean_accuracy": metrics["retrained_clean_accuracy"], "test_samples": int(len(test_data[1])),
                    "epochs": config.epochs})
    write_metrics(run, metrics)
    return metrics
