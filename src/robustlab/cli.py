"""The ``robustlab`` command line: train, attack, evaluate, demo, report, train-detector, noisy-student.

It parses options and prints; the work is in :mod:`robustlab.runs` (and the demo's, noisy
student's modules). Bad input ends with exit code 2 and one line naming the problem (no traceback).
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


def _parse_floats(text: str, what: str, whole: bool = False) -> list[Any]:
    """A comma-separated list of numbers (``whole``: of whole numbers >= 1, as ints)."""
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be a comma-separated list of numbers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{what} is empty")
    if whole and not all(v.is_integer() and v >= 1 for v in vals):
        raise ValueError(f"{what} must be whole numbers >= 1, got {text!r}")
    return [int(v) for v in vals] if whole else vals


def _argv_without_nproc(argv: list[str]) -> list[str]:
    """The command line minus ``--nproc N`` / ``--nproc=N`` (for the torchrun relaunch)."""
    out: list[str] = []
    args = iter(argv)
    for a in args:
        if a == "--nproc":
            next(args, None)
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


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


def _merge_options(pairs: tuple[str, ...], **given: Any) -> dict[str, Any]:
    """KEY=VALUE ``pairs``, then the dedicated options that were given (not None) over them."""
    return {**_parse_options(pairs), **{k: v for k, v in given.items() if v is not None}}


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
    from .runs import RunSpec, monitor_spec, train_run
    from .training import TrainConfig, TrainingInterrupted

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
    model_options = _merge_options(model_option, batchnorm=batchnorm, activation=activation, denoise=denoise)
    defense_options = _merge_options(defense_option, eps=eps, norm=norm)
    spec = RunSpec(
        dataset=dataset, data_root=data_root, train_limit=train_limit, test_limit=test_limit, model=model_name,
        model_options=model_options, defense=defense, defense_options=defense_options,
        monitor=monitor_spec(monitor_attack, monitor_eps, eps, norm),
    )
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
        weight_decay=weight_decay, schedule=schedule, seed=seed, progress=not quiet, monitor_n=monitor_n,
        sync_batchnorm=sync_bn,
    )
    t0 = time.perf_counter()
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
    from .runs import attack_run

    s = attack_run(run, out, attack=attack_name, norm=norm, eps=eps, steps=steps, target=target,
                   options=_parse_options(attack_option), n=n, batch_size=batch_size, device=device)
    click.echo(f"{attack_name}: clean {s['clean_accuracy']:.4f} -> adversarial {s['adversarial_accuracy']:.4f}, "
               f"success on correct {s['success_rate_on_correct']:.4f} ({s['seconds']:.1f}s); written to {Path(out)}")


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
    from .distributed import relaunch, shutdown
    from .runs import evaluate_run
    from .storage.layout import METRICS_FILE

    if nproc != 1:
        sys.exit(relaunch(nproc, _argv_without_nproc(sys.argv[1:])))
    eps = _parse_floats(eps_text, "--eps")
    iterations = _parse_floats(iterations_text, "--iterations", whole=True) if iterations_text is not None else None
    try:
        metrics = evaluate_run(run, attacks=attack_names.split(",") if attack_names else None, suite=suite, eps=eps,
                               norm=norm, steps=steps, n=n, batch_size=batch_size, surrogate=surrogate,
                               checks=with_checks, iterations=iterations, corruptions=with_corruptions, device=device,
                               progress=not quiet)
    finally:
        shutdown()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    _print_metrics(metrics, norm)
    click.echo(f"metrics written to {Path(run) / METRICS_FILE}")


def _print_metrics(metrics: dict[str, Any], norm: str) -> None:
    """The table ``evaluate`` prints (without --json)."""
    click.echo(f"clean accuracy   {metrics['evaluation_clean_accuracy']:.4f}  ({metrics['evaluated_samples']} test images)")
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
        from .evaluation import format_checks

        click.echo(format_checks(metrics["checks"]))


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
    from .report import build_report
    from .runs.artifacts import refresh_artifacts
    from .storage.layout import MODEL_WEIGHTS
    from .threat import ThreatModel

    threat = ThreatModel(norm, eps)  # bad --norm / --eps: ValueError, exit 2
    if threat.eps <= 0:
        raise ValueError(f"--eps must be > 0, got {eps}")
    if n_examples < 1:
        raise ValueError(f"--n-examples must be >= 1, got {n_examples}")
    if not no_artifacts:
        for done in refresh_artifacts(runs, n_examples=n_examples, eps=threat.eps, norm=threat.norm, device=device):
            if done["status"] == "fresh":
                click.echo(f"artifacts of {done['run']} are up to date")
            elif done["status"] == "no-model":
                click.echo(f"no {MODEL_WEIGHTS} in {done['run']}: report without artifacts", err=True)
            else:
                click.echo(f"artifacts of {done['run']} written ({done['seconds']:.1f}s)")
    click.echo(str(build_report([Path(r) for r in runs], Path(out))))


# --- train-detector --------------------------------------------------------------------------
@main.command("train-detector")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--attack", "attack_name", default="pgd", show_default=True,
              help="Attack that makes the training examples (gradient attacks with steps, e.g. pgd, take --steps).")
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
    from .runs import detector_run

    m = detector_run(run, out, attack=attack_name, eps=eps, norm=norm, steps=steps, eval_steps=eval_steps,
                     options=_parse_options(attack_option), n_train=n_train, n_test=n_test, epochs=epochs,
                     hidden=tuple(int(h) for h in hidden.split(",") if h.strip()), layer=layer, lam=lam,
                     adaptive_loss=adaptive_loss, kappa=None if kappa < 0 else kappa,
                     det_margin=None if det_margin < 0 else det_margin, fpr=fpr, seed=seed, batch_size=batch_size,
                     device=device)
    click.echo(f"features {m['layer']} ({m['capture']}), {m['n_train']} training / {m['n']} test images; "
               f"threshold at {fpr:.0%} FPR on clean test (actual {m['false_positive_rate']:.3f})")
    click.echo(f"{'':10} {'success':>8} {'ROC AUC':>8} {'detect':>8} {'det|succ':>8} {'fool+evade':>10}")
    for name in ("plain", "adaptive"):
        r = m[name]
        click.echo(f"{name:10} {r['success_rate']:8.4f} {r['roc_auc']:8.4f} {r['detection_rate']:8.4f} "
                   f"{r['detection_rate_on_successful']:8.4f} {r['fool_and_evade']:10.4f}")
    click.echo(f"written to {Path(out)} ({m['seconds']:.0f}s)")


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
    from .training import TrainConfig
    from .training.noisy_student import NoisyStudentConfig, run_noisy_student

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
    click.echo(f"{'model':10} {'params':>8} {'clean':>7} {('PGD-' + str(pgd_steps)):>7} {'train s':>8}")
    for m in result.metrics:
        click.echo(f"{m['role']:10} {m['parameters']:8d} {m['clean_accuracy']:7.4f} "
                   f"{m.get(cfg.robust_metric, float('nan')):7.4f} "
                   f"{m['train_seconds']:8.1f}")
    click.echo(f"written to {out} ({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":  # pragma: no cover
    main()
