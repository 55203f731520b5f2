"""Noisy Student self-training (Xie et al. 2020), small scale.

1. Train a teacher on the labelled split (plain cross-entropy, no noise).
2. The teacher, in eval mode and without noise, pseudo-labels the unlabelled split (soft labels:
   its softmax, optionally sharpened/softened by a temperature; hard labels: its argmax).
3. Train an equal-or-larger student on labelled + pseudo-labelled data *with noise*: input noise
   (random shifts, optional horizontal flips, Gaussian pixel noise; see :class:`NoisyObjective`)
   and model noise (dropout on small-cnn / mlp, stochastic depth on resnet18).
4. The student becomes the teacher; repeat ``iterations`` times.

Every model is trained by :func:`robustlab.training.loop.train` and written as a run directory
(``teacher``, ``student_1``, ...) that ``robustlab evaluate`` reads like any other run. Each is
scored on clean test accuracy and PGD-20 accuracy (Linf eps 0.1 by default).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._torch import model_guard
from ..attacks import PGD
from ..storage import atomic_write_json
from ..storage.layout import CONFIG_FILE, METRICS_FILE
from ..threat import ThreatModel, canonical_norm
from .loop import TrainConfig, accuracy, robust_accuracy_of, train, write_metrics
from .objectives import Clean

Logs = dict[str, Any]


# --- input noise + (soft) cross-entropy -------------------------------------------------------
def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate every image by its own random (dy, dx) in [-max_shift, max_shift], zero fill."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    s = int(max_shift)
    xp = F.pad(x, (s, s, s, s)).flatten(2)  # (N, C, (H+2s)(W+2s))
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator, device="cpu").to(x.device)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator, device="cpu").to(x.device)
    rows = dy[:, None, None] + torch.arange(h, device=x.device)[None, :, None]
    cols = dx[:, None, None] + torch.arange(w, device=x.device)[None, None, :]
    idx = (rows * (w + 2 * s) + cols).view(n, 1, h * w).expand(n, c, h * w)
    return torch.gather(xp, 2, idx).view(n, c, h, w)


def random_flip(x: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability ``prob``."""
    if prob <= 0:
        return x
    flip = (torch.rand(x.shape[0], generator=generator, device="cpu") < prob).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


class NoisyObjective:
    """Input noise (shift, flip, Gaussian pixel noise, clipped to [0, 1]) then cross-entropy
    against hard labels (int, shape (N,)) or soft labels (float probabilities, shape (N, C))."""

    name = "noisy-student"

    def __init__(self, noise_std: float = 0.1, max_shift: int = 2, flip_prob: float = 0.0,
                 bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        if noise_std < 0 or max_shift < 0 or not 0 <= flip_prob <= 1:
            raise ValueError(f"need noise_std >= 0, max_shift >= 0, 0 <= flip_prob <= 1; got {noise_std}, {max_shift}, {flip_prob}")
        self.noise_std, self.max_shift, self.flip_prob = float(noise_std), int(max_shift), float(flip_prob)
        self.bounds = (float(bounds[0]), float(bounds[1]))

    def config(self) -> dict[str, Any]:
        """The objective's name and noise settings, as recorded in checkpoints."""
        return {"name": self.name, "noise_std": self.noise_std, "max_shift": self.max_shift,
                "flip_prob": self.flip_prob, "bounds": list(self.bounds)}

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the input noise: random shift, random flip, Gaussian noise, clipped to ``bounds``."""
        x = random_flip(random_shift(x, self.max_shift), self.flip_prob)
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        return x.clamp(*self.bounds)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        logits = model(self.augment(x))
        loss = F.cross_entropy(logits, y)  # float (N, C) targets: soft-label cross-entropy
        hard = y.argmax(1) if y.is_floating_point() else y
        return loss, {"loss": loss.detach(), "acc": (logits.detach().argmax(1) == hard).float().mean()}


@torch.no_grad()
def pseudo_label(teacher: nn.Module, x: torch.Tensor, soft: bool = True, temperature: float = 1.0,
                 batch_size: int = 1000) -> torch.Tensor:
    """The teacher's labels for ``x`` in eval mode without noise: probabilities (N, C) when
    ``soft`` (softmax of logits / temperature), else class indices (N,)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with model_guard(teacher):
        logits = torch.cat([teacher(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    return torch.softmax(logits / temperature, 1) if soft else logits.argmax(1)


# --- the pipeline -----------------------------------------------------------------------------
@dataclass
class NoisyStudentConfig:
    """Everything that decides a noisy-student run besides the data and the optimiser."""

    model: str = "small-cnn"
    teacher_options: dict[str, Any] = field(default_factory=dict)
    student_options: dict[str, Any] = field(default_factory=dict)  # overrides teacher_options
    iterations: int = 1
    soft_labels: bool = True
    temperature: float = 1.0
    min_confidence: float = 0.0  # drop pseudo-labelled images the teacher is less sure of
    noise_std: float = 0.1
    max_shift: int = 2
    flip_prob: float = 0.0
    student_dropout: float = 0.5  # small-cnn / mlp students (unless student_options says otherwise)
    student_stochastic_depth: float = 0.2  # resnet18 students
    eval_eps: float = 0.1
    eval_norm: str = "linf"
    eval_steps: int = 20
    eval_n: int | None = 1000

    def __post_init__(self) -> None:
        if int(self.iterations) < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not 0.0 <= self.min_confidence < 1.0:
            raise ValueError(f"min_confidence must be in [0, 1), got {self.min_confidence}")

    @property
    def robust_metric(self) -> str:
        """The key of the PGD accuracy in each generation's metrics, e.g. ``pgd20_accuracy``."""
        return f"pgd{self.eval_steps}_accuracy"

    def student_model_options(self) -> dict[str, Any]:
        """The student's model options: the teacher's, overridden by ``student_options``, plus the
        student's dropout or stochastic depth when the model takes it and ``student_options`` does not set it."""
        from ..models import MODELS

        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}: expected one of {', '.join(MODELS)}")
        opts = {**self.teacher_options, **self.student_options}
        params = inspect.signature(MODELS[self.model].__init__).parameters
        if "dropout" in params and "dropout" not in self.student_options and self.student_dropout > 0:
            opts["dropout"] = self.student_dropout
        if ("stochastic_depth" in params and "stochastic_depth" not in self.student_options
                and self.student_stochastic_depth > 0):
            opts["stochastic_depth"] = self.student_stochastic_depth
        return opts


@dataclass
class NoisyStudentResult:
    """What a noisy-student run produced: the models (teacher first), each student's pseudo-labels and
    kept images, and each generation's metrics."""
    models: list[nn.Module]  # teacher, student_1, ...
    pseudo_labels: list[torch.Tensor]  # the labels student k was trained on (from model k-1)
    kept: list[torch.Tensor]  # per student: which unlabelled images passed min_confidence
    metrics: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        """The JSON-able summary: ``{"generations": metrics}``, one dict per model."""
        return {"generations": self.metrics}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _evaluate(model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], cfg: NoisyStudentConfig, batch_size: int) -> dict[str, Any]:
    x, y = test
    t0 = time.perf_counter()
    clean = accuracy(model, x, y, batch_size)
    n = len(x) if cfg.eval_n is None else min(int(cfg.eval_n), len(x))
    out: dict[str, Any] = {"clean_accuracy": clean, "test_samples": int(len(x))}
    if cfg.eval_steps > 0 and cfg.eval_eps > 0 and n > 0:
        attack = PGD(ThreatModel(canonical_norm(cfg.eval_norm), cfg.eval_eps), steps=cfg.eval_steps, seed=0, early_stop=True)
        out[cfg.robust_metric] = robust_accuracy_of(attack, model, x[:n], y[:n], batch_size)
        out["robust_samples"] = n
        out["attack"] = repr(attack)
    out["eval_seconds"] = round(time.perf_counter() - t0, 2)
    return out


def noisy_student(
    labelled: tuple[torch.Tensor, torch.Tensor],
    unlabelled: torch.Tensor,
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    cfg: NoisyStudentConfig,
    train_config: TrainConfig,
    out_dir: str | Path | None = None,
    run_metadata: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
) -> NoisyStudentResult:
    """Teacher on ``labelled``, then ``cfg.iterations`` noisy students on labelled +
    pseudo-labelled ``unlabelled``. With ``out_dir``, each model is a run directory in it
    (``teacher``, ``student_1``, ...; ``spec`` is the run's data spec for ``config.json``) and
    ``out_dir/metrics.json`` holds the comparison."""
    from ..models import build_model

    x_l, y_l = labelled
    if y_l.is_floating_point() or y_l.dim() != 1:
        raise ValueError("labelled targets must be class indices (N,)")
    c, h = x_l.shape[1], x_l.shape[2]
    out = Path(out_dir) if out_dir is not None else None
    bs = train_config.eval_batch_size

    def fit(model: nn.Module, objective: Any, data: tuple[torch.Tensor, torch.Tensor], name: str, seed: int,
            options: dict[str, Any]) -> float:
        tc = TrainConfig(**{**train_config.to_dict(), "seed": seed, "progress": train_config.progress})
        run = None if out is None else out / name
        meta = dict(run_metadata or {})
        if run is not None:
            run.mkdir(parents=True, exist_ok=True)
            sp = {**(spec or {}), "model": cfg.model, "model_options": options, "defense": "noisy-student",
                  "defense_options": {"role": name, **objective.config()}}
            atomic_write_json(run / CONFIG_FILE, {"spec": sp, "training": tc.to_dict()})
            meta["spec"] = sp
        t0 = time.perf_counter()
        train(model, objective, data, None, tc, run_dir=run, metadata=meta)
        return round(time.perf_counter() - t0, 2)

    def record(model: nn.Module, name: str, seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
        m = {"role": name, "parameters": _count(model), "train_seconds": seconds, **extra, **_evaluate(model, test, cfg, bs)}
        if out is not None:
            write_metrics(out / name, {k: v for k, v in m.items() if k != "role"})
        return m

    # the teacher
    t_opts = {"input_size": h, **cfg.teacher_options}
    torch.manual_seed(train_config.seed)
    teacher = build_model(cfg.model, num_classes, c, **t_opts).to(x_l.device)
    secs = fit(teacher, Clean(), (x_l, y_l), "teacher", train_config.seed, t_opts)
    models, labels_used, kept_masks = [teacher], [], []
    metrics = [record(teacher, "teacher", secs, {"train_images": int(len(x_l))})]

    s_opts = {"input_size": h, **cfg.student_model_options()}
    objective = NoisyObjective(cfg.noise_std, cfg.max_shift, cfg.flip_prob)
    for k in range(1, int(cfg.iterations) + 1):
        current = models[-1]
        pl = pseudo_label(current, unlabelled, soft=cfg.soft_labels, temperature=cfg.temperature, batch_size=bs)
        if cfg.min_confidence > 0:
            probs = pl if cfg.soft_labels else pseudo_label(current, unlabelled, soft=True, batch_size=bs)
            keep = probs.amax(1) >= cfg.min_confidence
        else:
            keep = torch.ones(len(unlabelled), dtype=torch.bool, device=unlabelled.device)
        labels_used.append(pl)
        kept_masks.append(keep)
        if cfg.soft_labels:
            y_all = torch.cat([F.one_hot(y_l, num_classes).to(pl.dtype), pl[keep]])
        else:
            y_all = torch.cat([y_l, pl[keep]])
        x_all = torch.cat([x_l, unlabelled[keep]])
        torch.manual_seed(train_config.seed + k)
        student = build_model(cfg.model, num_classes, c, **s_opts).to(x_l.device)
        if _count(student) < _count(current):
            raise ValueError(f"the student ({_count(student)} parameters) must be equal or larger than its teacher "
                             f"({_count(current)}); adjust student_options")
        secs = fit(student, objective, (x_all, y_all), f"student_{k}", train_config.seed + k, s_opts)
        models.append(student)
        metrics.append(record(student, f"student_{k}", secs, {
            "train_images": int(len(x_all)), "pseudo_labelled": int(keep.sum()),
            "pseudo_label_agreement_with_truth": None,
        }))
    result = NoisyStudentResult(models=models, pseudo_labels=labels_used, kept=kept_masks, metrics=metrics)
    if out is not None:
        atomic_write_json(out / METRICS_FILE, {"config": asdict(cfg), "training": train_config.to_dict(),
                                                 "generations": metrics})
    return result


def run_noisy_student(
    dataset: str,
    labelled: int,
    unlabelled: int,
    cfg: NoisyStudentConfig,
    train_config: TrainConfig,
    out_dir: str | Path | None = None,
    data_root: str | None = None,
    device: str = "auto",
    test_limit: int | None = None,
) -> NoisyStudentResult:
    """Split the data set's training images (seeded permutation) into ``labelled`` labelled and
    ``unlabelled`` unlabelled images (their labels are dropped) and run :func:`noisy_student`;
    scored on the test split (first ``test_limit`` images)."""
    from ..data import load_dataset
    from ..runs import resolve_device

    dev = resolve_device(device)
    x, y, info = load_dataset(dataset, "train", root=data_root)
    x_te, y_te, _ = load_dataset(dataset, "test", root=data_root)
    if labelled < 1 or unlabelled < 1 or labelled + unlabelled > len(x):
        raise ValueError(f"need labelled >= 1, unlabelled >= 1 and labelled + unlabelled <= {len(x)} training images, "
                         f"got {labelled} + {unlabelled}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(train_config.seed))
    li, ui = order[:labelled], order[labelled : labelled + unlabelled]
    if test_limit is not None:
        x_te, y_te = x_te[:test_limit], y_te[:test_limit]
    spec: dict[str, Any] = {"dataset": info.name, "data_root": data_root, "train_limit": None, "test_limit": test_limit,
            "monitor": None, "training": {}}
    result = noisy_student(
        (x[li].to(dev), y[li].to(dev)), x[ui].to(dev), (x_te.to(dev), y_te.to(dev)), info.num_classes, cfg,
        train_config, out_dir=out_dir, run_metadata={"dataset": info.to_dict()}, spec=spec,
    )
    # how good the pseudo-labels were (the true labels of the unlabelled split, for the report only)
    truth = y[ui].to(dev)
    for m, pl, keep in zip(result.metrics[1:], result.pseudo_labels, result.kept):
        hard = pl.argmax(1) if pl.is_floating_point() else pl
        m["pseudo_label_agreement_with_truth"] = float((hard[keep] == truth[keep]).float().mean()) if keep.any() else None
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / METRICS_FILE, {"config": asdict(cfg), "training": train_config.to_dict(),
                                                           "dataset": info.name, "labelled": labelled,
                                                           "unlabelled": unlabelled, "generations": result.metrics})
    return result


__all__ = ["NoisyObjective", "NoisyStudentConfig", "NoisyStudentResult", "noisy_student", "pseudo_label",
           "random_flip", "random_shift", "run_noisy_student"]
