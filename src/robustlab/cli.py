"""The ``robustlab`` command line: train, attack, evaluate, demo.

Bad input ends with exit code 2 and one line naming the problem (no traceback).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import __version__


def _one_line_error(e: BaseException) -> None:
    """Print ``e`` as one line on stderr (no usage block, no traceback) and exit with code 2."""
    if isinstance(e, click.UsageError):
        msg = e.format_message()
        if e.ctx is not None:
            msg += f" (see '{e.ctx.command_path} -h')"
    elif isinstance(e, OSError) and e.strerror:
        msg = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    else:
        msg = str(e)
    click.echo("error: " + " ".join(msg.split()), err=True)
    sys.exit(2)


class _Group(click.Group):
    """Bad input ends as one line on stderr and exit code 2: ValueError (our 'bad input' signal),
    click's own usage errors, OSError (a missing, unwritable or full output location) and
    FloatingPointError (a diverged run, e.g. from a learning rate far too high)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `robustlab`: the help text, as click shows it
                raise
            _one_line_error(e)
            raise  # not reached

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # output piped into `head` and the like: click's own handling
        except (click.UsageError, ValueError, OSError, FloatingPointError) as e:
            _one_line_error(e)


def _parse_floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be a comma-separated list of numbers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{what} is empty")
    return vals


def _argv_without_nproc(argv: list[str]) -> list[str]:
    """The command line minus ``--nproc N`` / ``--nproc=N`` (for the torchrun relaunch)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def _cli_attack(name: str, threat: Any, steps: int | None, surrogate: Any) -> Any:
    """An attack for ``evaluate --attacks``: seeded, with --steps mapped to each attack's budget."""
    from .attacks import ATTACKS, Transfer, attack_options, build_attack

    if name == "transfer":
        if surrogate is None:
            raise ValueError("the transfer attack needs --surrogate RUN (the model that crafts the examples)")
        return Transfer(threat, surrogate)
    if name not in ATTACKS:
        build_attack(name, threat)  # raises the registry's "unknown attack" error
    allowed = attack_options(ATTACKS[name]) or []
    opts: dict[str, Any] = {"seed": 0} if "seed" in allowed else {}
    if steps is not None:
        if "steps" in allowed:
            opts["steps"] = steps
        elif "queries" in allowed:
            opts["queries"] = steps
    return build_attack(name, threat, **opts)


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs; values parsed as JSON when possible (numbers, true/false, lists)."""
    out: dict[str, Any] = {}
    for p in pairs:
        k, eq, v = p.partition("=")
        if not eq or not k.strip():
            raise ValueError(f"option {p!r} must look like KEY=VALUE")
        try:
            out[k.strip().replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip().replace("-", "_")] = v
    return out


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robustlab")
def main() -> None:
    """Attack, harden and honestly evaluate image classifiers."""


# --- train -----------------------------------------------------------------------------------
@main.command()
@click.argument("run_arg", metavar="[RUN]", required=False, type=click.Path(file_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--resume", is_flag=True, help="Continue the run in RUN/--out from its last finished epoch.")
@click.option("--dataset", default="fashion-mnist", show_default=True, help="fashion-mnist | mnist | cifar10 | digits")
@click.option("--data-root", default=None, help="Folder with the data files (required for mnist, cifar10).")
@click.option("--train-limit", type=int, default=None, help="Use only the first N training images.")
@click.option("--test-limit", type=int, default=None, help="Use only the first N test images.")
@click.option("--model", "model_name", default="small-cnn", show_default=True, help="small-cnn | mlp | resnet18")
@click.option("--batchnorm/--no-batchnorm", default=None, help="BatchNorm in small-cnn / mlp.")
@click.option("--activation", default=None, help="relu | gelu | silu | softplus")
@click.option("--denoise", default=None, metavar="OP",
              help="Feature-denoising blocks (small-cnn, resnet18): nonlocal | mean | median | bilateral "
                   "(tune with --model-option denoise_embed=dot, denoise_stages=[1], ...).")
@click.option("--model-option", "model_option", multiple=True, help="Extra model option KEY=VALUE (repeatable).")
@click.option("--defense", default="clean", show_default=True, help="Training objective (clean, or an adversarial one).")
@click.option("--eps", type=float, default=None, help="Defence budget (adversarial objectives).")
@click.option("--norm", default=None, help="linf | l2 (adversarial objectives).")
@click.option("--defense-option", "defense_option", multiple=True, help="Objective option KEY=VALUE (repeatable).")
@click.option("--monitor-attack", default="pgd", show_default=True,
              help="Attack measured on a fixed test subset after every epoch (history adv_accuracy); 'none' to skip.")
@click.option("--monitor-eps", type=float, default=None, help="Budget of the monitor attack (default: --eps or 0.1).")
@click.option("--monitor-n", type=int, default=500, show_default=True, help="Test images for the monitor attack.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--optimizer", default="adam", show_default=True, help="sgd | adam | adamw")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--schedule", default="none", show_default=True, help="none | cosine | step | onecycle")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--nproc", type=int, default=1, show_default=True,
              help="Processes for data-parallel training (torch.distributed via torchrun; gloo on CPU, nccl on CUDA).")
@click.option("--sync-bn", is_flag=True, help="SyncBatchNorm across processes (with --nproc > 1).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(run_arg, out, resume, dataset, data_root, train_limit, test_limit, model_name, batchnorm, activation,
          denoise, model_option, defense, eps, norm, defense_option, monitor_attack, monitor_eps, monitor_n, epochs,
          batch_size, optimizer, lr, momentum, weight_decay, schedule, seed, nproc, sync_bn, device, quiet) -> None:
    """Train a model into a run directory (or --resume one)."""
    from .distributed import relaunch, shutdown
    from .runs.train import RunSpec, train_run
    from .training import TrainConfig

    if nproc != 1:
        sys.exit(relaunch(nproc, _argv_without_nproc(sys.argv[1:])))

    run = out or run_arg
    if run is None:
        raise ValueError("give the run directory: --out RUN (or RUN with --resume)")
    if resume:
        # A resumed run continues with its saved settings; silently ignoring a changed one
        # (say --epochs 20) would hand back something the user did not ask for.
        ctx = click.get_current_context()
        keep = {"run_arg", "out", "resume", "device", "quiet", "nproc"}
        given = [p.opts[0] for p in ctx.command.params if p.name not in keep and p.name is not None
                 and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise ValueError(f"--resume continues RUN with the settings it was started with; "
                             f"{', '.join(given)} cannot be changed (start a new run with --out)")
    if out and run_arg and Path(out) != Path(run_arg):
        raise ValueError(f"two run directories given: {run_arg} and --out {out}")
    model_options = _parse_options(model_option)
    if batchnorm is not None:
        model_options["batchnorm"] = batchnorm
    if activation is not None:
        model_options["activation"] = activation
    if denoise is not None:
        model_options["denoise"] = denoise
    defense_options = _parse_options(defense_option)
    if eps is not None:
        defense_options["eps"] = eps
    if norm is not None:
        defense_options["norm"] = norm
    monitor = None
    if monitor_attack and monitor_attack.lower() != "none":
        if monitor_eps == 0:  # negative, nan and inf are refused by the threat model itself
            raise ValueError("--monitor-eps must be > 0, got 0 (--monitor-attack none turns the monitor off)")
        budget = monitor_eps if monitor_eps is not None else (eps if eps else 0.1)
        monitor = {"attack": monitor_attack, "eps": budget, "norm": norm or "linf"}
        if monitor_attack == "pgd":
            monitor.update(steps=20, rel_step_size=0.1, seed=0)
    spec = RunSpec(
        dataset=dataset, data_root=data_root, train_limit=train_limit, test_limit=test_limit, model=model_name,
        model_options=model_options, defense=defense, defense_options=defense_options, monitor=monitor,
    )
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
        weight_decay=weight_decay, schedule=schedule, seed=seed, progress=not quiet, monitor_n=monitor_n,
        sync_batchnorm=sync_bn,
    )
    t0 = time.perf_counter()
    from .training.loop import TrainingInterrupted

    try:
        metrics = train_run(spec, run, config, device=device, resume=resume)
    except TrainingInterrupted as e:
        click.echo(str(e), err=True)
        sys.exit(e.exit_code)
    finally:
        shutdown()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    click.echo(f"clean accuracy {metrics['clean_accuracy']:.4f} on {metrics['test_samples']} test images "
               f"({time.perf_counter() - t0:.0f}s); run written to {run}")


# --- attack ----------------------------------------------------------------------------------
@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--attack", "attack_name", default="pgd", show_default=True)
@click.option("--norm", default="linf", show_default=True)
@click.option("--eps", type=float, default=0.1, show_default=True)
@click.option("--steps", type=int, default=None, help="Iterations (iterative attacks).")
@click.option("--target", type=int, default=None, help="Targeted: move every input toward class K.")
@click.option("--attack-option", "attack_option", multiple=True, help="Attack option KEY=VALUE (repeatable).")
@click.option("--n", type=click.IntRange(min=1), default=1000, show_default=True, help="Test images to attack.")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
def attack(run, attack_name, norm, eps, steps, target, attack_option, n, batch_size, out, device) -> None:
    """Attack a trained run's test images; save the examples (safetensors) and a JSON summary."""
    import torch

    from .attacks import build_attack
    from .storage.checkpoint import atomic_save_safetensors, atomic_write_json, load_model
    from .runs.train import load_run_data, resolve_device
    from .threat import ThreatModel

    dev = resolve_device(device)
    model = load_model(run, map_location=dev)
    x, y, info = load_run_data(run, "test", dev, limit=n)
    threat = ThreatModel(norm, eps)
    opts = _parse_options(attack_option)
    if steps is not None:
        opts["steps"] = steps
    atk = build_attack(attack_name, threat, **opts)
    if target is not None and not 0 <= target < info.num_classes:
        raise ValueError(f"--target {target} is outside [0, {info.num_classes - 1}]")
    t0 = time.perf_counter()
    xs, succ, pred = [], [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        tb = None if target is None else torch.full_like(yb, target)
        res = atk.run(model, xb, yb, target=tb)
        xs.append(res.x_adv)
        succ.append(res.success)
        with torch.no_grad():
            pred.append(model(res.x_adv).argmax(1))
    seconds = time.perf_counter() - t0
    x_adv, success, pred_adv = torch.cat(xs), torch.cat(succ), torch.cat(pred)
    with torch.no_grad():
        clean_pred = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    correct = clean_pred == y
    delta = (x_adv - x).flatten(1)
    summary = {
        "attack": repr(atk), "attack_name": attack_name, "threat": threat.to_dict(), "options": opts,
        "target": target, "n": len(x), "clean_accuracy": float(correct.float().mean()),
        "adversarial_accuracy": float((pred_adv == y).float().mean()),
        "success_rate_on_correct": float((success & correct).float().sum() / max(int(correct.sum()), 1)),
        "mean_l2": float(delta.norm(dim=1).mean()), "max_linf": float(delta.abs().amax(1).max()),
        "seconds": round(seconds, 3),
    }
    outp = Path(out)
    atomic_save_safetensors({"x": x.cpu(), "x_adv": x_adv.cpu(), "y": y.cpu(), "pred_adv": pred_adv.cpu(),
                             "clean_pred": clean_pred.cpu()}, outp / "adversarial.safetensors")
    atomic_write_json(outp / "summary.json", summary)
    click.echo(f"{attack_name}: clean {summary['clean_accuracy']:.4f} -> adversarial {summary['adversarial_accuracy']:.4f}, "
               f"success on correct {summary['success_rate_on_correct']:.4f} ({seconds:.1f}s); written to {outp}")


# --- evaluate --------------------------------------------------------------------------------
@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--attacks", "attack_names", default=None, help="Comma-separated attacks, e.g. fgsm,pgd,mim.")
@click.option("--suite", default=None, help="quick | standard | full")
@click.option("--eps", "eps_text", default="0.1", show_default=True,
              help="Budget, or a comma-separated list for a curve (the first value is the headline).")
@click.option("--norm", default="linf", show_default=True)
@click.option("--steps", type=int, default=None, help="Iterations for the iterative attacks in --attacks.")
@click.option("--n", type=click.IntRange(min=1), default=None, help="Test images (default: all).")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--surrogate", default=None, type=click.Path(exists=True, file_okay=False),
              help="Run whose model crafts the 'transfer' attack's examples.")
@click.option("--checks", "with_checks", is_flag=True, help="Also run the gradient-masking checks.")
@click.option("--iterations", "iterations_text", default=None,
              help="Comma-separated step counts, e.g. 10,20,50,100,1000: robust accuracy vs attack iterations "
                   "(APGD-CE at the first --eps; PGD with --attacks pgd).")
@click.option("--corruptions", "with_corruptions", is_flag=True,
              help="Also accuracy under common corruptions (noise, blur, contrast, brightness, rotation, shift), "
                   "severities 1-5.")
@click.option("--nproc", type=int, default=1, show_default=True, help="Shard the evaluation over N processes (torchrun).")
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True)
def evaluate(run, attack_names, suite, eps_text, norm, steps, n, batch_size, as_json, surrogate, with_checks,
             iterations_text, with_corruptions, nproc, device, quiet) -> None:
    """Clean accuracy, and robust accuracy under attacks or a suite; writes RUN/metrics.json."""
    if nproc != 1:
        from .distributed import relaunch

        sys.exit(relaunch(nproc, _argv_without_nproc(sys.argv[1:])))
    from .distributed import init_from_env, shutdown

    try:
        _evaluate(run, attack_names, suite, eps_text, norm, steps, n, batch_size, as_json, surrogate, with_checks,
                  iterations_text, with_corruptions, device, quiet, init_from_env)
    finally:
        shutdown()


def _parse_steps(text: str) -> list[int]:
    vals = _parse_floats(text, "--iterations")
    if any(v != int(v) or v < 1 for v in vals):
        raise ValueError(f"--iterations must be whole numbers >= 1, got {text!r}")
    return [int(v) for v in vals]


def _evaluate(run, attack_names, suite, eps_text, norm, steps, n, batch_size, as_json, surrogate, with_checks,
              iterations_text, with_corruptions, device, quiet, init_from_env) -> None:
    from .attacks import build_attack
    from .storage.checkpoint import load_model
    from .evaluation.evaluate import clean_accuracy, evaluate as run_eval
    from .runs.train import load_run_data, resolve_device
    from .threat import ThreatModel
    from .training import write_metrics

    # every list checked before any work
    eps_values = _parse_floats(eps_text, "--eps")
    threats = [ThreatModel(norm, eps) for eps in eps_values]
    steps_list = _parse_steps(iterations_text) if iterations_text is not None else None
    if attack_names and suite:
        raise ValueError("give --attacks or --suite, not both")
    dev = init_from_env(resolve_device(device))
    model = load_model(run, map_location=dev)
    x, y, _ = load_run_data(run, "test", dev, limit=n)
    surrogate_model = load_model(surrogate, map_location=dev) if surrogate else None
    t0 = time.perf_counter()
    clean = clean_accuracy(model, x, y, batch_size)
    # The run's headline clean_accuracy is the full test set's; a subset (--n) is kept apart.
    metrics: dict[str, Any] = {"evaluated_samples": len(y), "evaluation_clean_accuracy": clean}
    if n is None:
        metrics["clean_accuracy"] = clean
    if attack_names or suite:
        curve = []
        for eps, threat in zip(eps_values, threats):
            if suite:
                attacks: Any = suite
            else:
                attacks = []
                for name in [a.strip().lower() for a in attack_names.split(",") if a.strip()]:
                    attacks.append(_cli_attack(name, threat, steps, surrogate_model))
            res = run_eval(model, x, y, threat, attacks, batch_size=batch_size, progress=not quiet, checks=with_checks)
            curve.append({"eps": eps, "robust_accuracy": res.robust_accuracy, "per_attack": res.per_attack,
                          "details": res.to_dict(per_sample=False), "checks": res.checks, "result": res})
        head = curve[0]  # the first --eps value is the headline budget; the rest make the curve
        metrics.update({"robust_accuracy": head["robust_accuracy"], "per_attack": head["per_attack"],
                        "eps": head["eps"], "norm": norm, "suite": suite, "evaluation": head["details"],
                        "eps_curve": None, "checks": head["checks"] or None})
        if len(curve) > 1:
            metrics["eps_curve"] = [{k: c[k] for k in ("eps", "robust_accuracy", "per_attack")} for c in curve]
        metrics["iterations_curve"] = None  # a curve from an earlier evaluation may not match this one
    if steps_list is not None:
        from .evaluation.curves import iterations_metrics

        kind = "pgd" if (attack_names or "").strip().lower() == "pgd" else "apgd"
        metrics.update(iterations_metrics(model, x, y, threats[0], steps_list, attack=kind, batch_size=batch_size,
                                          progress=not quiet))
    if with_corruptions:
        from .evaluation.corruptions import corruption_metrics

        metrics.update(corruption_metrics(model, x, y, batch_size=batch_size))
    metrics["evaluate_seconds"] = round(time.perf_counter() - t0, 2)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if attack_names or suite:
        from .storage.checkpoint import atomic_write_text

        # The headline result with per-sample outcomes (schema: docs/results-schema.md).
        atomic_write_text(Path(run) / "evaluation.json", curve[0]["result"].to_json(per_sample=True))
    write_metrics(run, metrics)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    click.echo(f"clean accuracy   {clean:.4f}  ({len(y)} test images)")
    if "per_attack" in metrics:
        for name, acc in metrics["per_attack"].items():
            click.echo(f"{name:<16} {acc:.4f}")
        click.echo(f"robust (worst)   {metrics['robust_accuracy']:.4f}  at {norm} eps={metrics['eps']:g}")
    if metrics.get("iterations_curve"):
        click.echo(f"robust accuracy vs iterations ({metrics['iterations_attack']}): " + ", ".join(
            f"{c['steps']}: {c['robust_accuracy']:.4f}" for c in metrics["iterations_curve"]))
    if metrics.get("corruptions"):
        sevs = list(next(iter(metrics["corruptions"].values())))
        click.echo(f"{'corruption':<16} " + " ".join(f"{'sev ' + s:>7}" for s in sevs))
        for name, row in metrics["corruptions"].items():
            click.echo(f"{name:<16} " + " ".join(f"{row[s]:7.4f}" for s in sevs))
        click.echo(f"mean corruption accuracy {metrics['mean_corruption_accuracy']:.4f}")
    if metrics.get("checks"):
        from .evaluation.checks import format_checks

        click.echo(format_checks(metrics["checks"]))
    click.echo(f"metrics written to {Path(run) / 'metrics.json'}")


# --- demo ------------------------------------------------------------------------------------
@main.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--epochs", type=int, default=8, show_default=True, help="Standard training epochs.")
@click.option("--robust-epochs", type=int, default=5, show_default=True, help="Fast adversarial training epochs.")
@click.option("--train-limit", type=click.IntRange(min=1), default=None,
              help="Train on the first N images only (a quick look; the default uses all 60,000).")
@click.option("--n", "n_eval", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Test images attacked.")
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True)
def demo(out, epochs, robust_epochs, train_limit, n_eval, device, quiet) -> None:
    """The embedded default: Fashion-MNIST small CNN, attacks, fast-AT, side by side, report."""
    from .demo import run_demo

    run_demo(Path(out), epochs=epochs, robust_epochs=robust_epochs, device=device, progress=not quiet,
             train_limit=train_limit, n_eval=n_eval)


# --- report ----------------------------------------------------------------------------------
@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for report.html and its PNGs.")
@click.option("--eps", type=float, default=0.1, show_default=True, help="Budget of the report's adversarial examples.")
@click.option("--norm", default="linf", show_default=True)
@click.option("--n-examples", type=int, default=8, show_default=True, help="Adversarial examples shown per run.")
@click.option("--no-artifacts", is_flag=True, help="Only read what the runs already hold; compute nothing.")
@click.option("--device", default="auto", show_default=True)
def report(runs, out, eps, norm, n_examples, no_artifacts, device) -> None:
    """An HTML report (self-contained, with figures) on one or more runs: RUN [RUN ...]."""
    from .runs.artifacts import read_manifest, write_artifacts
    from .storage.checkpoint import MODEL_WEIGHTS
    from .report.build import build_report
    from .threat import ThreatModel

    threat = ThreatModel(norm, eps)  # bad --norm / --eps: ValueError, exit 2
    if threat.eps <= 0:
        raise ValueError(f"--eps must be > 0, got {eps}")
    if n_examples < 1:
        raise ValueError(f"--n-examples must be >= 1, got {n_examples}")
    if not no_artifacts:
        first_with_artifacts = None
        for run in runs:
            have = read_manifest(run)
            fresh = (have is not None and have.get("eps") == threat.eps and have.get("norm") == threat.norm
                     and have.get("n_examples") == n_examples)
            if fresh:
                click.echo(f"artifacts of {run} are up to date")
            elif not (Path(run) / MODEL_WEIGHTS).is_file():
                click.echo(f"no {MODEL_WEIGHTS} in {run}: report without artifacts", err=True)
                continue
            else:
                t0 = time.perf_counter()
                write_artifacts(run, n_examples=n_examples, eps=threat.eps, norm=threat.norm, device=device,
                                compare_run=first_with_artifacts)
                click.echo(f"artifacts of {run} written ({time.perf_counter() - t0:.1f}s)")
            first_with_artifacts = first_with_artifacts or run
    path = build_report([Path(r) for r in runs], Path(out))
    click.echo(str(path))


# --- train-detector --------------------------------------------------------------------------
@main.command("train-detector")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--attack", "attack_name", default="pgd", show_default=True, help="Attack that makes the training examples.")
@click.option("--eps", type=float, default=0.1, show_default=True)
@click.option("--norm", default="linf", show_default=True)
@click.option("--steps", type=int, default=10, show_default=True, help="Iterations of the (iterative) training attack.")
@click.option("--eval-steps", type=int, default=20, show_default=True,
              help="Iterations of the plain and the adaptive attack on the test images.")
@click.option("--attack-option", "attack_option", multiple=True, help="Training-attack option KEY=VALUE (repeatable).")
@click.option("--n-train", type=int, default=5000, show_default=True, help="Training images (clean + attacked).")
@click.option("--n-test", type=int, default=1000, show_default=True, help="Test images (clean + attacked).")
@click.option("--epochs", type=int, default=30, show_default=True, help="Detector training epochs.")
@click.option("--hidden", default="64", show_default=True, help="Detector hidden sizes, comma-separated ('' = logistic regression).")
@click.option("--layer", default=None, help="Feature layer (module name); default: input of the last nn.Linear.")
@click.option("--lam", type=float, default=1.0, show_default=True, help="Detector weight of the adaptive attack.")
@click.option("--adaptive-loss", default="margin", show_default=True, help="Classifier loss of the adaptive attack.")
@click.option("--kappa", type=float, default=1.0, show_default=True, help="Cap on the adaptive classifier loss (<0: none).")
@click.option("--det-margin", type=float, default=1.0, show_default=True,
              help="Adaptive attack: push the detector logit only this far below the threshold (<0: no cap).")
@click.option("--fpr", type=float, default=0.05, show_default=True, help="False-positive rate that sets the threshold.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=500, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
def train_detector_cmd(run, attack_name, eps, norm, steps, eval_steps, attack_option, n_train, n_test, epochs, hidden,
                       layer, lam, adaptive_loss, kappa, det_margin, fpr, seed, batch_size, out, device) -> None:
    """Train a SafetyNet-style adversarial-example detector on RUN's features; report detection
    under the plain and an adaptive attack; write OUT/detector.safetensors, detector.json, metrics.json."""
    from .attacks import build_attack
    from .storage.checkpoint import atomic_write_json, load_model
    from .detection.detector import detector_experiment
    from .runs.train import load_run_data, resolve_device
    from .threat import ThreatModel

    if n_train < 2 or n_test < 2:
        raise ValueError("--n-train and --n-test must be >= 2")
    if not 0 < fpr < 1:
        raise ValueError(f"--fpr must be in (0, 1), got {fpr}")
    dev = resolve_device(device)
    model = load_model(run, map_location=dev)
    x_tr, y_tr, _ = load_run_data(run, "train", dev)
    x_tr, y_tr = x_tr[:n_train], y_tr[:n_train]
    x_te, y_te, _ = load_run_data(run, "test", dev, limit=n_test)
    threat = ThreatModel(norm, eps)
    opts = _parse_options(attack_option)
    iterative = attack_name.lower() in ("pgd", "mim", "cw")
    if iterative:
        opts.setdefault("steps", steps)
    if attack_name.lower() in ("pgd", "noise"):
        opts.setdefault("seed", seed)
    atk = build_attack(attack_name, threat, **opts)
    eval_opts = {**opts, "steps": eval_steps} if iterative else dict(opts)
    if attack_name.lower() in ("pgd", "noise"):
        eval_opts["seed"] = seed + 1  # other random starts than the training examples had
    eval_atk = build_attack(attack_name, threat, **eval_opts)
    sizes = tuple(int(h) for h in hidden.split(",") if h.strip())
    t0 = time.perf_counter()
    det, metrics = detector_experiment(
        model, (x_tr, y_tr), (x_te, y_te), atk, eval_attack=eval_atk, adaptive_steps=eval_steps if iterative else 20,
        lam=lam, adaptive_loss=adaptive_loss, kappa=None if kappa < 0 else kappa,
        det_margin=None if det_margin < 0 else det_margin, layer=layer, hidden=sizes, epochs=epochs, seed=seed,
        target_fpr=fpr, batch_size=batch_size,
    )
    metrics.update({"run": str(run), "threat": threat.to_dict(), "seconds": round(time.perf_counter() - t0, 2)})
    outp = Path(out)
    det.save(outp, classifier_run=str(Path(run).resolve()), threat=threat.to_dict(), metrics=metrics)
    atomic_write_json(outp / "metrics.json", metrics)
    p, a = metrics["plain"], metrics["adaptive"]
    click.echo(f"features {metrics['layer']} ({metrics['capture']}), {metrics['n_train']} training / {metrics['n']} test images; "
               f"threshold at {fpr:.0%} FPR on clean test (actual {metrics['false_positive_rate']:.3f})")
    click.echo(f"{'':10} {'success':>8} {'ROC AUC':>8} {'detect':>8} {'det|succ':>8} {'fool+evade':>10}")
    for name, r in (("plain", p), ("adaptive", a)):
        click.echo(f"{name:10} {r['success_rate']:8.4f} {r['roc_auc']:8.4f} {r['detection_rate']:8.4f} "
                   f"{r['detection_rate_on_successful']:8.4f} {r['fool_and_evade']:10.4f}")
    click.echo(f"written to {outp} ({metrics['seconds']:.0f}s)")


# --- noisy-student ---------------------------------------------------------------------------
@main.command("noisy-student")
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--data-root", default=None)
@click.option("--labelled", type=int, required=True, help="Labelled training images.")
@click.option("--unlabelled", type=int, required=True, help="Unlabelled training images (labels dropped).")
@click.option("--iterations", type=int, default=1, show_default=True, help="Student generations.")
@click.option("--epochs", type=int, default=5, show_default=True, help="Epochs per model.")
@click.option("--model", "model_name", default="small-cnn", show_default=True)
@click.option("--teacher-option", multiple=True, help="Teacher model option KEY=VALUE (repeatable).")
@click.option("--student-option", multiple=True, help="Student model option KEY=VALUE (overrides the teacher's).")
@click.option("--hard-labels", is_flag=True, help="Argmax pseudo-labels instead of the teacher's probabilities.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--min-confidence", type=float, default=0.0, show_default=True)
@click.option("--noise-std", type=float, default=0.1, show_default=True, help="Gaussian input noise of the student.")
@click.option("--max-shift", type=int, default=2, show_default=True, help="Random translation (pixels) of the student's inputs.")
@click.option("--flip-prob", type=float, default=0.0, show_default=True)
@click.option("--dropout", type=float, default=0.5, show_default=True, help="Student dropout (small-cnn, mlp).")
@click.option("--stochastic-depth", type=float, default=0.2, show_default=True, help="Student stochastic depth (resnet18).")
@click.option("--eps", type=float, default=0.1, show_default=True, help="PGD budget of the evaluation.")
@click.option("--pgd-steps", type=int, default=20, show_default=True)
@click.option("--eval-n", type=int, default=1000, show_default=True, help="Test images for the PGD evaluation.")
@click.option("--test-limit", type=int, default=None, help="Use only the first N test images.")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True)
def noisy_student_cmd(dataset, data_root, labelled, unlabelled, iterations, epochs, model_name, teacher_option,
                      student_option, hard_labels, temperature, min_confidence, noise_std, max_shift, flip_prob, dropout,
                      stochastic_depth, eps, pgd_steps, eval_n, test_limit, batch_size, lr, seed, out, device, quiet) -> None:
    """Noisy Student self-training: teacher on --labelled images, noisy students on labelled +
    pseudo-labelled --unlabelled images; clean and PGD accuracy of every generation."""
    from .training.noisy_student import NoisyStudentConfig, run_noisy_student
    from .training import TrainConfig

    cfg = NoisyStudentConfig(
        model=model_name, teacher_options=_parse_options(teacher_option), student_options=_parse_options(student_option),
        iterations=iterations, soft_labels=not hard_labels, temperature=temperature, min_confidence=min_confidence,
        noise_std=noise_std, max_shift=max_shift, flip_prob=flip_prob, student_dropout=dropout,
        student_stochastic_depth=stochastic_depth, eval_eps=eps, eval_steps=pgd_steps, eval_n=eval_n,
    )
    tc = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=not quiet)
    t0 = time.perf_counter()
    result = run_noisy_student(dataset, labelled, unlabelled, cfg, tc, out_dir=out, data_root=data_root, device=device,
                               test_limit=test_limit)
    key = f"pgd{pgd_steps}_accuracy"
    click.echo(f"{'model':10} {'params':>8} {'clean':>7} {('PGD-' + str(pgd_steps)):>7} {'train s':>8}")
    for m in result.metrics:
        click.echo(f"{m['role']:10} {m['parameters']:8d} {m['clean_accuracy']:7.4f} {m.get(key, float('nan')):7.4f} "
                   f"{m['train_seconds']:8.1f}")
    click.echo(f"written to {out} ({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":  # pragma: no cover
    main()
