"""The commands that take a model and data: ``attack``, ``evaluate``, ``report`` and
``train-detector``. Each takes a RUN directory, or instead ``--model ENTRY`` (with ``--weights``,
``--model-kwargs``, ``--mean``/``--std``) and ``--data PATH`` / ``--dataset NAME --split``.

It parses and prints only; the work is in :mod:`robustlab.runs` (the sources in
:mod:`robustlab.runs.sources`). Registered on :func:`robustlab.cli.main` when ``robustlab.cli``
is imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .common import NUMBER, SingleUseCommand, argv_without_nproc, json_object, main, parse_floats, parse_options
from .zoo import RUN_OR_ZOO

CODE_WARNING = ("file.py:Name / package.module:Name IMPORTS AND RUNS that Python code: use only code you trust "
                "(what is imported is printed on stderr)")
EOT_HELP = ("Expectation over Transformation for randomised models: every gradient attack averages its gradients, "
            "losses and success decisions over N forward passes (cost x N); an attack without EOT is an error.")
MODEL_OPTIONS = [
    click.option("--model", "entry", default=None, metavar="ENTRY",
                 help="A model of your own instead of RUN: file.py:Name or package.module:Name (a class or factory "
                      "returning an nn.Module), a TorchScript file, or a torch.export .pt2 program. " + CODE_WARNING + "."),
    click.option("--model-kwargs", default=None, metavar="JSON", help="Arguments of the class or factory, a JSON object."),
    click.option("--weights", default=None, type=click.Path(exists=True, dir_okay=False),
                 help="Weights of --model file.py:Name: a safetensors state dict, or a .pt state dict "
                      "(read with torch.load(weights_only=True)).")
    ,
    click.option("--mean", "mean_text", default=None, metavar="LIST",
                 help="Per-channel mean, e.g. 0.485,0.456,0.406: wraps the model in Normalize, so inputs and eps stay in [0, 1] pixels."),
    click.option("--std", "std_text", default=None, metavar="LIST", help="Per-channel std (with --mean)."),
    click.option("--data", "data_path", default=None, type=click.Path(exists=True),
                 help="Data instead of the run's test set: a folder with one subfolder of images per class (sorted "
                      "names are the labels), or an .npz / .safetensors file with x and y."),
    click.option("--dataset", "dataset_name", default=None, help="A named data set instead: fashion-mnist | mnist | cifar10 | digits."),
    click.option("--split", default=None, help="Split of --dataset: train | test (default test)."),
    click.option("--data-root", default=None, help="Folder with the files of --dataset (mnist, cifar10)."),
    click.option("--trust-code", is_flag=True,
                 help="Load runs whose model.json names user code (trained with --model file.py:Name): imports and runs it."),
]


def model_data_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the --model / --data options (above) to a command."""
    for option in reversed(MODEL_OPTIONS):
        f = option(f)
    return f


def _sources(run: str | None, kw: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(ModelSource, DataSource, a context that trusts user code when --trust-code) from the options."""
    from ..runs.sources import DataSource, ModelSource

    kwargs = json_object(kw["model_kwargs"], "--model-kwargs")
    mean = parse_floats(kw["mean_text"], "--mean") if kw["mean_text"] is not None else None
    std = parse_floats(kw["std_text"], "--std") if kw["std_text"] is not None else None
    model = ModelSource(run=run, entry=kw["entry"], kwargs=kwargs, weights=kw["weights"], mean=mean, std=std)
    model.check()
    data = DataSource(path=kw["data_path"], dataset=kw["dataset_name"], split=kw["split"], root=kw["data_root"])
    if kw["data_root"] is not None and kw["dataset_name"] is None:
        raise ValueError("--data-root goes with --dataset NAME")
    data.check(run)
    return model, data, _trust(kw)


def _trust(kw: dict[str, Any]) -> Any:
    """A context in which loading a run that names user code imports it (--trust-code), else a no-op."""
    from ..storage.checkpoint import trusted_code

    return trusted_code() if kw["trust_code"] else contextlib.nullcontext()


# --- attack ----------------------------------------------------------------------------------
@main.command(cls=SingleUseCommand)
@click.argument("run", required=False, type=RUN_OR_ZOO)
@model_data_options
@click.option("--attack", "attack_name", default="pgd", show_default=True)
@click.option("--norm", default="linf", show_default=True, help="linf | l2 | l1")
@click.option("--eps", type=NUMBER, default=0.1, show_default=True)
@click.option("--steps", type=int, default=None, help="Iterations (iterative attacks).")
@click.option("--target", default=None, metavar="K|random|least-likely",
              help="Targeted: toward class K, a random other class per image, or each image's least likely class.")
@click.option("--labels", type=click.Choice(["true", "predicted"]), default="true", show_default=True,
              help="Attack the true labels, or the model's own predictions (success = the prediction changed).")
@click.option("--attack-option", "attack_option", multiple=True, help="Attack option KEY=VALUE (repeatable).")
@click.option("--eot", type=click.IntRange(min=1), default=None, metavar="N", help=EOT_HELP)
@click.option("--n", type=click.IntRange(min=1), default=1000, show_default=True, help="Test images to attack.")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
def attack(run, attack_name, norm, eps, steps, target, labels, attack_option, eot, n, batch_size, out, device, **kw) -> None:
    """Attack a trained run's test images (or --model on --data); save the examples (safetensors),
    a JSON summary and a figure (original, magnified perturbation, adversarial, with confidences)."""
    from ..report.attack_figure import draw_attack_dir
    from ..runs import attack_run

    model, data, trust = _sources(run, kw)
    with trust:
        s = attack_run(run, out, attack=attack_name, norm=norm, eps=eps, steps=steps, target=target, labels=labels,
                       options=parse_options(attack_option), eot=eot, n=n, batch_size=batch_size, device=device,
                       model_source=model, data=data)
    figure = draw_attack_dir(out)
    hit = f", target reached {s['target_hit_rate']:.4f}" if "target_hit_rate" in s else ""
    changed = f", prediction changed {s['prediction_changed']:.4f}" if "prediction_changed" in s else ""
    click.echo(f"{attack_name}: clean {s['clean_accuracy']:.4f} -> adversarial {s['adversarial_accuracy']:.4f}, "
               f"success on correct {s['success_rate_on_correct']:.4f}{hit}{changed} ({s['seconds']:.1f}s); "
               f"written to {Path(out)} (figure {figure})")


# --- evaluate --------------------------------------------------------------------------------
@main.command(cls=SingleUseCommand)
@click.argument("run", required=False, type=RUN_OR_ZOO)
@model_data_options
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Write an evaluation directory (OUT/evaluation.json) instead of updating RUN's files.")
@click.option("--save-adversarial", is_flag=True,
              help="With --out: OUT/adversarial.safetensors (x, x_adv = per-sample worst case, y, predictions) and a PNG grid.")
@click.option("--attacks", "attack_names", default=None, help="Comma-separated attacks, e.g. fgsm,pgd,mim.")
@click.option("--suite", default=None, help="quick | standard | autoattack | autoattack-rand | full (budgets: docs/evaluation.md)")
@click.option("--eps", "eps_text", default="0.1", show_default=True,
              help="Budget, or a comma-separated list for a curve (the first value is the headline).")
@click.option("--norm", default="linf", show_default=True, help="linf | l2 | l1")
@click.option("--steps", type=int, default=None, help="Iterations for the iterative attacks in --attacks.")
@click.option("--n", type=click.IntRange(min=1), default=None, help="Test images (default: all).")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (with --out: evaluation.json's document).")
@click.option("--surrogate", "surrogates", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Run whose model crafts the 'transfer' attack's examples. Repeatable: K runs make K transfer "
                   "attacks (transfer-1 .. transfer-K); a sample counts as robust only if it survives all of them.")
@click.option("--generator", default=None, type=click.Path(exists=True, file_okay=False),
              help="Generator run (robustlab advgan train) of the 'advgan' attack.")
@click.option("--eot", type=click.IntRange(min=1), default=None, metavar="N", help=EOT_HELP)
@click.option("--checks", "with_checks", is_flag=True, help="Also run the gradient-masking checks.")
@click.option("--iterations", "iterations_text", default=None,
              help="Comma-separated step counts, e.g. 10,20,50,100,1000: robust accuracy vs attack iterations "
                   "(at the first --eps, with the one iterative attack in --attacks; APGD-CE with --suite).")
@click.option("--corruptions", "with_corruptions", is_flag=True,
              help="Also accuracy under common corruptions (noise, blur, contrast, brightness, rotation, shift), "
                   "severities 1-5.")
@click.option("--nproc", type=int, default=1, show_default=True, help="Shard the evaluation over N processes (torchrun).")
@click.option("--exact-model", is_flag=True,
              help="Attack the model itself, not the faster BatchNorm-folded copy used on CPU (verdicts are the model's either way).")
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True)
def evaluate(run, out, save_adversarial, attack_names, suite, eps_text, norm, steps, n, batch_size, as_json, surrogates, generator,
             eot, with_checks, iterations_text, with_corruptions, nproc, exact_model, device, quiet, **kw) -> None:
    """Clean accuracy, and robust accuracy under attacks or a suite, of RUN (writes RUN/metrics.json)
    or of --model on --data (writes --out DIR/evaluation.json)."""
    from ..distributed import relaunch, shutdown
    from ..runs import evaluate_run
    from ..storage.layout import EVALUATION_FILE, METRICS_FILE

    if nproc != 1:
        sys.exit(relaunch(nproc, argv_without_nproc(sys.argv[1:])))
    model, data, trust = _sources(run, kw)
    eps = parse_floats(eps_text, "--eps")
    iterations = parse_floats(iterations_text, "--iterations", whole=True) if iterations_text is not None else None
    ok = False
    try:
        with trust:
            metrics = evaluate_run(run, attacks=attack_names.split(",") if attack_names else None, suite=suite, eps=eps,
                                   norm=norm, steps=steps, n=n, batch_size=batch_size, surrogate=surrogates, generator=generator,
                                   eot=eot, checks=with_checks, iterations=iterations, corruptions=with_corruptions,
                                   device=device, progress=not quiet, model=model, data=data, out=out,
                                   save_adversarial=save_adversarial, exact_model=exact_model)
        ok = True
    finally:
        shutdown(wait=ok)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if as_json:
        click.echo(json.dumps(metrics, indent=2, sort_keys=out is not None))
        return
    if out is not None:
        _print_document(metrics)
        click.echo(f"evaluation written to {Path(out) / EVALUATION_FILE}")
        return
    _print_metrics(metrics, norm)
    click.echo(f"metrics written to {Path(run) / METRICS_FILE}")


def _print_document(doc: dict[str, Any]) -> None:
    """The table ``evaluate --out`` prints (without --json)."""
    flat: dict[str, Any] = {"evaluated_samples": doc["n"], "evaluation_clean_accuracy": doc["clean_accuracy"], **{
        k: doc[k] for k in ("eot", "per_attack", "robust_accuracy", "expected_robust_accuracy", "iterations_curve",
                            "iterations_attack", "corruptions", "mean_corruption_accuracy", "checks") if k in doc}}
    threat = doc.get("threat") or {}
    _print_metrics({**flat, "eps": threat.get("eps", 0.0)}, threat.get("norm", ""))
    if "adversarial" in doc:
        click.echo(f"worst-case adversarial examples: {doc['adversarial']['file']}, grid {doc['adversarial']['grid']}")


def _print_metrics(metrics: dict[str, Any], norm: str) -> None:
    """The table ``evaluate`` prints (without --json)."""
    click.echo(f"clean accuracy   {metrics['evaluation_clean_accuracy']:.4f}  ({metrics['evaluated_samples']} test images)")
    if "per_attack" in metrics:
        for name, acc in metrics["per_attack"].items():
            click.echo(f"{name:<16} {acc:.4f}")
        eot = f", EOT {metrics['eot']} draws" if metrics.get("eot") else ""
        click.echo(f"robust (worst)   {metrics['robust_accuracy']:.4f}  at {norm} eps={metrics['eps']:g}{eot}")
        if metrics.get("expected_robust_accuracy") is not None:
            click.echo(f"one draw/query   {metrics['expected_robust_accuracy']:.4f}  (a randomised model as deployed: "
                       "each worst example judged by single forward passes)")
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
        from ..evaluation import format_checks

        click.echo(format_checks(metrics["checks"]))


# --- report ----------------------------------------------------------------------------------
@main.command(cls=SingleUseCommand)
@click.argument("runs", nargs=-1, required=False, type=click.Path(exists=True, file_okay=False))
@model_data_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for report.html and its PNGs.")
@click.option("--eps", type=NUMBER, default=0.1, show_default=True, help="Budget of the report's adversarial examples.")
@click.option("--norm", default="linf", show_default=True, help="linf | l2 | l1")
@click.option("--n-examples", type=int, default=8, show_default=True, help="Adversarial examples shown per run.")
@click.option("--no-artifacts", is_flag=True, help="Only read what the runs already hold; compute nothing.")
@click.option("--device", default="auto", show_default=True)
def report(runs, out, eps, norm, n_examples, no_artifacts, device, **kw) -> None:
    """An HTML report (self-contained, with figures) on run directories, evaluation directories
    (robustlab evaluate --out), train-detector and noisy-student directories, or on --model with --data."""
    from ..report import build_report
    from ..runs.artifacts import refresh_artifacts
    from ..runs.evaluation_dir import is_evaluation_dir
    from ..storage.layout import MODEL_WEIGHTS
    from ..threat import ThreatModel

    threat = ThreatModel(norm, eps)  # bad --norm / --eps: ValueError, exit 2
    if threat.eps <= 0:
        raise ValueError(f"--eps must be > 0, got {eps}")
    if n_examples < 1:
        raise ValueError(f"--n-examples must be >= 1, got {n_examples}")
    from ..report.experiments import experiment_kind

    dirs = list(runs)
    if kw["entry"] is not None:
        from ..runs.sources import model_report_dir

        model, data, trust = _sources(None, kw)
        with trust:
            dirs.append(str(model_report_dir(model, data, Path(out), n_examples=n_examples, eps=threat.eps,
                                             norm=threat.norm, device=device)))
    elif not dirs:
        raise ValueError("give RUN or evaluation directories (robustlab evaluate --out), or --model ENTRY with --data")
    # evaluation, detector and Noisy Student directories hold results, not a model to draw
    runs_only = [r for r in runs if not is_evaluation_dir(r) and experiment_kind(r) is None]
    if not no_artifacts:
        with _trust(kw):  # a fresh context: the one above (with --model) is spent
            for done in refresh_artifacts(runs_only, n_examples=n_examples, eps=threat.eps, norm=threat.norm,
                                          device=device):
                if done["status"] == "fresh":
                    click.echo(f"artifacts of {done['run']} are up to date")
                elif done["status"] == "no-model":
                    click.echo(f"no {MODEL_WEIGHTS} in {done['run']}: report without artifacts", err=True)
                else:
                    click.echo(f"artifacts of {done['run']} written ({done['seconds']:.1f}s)")
    click.echo(str(build_report([Path(r) for r in dirs], Path(out))))


# --- train-detector --------------------------------------------------------------------------
@main.command("train-detector", cls=SingleUseCommand)
@click.argument("run", required=False, type=click.Path(exists=True, file_okay=False))
@model_data_options
@click.option("--attack", "attack_name", default="pgd", show_default=True,
              help="Attack that makes the training examples (gradient attacks with steps, e.g. pgd, take --steps).")
@click.option("--eps", type=NUMBER, default=0.1, show_default=True)
@click.option("--norm", default="linf", show_default=True, help="linf | l2 | l1")
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
                       layer, lam, adaptive_loss, kappa, det_margin, fpr, seed, batch_size, out, device, **kw) -> None:
    """Train a SafetyNet-style adversarial-example detector on RUN's features; report detection
    under the plain and an adaptive attack; write OUT/detector.safetensors, detector.json, metrics.json."""
    from ..runs import detector_run

    model, data, trust = _sources(run, kw)
    with trust:
        m = detector_run(run, out, attack=attack_name, eps=eps, norm=norm, steps=steps, eval_steps=eval_steps,
                         options=parse_options(attack_option), n_train=n_train, n_test=n_test, epochs=epochs,
                         hidden=tuple(int(h) for h in hidden.split(",") if h.strip()), layer=layer, lam=lam,
                         adaptive_loss=adaptive_loss, kappa=None if kappa < 0 else kappa,
                         det_margin=None if det_margin < 0 else det_margin, fpr=fpr, seed=seed, batch_size=batch_size,
                         device=device, model_source=model, data=data)
    click.echo(f"features {m['layer']} ({m['capture']}), {m['n_train']} training / {m['n']} test images; "
               f"threshold at {fpr:.0%} FPR on clean test (actual {m['false_positive_rate']:.3f})")
    click.echo(f"{'':10} {'success':>8} {'ROC AUC':>8} {'detect':>8} {'det|succ':>8} {'fool+evade':>10}")
    for name in ("plain", "adaptive"):
        r = m[name]
        click.echo(f"{name:10} {r['success_rate']:8.4f} {r['roc_auc']:8.4f} {r['detection_rate']:8.4f} "
                   f"{r['detection_rate_on_successful']:8.4f} {r['fool_and_evade']:10.4f}")
    click.echo(f"written to {Path(out)} ({m['seconds']:.0f}s)")
