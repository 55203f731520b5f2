"""The generative commands: ``robustlab gan train|evaluate|arithmetic|unrestricted``,
``robustlab cyclegan train`` and ``robustlab advgan train``.

Thin: parse, call :mod:`robustlab.generative`, print. Registered on the main group by
:mod:`robustlab.cli` (``main.add_command(gan)`` and so on). Bad input ends with one ``error: ...``
line and exit code 2, as everywhere in robustlab (:class:`_Group`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, cast

import click

from .common import NUMBER, one_line_error

_SETTINGS = {"help_option_names": ["-h", "--help"]}


class _Group(click.Group):
    """ValueError, OSError, FloatingPointError and usage errors as one line on stderr, exit 2,
    through the main CLI's own formatter;
    an interrupted training run prints where its state is and exits 128 + signal, as ``train`` does."""

    def invoke(self, ctx: click.Context) -> Any:
        from ..training.loop import TrainingInterrupted

        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise
        except TrainingInterrupted as e:
            click.echo(str(e), err=True)
            sys.exit(e.exit_code)
        except (click.UsageError, ValueError, OSError, FloatingPointError) as e:
            one_line_error(e)


def _out_dir(run_arg: str | None, out: str | None, resume: bool) -> Path:
    if run_arg and out and Path(run_arg) != Path(out):
        raise ValueError(f"give the run directory once (RUN {run_arg!r} or --out {out!r})")
    path = out or run_arg
    if not path:
        raise ValueError("--out RUN is required" + (" (or RUN with --resume)" if resume else ""))
    return Path(path)


def _print_history(history_line: dict[str, Any]) -> None:
    click.echo(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in history_line.items()))


def _class_names(run: Path) -> list[str]:
    from ..generative.checkpoint import read_networks_meta

    return list((read_networks_meta(run).get("dataset") or {}).get("class_names") or [])


# --- gan ---------------------------------------------------------------------------------------
@click.group(cls=_Group, context_settings=_SETTINGS)
def gan() -> None:
    """Train, evaluate and use DCGANs (Inception Score, Fréchet distance, code arithmetic, unrestricted examples)."""


@gan.command("train")
@click.argument("run_arg", metavar="[RUN]", required=False, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--resume", is_flag=True, help="Continue the run from its last saved state (its saved settings).")
@click.option("--dataset", default="fashion-mnist", show_default=True, help="fashion-mnist | mnist | cifar10 | digits")
@click.option("--data-root", default=None)
@click.option("--train-limit", type=int, default=None, help="Use only the first N training images.")
@click.option("--loss", default="non-saturating", show_default=True, help="non-saturating | minimax | least-squares | hinge")
@click.option("--label-smoothing", type=float, default=1.0, show_default=True, help="One-sided: the real label (e.g. 0.9); 1 = off.")
@click.option("--virtual-batchnorm", is_flag=True, help="Virtual batch normalisation in the generator.")
@click.option("--d-steps", type=int, default=1, show_default=True, help="Discriminator updates per generator update.")
@click.option("--conditional", is_flag=True, help="Class-conditional G and D (needed for unrestricted examples).")
@click.option("--classifier", default=None, help="Classifier run that scores every epoch (IS, FD, class histogram).")
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--latent-dim", type=int, default=64, show_default=True)
@click.option("--width", type=int, default=32, show_default=True)
@click.option("--eval-samples", type=int, default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", is_flag=True)
def gan_train(run_arg, out, resume, dataset, data_root, train_limit, loss, label_smoothing, virtual_batchnorm, d_steps,
              conditional, classifier, epochs, batch_size, lr, latent_dim, width, eval_samples, seed, device, quiet) -> None:
    """Train a DCGAN into a run directory (or --resume one)."""
    from ..generative.train import GanConfig, gan_train_run

    run = _out_dir(run_arg, out, resume)
    cfg = GanConfig(epochs=epochs, batch_size=batch_size, lr=lr, latent_dim=latent_dim, width=width, loss=loss,
                    label_smoothing=label_smoothing, d_steps=d_steps, conditional=conditional,
                    virtual_batchnorm=virtual_batchnorm, eval_samples=eval_samples, seed=seed, progress=not quiet)
    t0 = time.perf_counter()
    m = gan_train_run(run, cfg, dataset, data_root, train_limit, classifier, resume=resume, device=device)
    if m.get("inception_score") is not None:
        click.echo(f"inception score {m['inception_score']:.3f} (real test images {m['real_inception_score']:.3f}), "
                   f"frechet distance {m['frechet_distance']:.3f}, judged by {m['classifier']}")
    click.echo(f"{m['epochs']} epochs in {time.perf_counter() - t0:.0f}s; run written to {run}")


@gan.command("evaluate")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--classifier", required=True, help="Classifier run (or *.safetensors) whose softmax / features judge.")
@click.option("--n", type=int, default=5000, show_default=True, help="Generated samples and real test images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def gan_evaluate(run, classifier, n, seed, as_json) -> None:
    """Inception Score, Fréchet distance and class histogram of the generator's samples, with the
    same metrics on real test images (the ceiling). Classifier-based analogues, not ImageNet-Inception numbers."""
    import torch

    from ..data import load_dataset
    from ..generative.checkpoint import load_network, read_networks_meta
    from ..generative.metrics import GanJudge
    from ..generative.train import sample
    from ..storage import load_model
    from ..training.loop import write_metrics

    meta = read_networks_meta(run)
    if meta["kind"] != "gan":
        raise ValueError(f"{run} is a {meta['kind']} run, not a GAN run")
    ds = meta.get("data") or {}
    x_test, _, _ = load_dataset(ds.get("dataset", "fashion-mnist"), "test", root=ds.get("data_root"))
    judge = GanJudge(load_model(classifier), x_test[:n])
    G = load_network(run, "generator")
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, cast(int, G.latent_dim), generator=g)  # load_network returns an nn.Module: a DCGAN Generator here
    y = (torch.arange(n) % cast(int, G.num_classes)) if G.num_classes else None
    scores = judge.score(sample(G, z, y))
    result = {"classifier": str(classifier), "n": n, **scores, "real_inception_score": judge.real_inception_score,
              "real_class_histogram": judge.real_histogram,
              "note": "classifier-based analogues of IS / FID (softmax and penultimate features), not ImageNet-Inception numbers"}
    write_metrics(run, {"evaluation": result})
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"inception score {scores['inception_score']:.3f}   real test images {judge.real_inception_score:.3f} (ceiling)")
    click.echo(f"frechet distance to real test features {scores['frechet_distance']:.3f}")
    click.echo(f"class histogram of {n} samples: {scores['class_histogram']} (real: {judge.real_histogram})")


@gan.command("arithmetic")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--a", "a", required=True, help="Concept 1: a class (with --classifier) or comma-separated sample indices.")
@click.option("--b", "b", required=True, help="Concept 2 (subtracted).")
@click.option("--c", "c", required=True, help="Concept 3 (added).")
@click.option("--classifier", default=None, help="Choose each concept's samples by class with this classifier.")
@click.option("--k", type=int, default=3, show_default=True, help="Samples averaged per concept (by class).")
@click.option("--seed", type=int, default=0, show_default=True)
def gan_arithmetic(run, a, b, c, classifier, k, seed) -> None:
    """Code arithmetic: decode mean(a) - mean(b) + mean(c); the images go to RUN/artifacts/arithmetic.safetensors."""
    import torch

    from ..generative.arithmetic import code_arithmetic, codes_by_class, grid_codes, sample_grid
    from ..generative.checkpoint import load_network
    from ..generative.cyclegan import resolve_domain
    from ..generative.loop import write_artifact_tensors
    from ..storage import load_model

    G = load_network(run, "generator")
    model = load_model(classifier) if classifier else None
    if model is not None:
        names = _class_names(Path(run))
        groups = tuple(codes_by_class(G, model, resolve_domain(v, names), k=k, seed=seed) for v in (a, b, c))
    else:
        groups = tuple(grid_codes(G, [int(i) for i in v.split(",") if i.strip()], seed=seed) for v in (a, b, c))
    res = code_arithmetic(G, groups, seed=seed, classifier=model)  # type: ignore[arg-type]
    write_artifact_tensors(Path(run), "arithmetic.safetensors",
                           {"concepts": res.concepts, "result": res.result, "chosen": res.chosen,
                            "grid": sample_grid(G, seed=seed), "predictions": torch.tensor(res.predictions or [])})
    click.echo(f"decoded {a} - {b} + {c} and {len(res.result) - 1} neighbours into {run}/artifacts/arithmetic.safetensors")
    if res.predictions is not None:
        click.echo(f"classifier's classes of the results: {res.predictions}")


@gan.command("unrestricted")
@click.option("--gan", "gan_run", required=True, type=click.Path(exists=True, file_okay=False), help="A --conditional GAN run.")
@click.option("--classifier", required=True, help="The classifier to fool.")
@click.option("--second", default=None, help="An independently trained classifier (does it still see the source class?).")
@click.option("--source", required=True, help="Source class K (name or index).")
@click.option("--target", default=None, help="Target class T (name or index); untargeted without it.")
@click.option("--n", type=int, default=100, show_default=True)
@click.option("--steps", type=int, default=200, show_default=True)
@click.option("--lr", type=float, default=0.01, show_default=True)
@click.option("--eps-z", type=NUMBER, default=0.1, show_default=True, help="Soft box around the start code.")
@click.option("--seed", type=int, default=0, show_default=True)
def gan_unrestricted(gan_run, classifier, second, source, target, n, steps, lr, eps_z, seed) -> None:
    """Unrestricted adversarial examples (Song et al. 2018) from a class-conditional GAN; images and
    summary go to the GAN run (artifacts/unrestricted.safetensors, metrics.json)."""
    from ..generative.checkpoint import load_network
    from ..generative.cyclegan import resolve_domain
    from ..generative.loop import write_artifact_tensors
    from ..generative.unrestricted import unrestricted_search
    from ..storage import load_model
    from ..training.loop import write_metrics

    names = _class_names(Path(gan_run))
    k = resolve_domain(source, names)
    t = None if target is None else resolve_domain(target, names)
    res = unrestricted_search(load_network(gan_run, "generator"), load_model(classifier), k, t, n=n, steps=steps, lr=lr,
                              eps_z=eps_z, seed=seed, second=load_model(second) if second else None)
    tensors = {"x_start": res.x_start, "x_adv": res.x_adv, "pred_start": res.pred_start, "pred_adv": res.pred_adv}
    if res.second_pred_adv is not None and res.second_pred_start is not None:
        tensors.update({"second_pred_start": res.second_pred_start, "second_pred_adv": res.second_pred_adv})
    write_artifact_tensors(Path(gan_run), "unrestricted.safetensors", tensors)
    summary = {**res.summary, "classifier": classifier, "second": second}
    write_metrics(gan_run, {"unrestricted": summary})
    _print_history(summary)


# --- cyclegan ----------------------------------------------------------------------------------
@click.group(cls=_Group, context_settings=_SETTINGS)
def cyclegan() -> None:
    """CycleGAN between two classes of a data set (unpaired)."""


@cyclegan.command("train")
@click.argument("run_arg", metavar="[RUN]", required=False, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True)
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--data-root", default=None)
@click.option("--domain-a", default=None, help="Class name or index of domain A.")
@click.option("--domain-b", default=None, help="Class name or index of domain B.")
@click.option("--classifier", default=None, help="Classifier run judging the translated-domain accuracy.")
@click.option("--train-limit", type=int, default=None, help="At most N training images per domain.")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--cycle-weight", type=float, default=10.0, show_default=True)
@click.option("--identity-weight", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", is_flag=True)
def cyclegan_train(run_arg, out, resume, dataset, data_root, domain_a, domain_b, classifier, train_limit, epochs, batch_size,
                   lr, cycle_weight, identity_weight, seed, device, quiet) -> None:
    """Train a CycleGAN A <-> B into a run directory (or --resume one)."""
    from ..generative.cyclegan import CycleGanConfig, cyclegan_train_run

    run = _out_dir(run_arg, out, resume)
    if not resume and (domain_a is None or domain_b is None):
        raise ValueError("--domain-a and --domain-b are required")
    cfg = CycleGanConfig(epochs=epochs, batch_size=batch_size, lr=lr, cycle_weight=cycle_weight,
                         identity_weight=identity_weight, seed=seed)
    m = cyclegan_train_run(run, domain_a, domain_b, cfg, dataset, data_root, classifier, train_limit, resume, not quiet, device)
    _print_history(m)
    click.echo(f"run written to {run}")


# --- advgan ------------------------------------------------------------------------------------
@click.group(cls=_Group, context_settings=_SETTINGS)
def advgan() -> None:
    """AdvGAN: a generator of adversarial perturbations (attack with --attacks advgan --generator GEN)."""


@advgan.command("train")
@click.argument("run_arg", metavar="[GEN]", required=False, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True)
@click.option("--target", default=None, help="The classifier run to fool.")
@click.option("--eps", type=NUMBER, default=0.1, show_default=True)
@click.option("--norm", default="linf", show_default=True)
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--data-root", default=None)
@click.option("--train-limit", type=int, default=None)
@click.option("--epochs", type=int, default=6, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--width", type=int, default=12, show_default=True, help="Generator width (its cost per example).")
@click.option("--kappa", type=float, default=2.0, show_default=True, help="Margin past the decision boundary (C&W).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", is_flag=True)
def advgan_train(run_arg, out, resume, target, eps, norm, dataset, data_root, train_limit, epochs, batch_size, lr, width, kappa,
                 seed, device, quiet) -> None:
    """Train an AdvGAN generator against a target classifier (or --resume one)."""
    from ..generative.advgan import AdvGanConfig, advgan_train_run

    run = _out_dir(run_arg, out, resume)
    if not resume and target is None:
        raise ValueError("--target RUN is required")
    cfg = AdvGanConfig(eps=eps, norm=norm, epochs=epochs, batch_size=batch_size, lr=lr, width=width, kappa=kappa, seed=seed)
    m = advgan_train_run(run, target or "", cfg, dataset, data_root, train_limit, resume, not quiet, device)
    _print_history(m)
    click.echo(f"generator written to {run}; attack with: robustlab evaluate TARGET --attacks advgan --generator {run}")


COMMANDS = (gan, cyclegan, advgan)
