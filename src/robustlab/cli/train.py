"""``robustlab train``, ``demo`` and ``noisy-student``: parse options, call the library, print."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from .common import NUMBER, argv_without_nproc, json_object, main, merge_options, parse_floats, parse_options


# --- train -----------------------------------------------------------------------------------
def _apply_recipe(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--recipe NAME`` (eager): the recipe's flags become the defaults of the other options, so a
    flag given on the command line still wins; ``--recipe list`` prints the recipes and exits."""
    if value is None or ctx.resilient_parsing:
        return value
    from ..training.recipes import get_recipe, recipe_table

    if value.strip().lower() == "list":
        click.echo(recipe_table())
        ctx.exit()
    by_flag = {o: p for p in ctx.command.params for o in (*p.opts, *p.secondary_opts)}
    defaults = {}
    for flag, v in get_recipe(value).flags.items():
        p = by_flag[flag]
        defaults[p.name] = v if not isinstance(v, bool) or flag in p.opts else not v
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _announce_recipe(name: str, defense_option: tuple[str, ...], run: str) -> tuple[str, ...]:
    """Print the recipe's full command and the flags given over it; the recipe's --defense-option
    pairs with the command line's after them (so they override key by key)."""
    from ..training.recipes import get_recipe

    recipe = get_recipe(name)
    ctx = click.get_current_context()
    given = [p.opts[0] for p in ctx.command.params if p.name not in ("recipe", "run_arg", "out") and p.name is not None
             and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"recipe {recipe.name}: {recipe.command(run)}"
                   + (f" (given on the command line over it: {', '.join(given)})" if given else ""))
    if "--defense-option" in given:
        return tuple(str(v) for v in recipe.flags.get("--defense-option", ())) + tuple(defense_option)
    return defense_option


@main.command()
@click.argument("run_arg", metavar="[RUN]", required=False, type=click.Path(file_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--resume", is_flag=True, help="Continue the run in RUN/--out from its last checkpoint.")
@click.option("--recipe", default=None, metavar="NAME", is_eager=True, callback=_apply_recipe,
              help="A named set of the flags below, printed in full when used; flags you give override it "
                   "(NAME 'list': show them all).")
@click.option("--dataset", default="fashion-mnist", show_default=True, help="fashion-mnist | mnist | cifar10 | digits")
@click.option("--data-root", default=None, help="Folder with the data files (required for mnist, cifar10).")
@click.option("--train-limit", type=int, default=None, help="Use only the first N training images.")
@click.option("--test-limit", type=int, default=None, help="Use only the first N test images.")
@click.option("--model", "model_name", default="small-cnn", show_default=True,
              help="small-cnn | mlp | resnet18, or a model of your own: file.py:Name / package.module:Name (a class or "
                   "factory; IMPORTS AND RUNS that code, your choice; what is imported is printed on stderr).")
@click.option("--model-kwargs", default=None, metavar="JSON", help="Arguments of --model file.py:Name (a JSON object).")
@click.option("--mean", "mean_text", default=None, metavar="LIST", help="With --model file.py:Name: a Normalize layer (per-channel mean).")
@click.option("--std", "std_text", default=None, metavar="LIST", help="With --mean: per-channel std.")
@click.option("--init-from", default=None, type=click.Path(exists=True), metavar="WEIGHTS",
              help="Start from these weights (safetensors or .pt state dict, or a run directory): fine-tuning.")
@click.option("--freeze", multiple=True, metavar="PATTERN",
              help="Freeze parameters whose (module) name matches this glob, e.g. 'features.*' (repeatable).")
@click.option("--batchnorm/--no-batchnorm", default=None, help="BatchNorm in small-cnn / mlp.")
@click.option("--activation", default=None, help="relu | gelu | silu | softplus")
@click.option("--denoise", default=None, metavar="OP",
              help="Feature-denoising blocks (small-cnn, resnet18): nonlocal | mean | median | bilateral, or the "
                   "controls null | bottleneck (tune with --model-option denoise_embed=dot, denoise_stages=[1], "
                   "denoise_every_block=true, ...).")
@click.option("--model-option", "model_option", multiple=True, help="Extra model option KEY=VALUE (repeatable).")
@click.option("--defense", default="clean", show_default=True, help="Training objective (clean, or an adversarial one).")
@click.option("--eps", type=NUMBER, default=None, help="Defense budget (adversarial objectives).")
@click.option("--norm", default=None, help="linf | l2 | l1 (adversarial objectives).")
@click.option("--defense-option", "defense_option", multiple=True, help="Objective option KEY=VALUE (repeatable).")
@click.option("--monitor-attack", default="pgd", show_default=True,
              help="Attack measured on a fixed test subset after every epoch (history adv_accuracy); 'none' to skip.")
@click.option("--monitor-eps", type=NUMBER, default=None, help="Budget of the monitor attack (default: --eps or 0.1).")
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
@click.option("--checkpoint-every", type=int, default=0, metavar="STEPS", help="Also checkpoint every STEPS steps (0: epoch ends).")
@click.option("--ema", type=float, default=0.0, metavar="DECAY",
              help="Average the weights (EMA, e.g. 0.999) after every step; the average is evaluated and saved (0: off).")
@click.option("--holdout", type=int, default=0, metavar="N",
              help="Hold N training images out of training; the monitor attack's accuracy on them each epoch.")
@click.option("--select-best", type=click.Choice(["last", "robust", "robust-1se"]), default="last", show_default=True,
              help="robust: the run's model is the epoch with the best robust accuracy on the --holdout images; "
                   "robust-1se: the latest epoch within one standard error of that best.")
@click.option("--tensorboard", "tensorboard_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Also log each epoch's losses, accuracies and lr as TensorBoard scalars in DIR "
                   "(needs: pip install 'robustlab[tensorboard]'; view with: tensorboard --logdir DIR).")
@click.option("--quiet", is_flag=True, help="No progress bars (each epoch's results are still printed).")
def train(run_arg, out, resume, recipe, dataset, data_root, train_limit, test_limit, model_name, model_kwargs, mean_text,
          std_text, init_from, freeze, batchnorm, activation,
          denoise, model_option, defense, eps, norm, defense_option, monitor_attack, monitor_eps, monitor_n, epochs,
          batch_size, optimizer, lr, momentum, weight_decay, schedule, seed, nproc, sync_bn, checkpoint_every, device,
          tensorboard_dir, quiet, ema, holdout, select_best) -> None:
    """Train a model into a run directory (or --resume one), optionally from a --recipe."""
    from ..distributed import relaunch, shutdown
    from ..runs import RunSpec, monitor_spec, train_run
    from ..training import TrainConfig, TrainingInterrupted

    if nproc != 1:
        sys.exit(relaunch(nproc, argv_without_nproc(sys.argv[1:])))

    run = out or run_arg
    if run is None:
        raise ValueError("give the run directory: --out RUN (or RUN with --resume)")
    if resume:
        # A resumed run continues with its saved settings; silently ignoring a changed one
        # (say --epochs 20) would hand back something the user did not ask for.
        ctx = click.get_current_context()
        keep = {"run_arg", "out", "resume", "device", "quiet", "nproc", "tensorboard_dir"}
        given = [p.opts[0] for p in ctx.command.params if p.name not in keep and p.name is not None
                 and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise ValueError(f"--resume continues RUN with the settings it was started with; "
                             f"{', '.join(given)} cannot be changed (start a new run with --out)")
    if out and run_arg and Path(out) != Path(run_arg):
        raise ValueError(f"two run directories given: {run_arg} and --out {out}")
    model_options = {**merge_options(model_option, batchnorm=batchnorm, activation=activation, denoise=denoise),
                     **json_object(model_kwargs, "--model-kwargs")}
    normalize = {"mean": parse_floats(mean_text, "--mean") if mean_text else None,
                 "std": parse_floats(std_text, "--std") if std_text else None} if mean_text or std_text else None
    if recipe is not None:
        defense_option = _announce_recipe(recipe, defense_option, run)
    defense_options = merge_options(defense_option, eps=eps, norm=norm)
    spec = RunSpec(
        dataset=dataset, data_root=data_root, train_limit=train_limit, test_limit=test_limit, model=model_name,
        model_options=model_options, defense=defense, defense_options=defense_options,
        monitor=monitor_spec(monitor_attack, monitor_eps, eps, norm), normalize=normalize, init_from=init_from,
        freeze=list(freeze),
    )
    config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         schedule=schedule, seed=seed, progress=not quiet, monitor_n=monitor_n, sync_batchnorm=sync_bn,
                         checkpoint_every=checkpoint_every, ema=ema, holdout=holdout, select_best=select_best)
    t0 = time.perf_counter()
    ok = False
    board = None
    if tensorboard_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        from ..training.tensorboard import TensorBoardLog

        board = TensorBoardLog(tensorboard_dir)
    try:
        metrics = train_run(spec, run, config, device=device, resume=resume, on_stage=_print_offline_stage,
                            on_epoch_end=board)
        ok = True
    except TrainingInterrupted as e:
        click.echo(str(e), err=True)
        sys.exit(e.exit_code)
    finally:
        if board is not None:
            board.close()
        shutdown(wait=ok)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    click.echo(f"clean accuracy {metrics['clean_accuracy']:.4f} on {metrics['test_samples']} test images "
               f"({time.perf_counter() - t0:.0f}s); run written to {run}")


def _print_offline_stage(stage: int, text: str, numbers: dict) -> None:
    """One line per finished step of ``--defense offline`` (rank 0 only); the numbers are in metrics.json."""
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"offline step {stage}/7: {text}")


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
    from ..demo import run_demo

    run_demo(Path(out), epochs=epochs, robust_epochs=robust_epochs, device=device, progress=not quiet,
             train_limit=train_limit, n_eval=n_eval)


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
@click.option("--eps", type=NUMBER, default=0.1, show_default=True, help="PGD budget of the evaluation.")
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
    from ..training import TrainConfig
    from ..training.noisy_student import NoisyStudentConfig, run_noisy_student

    cfg = NoisyStudentConfig(
        model=model_name, teacher_options=parse_options(teacher_option), student_options=parse_options(student_option),
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
