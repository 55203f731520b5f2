"""The embedded default job behind ``make demo``: Fashion-MNIST, a small CNN, attacks on it.

Each step writes a run directory under ``out``; a finished step is reused when the demo runs again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from .runs import RunSpec, train_run
from .training import TrainConfig
from .training.loop import STATE_FILE


def _finished(run: Path, epochs: int) -> bool:
    metrics = run / "metrics.json"
    if not (run / STATE_FILE).is_file() or not metrics.is_file():
        return False
    return json.loads(metrics.read_text()).get("epochs") == epochs


def train_step(run: Path, spec: RunSpec, config: TrainConfig, device: str, label: str) -> dict[str, Any]:
    """Train ``spec`` into ``run`` unless a finished run with the same epochs is already there."""
    if _finished(run, config.epochs):
        click.echo(f"[{label}] reusing finished run {run}")
        return json.loads((run / "metrics.json").read_text())
    resume = (run / STATE_FILE).is_file()
    click.echo(f"[{label}] {'resuming' if resume else 'training'} {spec.model} on {spec.dataset} ({config.epochs} epochs) -> {run}")
    return train_run(spec, run, config, device=device, resume=resume)


def run_demo(out: Path, epochs: int = 8, device: str = "auto", progress: bool = True) -> None:
    from .attacks import build_attack
    from .checkpoint import load_model
    from .evaluation import evaluate
    from .runs import load_run_data, resolve_device
    from .threat import ThreatModel
    from .training import write_metrics

    t_start = time.perf_counter()
    dev = resolve_device(device)
    std_run = out / "standard"
    spec = RunSpec(dataset="fashion-mnist", model="small-cnn")
    config = TrainConfig(epochs=epochs, batch_size=128, optimizer="adam", lr=1e-3, schedule="cosine", seed=0, progress=progress)
    m = train_step(std_run, spec, config, device, "1/2 standard training")
    click.echo(f"[1/2] clean accuracy {m['clean_accuracy']:.4f} on {m['test_samples']} Fashion-MNIST test images")

    click.echo("[2/2] attacking 1000 test images at Linf eps=0.1")
    model = load_model(std_run, map_location=dev)
    x, y, _ = load_run_data(std_run, "test", dev, limit=1000)
    threat = ThreatModel("linf", 0.1)
    attacks = [
        build_attack("noise", threat, seed=0),
        build_attack("fgsm", threat),
        build_attack("pgd", threat, steps=20, rel_step_size=0.1, seed=0),
        build_attack("mim", threat, steps=20),
    ]
    res = evaluate(model, x, y, threat, attacks, cascade=False, progress=progress)
    click.echo(f"      {'clean':<8} {res.clean_accuracy:.4f}")
    for name, acc in res.per_attack.items():
        click.echo(f"      {name:<8} {acc:.4f}")
    click.echo(f"      worst    {res.robust_accuracy:.4f}")
    write_metrics(std_run, {"demo_attacks": res.to_dict(per_sample=False)})
    click.echo(f"demo finished in {time.perf_counter() - t_start:.0f}s; runs under {out}")
