"""The embedded default job behind ``make demo``.

Fashion-MNIST, small CNN: (1) standard training on all 60,000 training images; (2) attacks on it
at Linf eps 0.1; (3) fast adversarial training; (4) both models side by side under the same
attacks; (5) an HTML report. Each step writes a run directory under ``out``; a finished step is
reused when the demo runs again, an interrupted one resumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from .runs import RunSpec, train_run
from .storage.layout import CONFIG_FILE, METRICS_FILE, STATE_FILE
from .training import TrainConfig

EPS = 0.1
N_EVAL = 1000
CURVE_EPS = (0.02, 0.05, 0.1, 0.15, 0.2)  # robust accuracy vs eps (APGD-CE, 10 steps)
CURVE_STEPS = (5, 10, 20, 50)  # robust accuracy vs attack iterations (APGD-CE at EPS)
CHECKS_SCALE = 0.25  # the gradient-masking checks at a quarter of their default steps/queries


def _finished(run: Path, spec: RunSpec, epochs: int) -> bool:
    """A finished run of this very spec is in ``run``. A run of another spec there is an error:
    reusing it would silently report other settings, retraining would destroy it."""
    metrics, config = run / METRICS_FILE, run / CONFIG_FILE
    if config.is_file():
        saved = json.loads(config.read_text()).get("spec") or {}
        wanted = json.loads(json.dumps(spec.to_dict()))  # as JSON stores it (tuples become lists)
        changed = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        if changed:
            raise ValueError(f"{run} holds a run with other settings ({', '.join(changed)}); "
                             "remove it or give the demo another --out")
    if not (run / STATE_FILE).is_file() or not metrics.is_file():
        return False
    return json.loads(metrics.read_text()).get("epochs") == epochs


def train_step(run: Path, spec: RunSpec, config: TrainConfig, device: str, label: str) -> dict[str, Any]:
    """Train ``spec`` into ``run`` unless a finished run of it with the same epochs is already there."""
    if _finished(run, spec, config.epochs):
        click.echo(f"{label}: reusing finished run {run}")
        return json.loads((run / METRICS_FILE).read_text())
    resume = (run / STATE_FILE).is_file()
    click.echo(f"{label}: {'resuming' if resume else 'training'} {spec.model} on {spec.dataset}, "
               f"defense {spec.defense}, {config.epochs} epochs -> {run}")
    return train_run(spec, run, config, device=device, resume=resume)


def demo_attacks(threat) -> list:
    """The attacks the demo runs on both models (PGD-20 is the usual yardstick; APGD the stronger)."""
    from .attacks import ATTACKS, build_attack

    attacks = [
        build_attack("noise", threat, seed=0),
        build_attack("fgsm", threat),
        build_attack("pgd", threat, steps=20, rel_step_size=0.1, seed=0),
        build_attack("mim", threat, steps=20),
    ]
    if "apgd" in ATTACKS:
        attacks.append(build_attack("apgd", threat, steps=50, seed=0))
    return attacks


def run_demo(out: Path, epochs: int = 8, robust_epochs: int = 5, device: str = "auto", progress: bool = True,
             train_limit: int | None = None, n_eval: int = N_EVAL) -> Path:
    """Run the whole demo; returns the report's path. ``train_limit`` (first N training images)
    and ``n_eval`` (attacked test images) shrink it for a quick look or a test."""
    if train_limit is not None and train_limit < 1:
        raise ValueError(f"train_limit must be >= 1, got {train_limit}")
    if n_eval < 1:
        raise ValueError(f"n_eval must be >= 1, got {n_eval}")
    from .evaluation import evaluate
    from .runs import load_run_data, resolve_device
    from .storage import load_model
    from .threat import ThreatModel
    from .training import write_metrics

    t_start = time.perf_counter()
    dev = resolve_device(device)
    threat = ThreatModel("linf", EPS)
    runs = {"standard": out / "standard", "fast-at": out / "fast-at"}

    std = train_step(runs["standard"], RunSpec(dataset="fashion-mnist", model="small-cnn", train_limit=train_limit),
                     TrainConfig(epochs=epochs, batch_size=128, lr=1e-3, schedule="cosine", seed=0, progress=progress),
                     device, "[1/5] standard training")
    click.echo(f"      clean accuracy {std['clean_accuracy']:.4f} on {std['test_samples']} Fashion-MNIST test images")

    robust_spec = RunSpec(dataset="fashion-mnist", model="small-cnn", train_limit=train_limit, defense="fast-at",
                          defense_options={"eps": EPS},
                          monitor={"attack": "pgd", "eps": EPS, "steps": 20, "rel_step_size": 0.1, "seed": 0})
    train_step(runs["fast-at"], robust_spec,
               TrainConfig(epochs=robust_epochs, batch_size=128, lr=3e-3, schedule="onecycle", seed=0, progress=progress),
               device, "[2/5] fast adversarial training (Wong et al. 2020)")

    click.echo(f"[3/5] attacking {n_eval} test images at Linf eps={EPS} (each attack on its own; worst case per "
               "sample), then accuracy vs eps and vs iterations, the gradient-masking checks and common corruptions")
    from .evaluation import corruption_metrics, eps_curve, format_checks, iterations_metrics, run_checks

    table: dict[str, dict[str, float]] = {}
    for name, run in runs.items():
        model = load_model(run, map_location=dev)
        x, y, _ = load_run_data(run, "test", dev, limit=n_eval)
        attacks = demo_attacks(threat)
        res = evaluate(model, x, y, threat, attacks, cascade=False, progress=progress)
        table[name] = {"clean": res.clean_accuracy, **res.per_attack, "worst case": res.robust_accuracy}
        by_eps = eps_curve(model, x, y, threat, CURVE_EPS, attacks="quick", scale=0.5)
        by_steps = iterations_metrics(model, x, y, threat, CURVE_STEPS, attack="apgd")
        gradient_attacks = [n for n, a in zip(res.per_attack, attacks) if getattr(a, "uses_gradients", True)]
        checks = run_checks(model, x, y, threat, result=res, scale=CHECKS_SCALE, eps_curve=by_eps,
                            whitebox_names=gradient_attacks)
        click.echo(f"      {name}: " + format_checks(checks).splitlines()[0])
        corrupted = corruption_metrics(model, x, y)
        table[name]["corruptions"] = corrupted["mean_corruption_accuracy"]
        write_metrics(run, {"robust_accuracy": res.robust_accuracy, "per_attack": res.per_attack, "eps": EPS,
                            "norm": "linf", "evaluation": res.to_dict(per_sample=False), "eps_curve": by_eps,
                            **by_steps, "checks": checks, "evaluated_samples": len(y),
                            "evaluation_clean_accuracy": res.clean_accuracy, **corrupted})
    rows = list(next(iter(table.values())))
    click.echo(f"      {'':<12}" + "".join(f"{n:>12}" for n in table))
    for r in rows:
        click.echo(f"      {r:<12}" + "".join(f"{table[n][r]:>12.4f}" for n in table))

    click.echo("[4/5] report artifacts (adversarial examples, feature maps, loss surface, filters, class images, "
               "decision regions, channel maximisation, nearest neighbours)")
    from .report import build_report
    from .runs.artifacts import write_artifacts

    first = None
    for run in runs.values():
        write_artifacts(run, eps=EPS, norm="linf", device=str(dev), compare_run=first)
        first = first or run
    click.echo("[5/5] writing the report")
    report = build_report(list(runs.values()), out / "report", titles=list(runs))
    click.echo(f"demo finished in {time.perf_counter() - t_start:.0f}s")
    click.echo(f"report: {report.resolve()}")
    return report
