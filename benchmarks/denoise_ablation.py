"""The feature-denoising paper's comparison at small scale (Xie et al. 2019, the ablation table).

One architecture (robustlab's small-cnn), one adversarial-training budget, one seed; only the block
after each conv stage changes:

* ``none``       -- the plain network;
* ``null``       -- the paper's null block: 1x1 conv + residual, no denoising operation;
* ``bottleneck`` -- the capacity control: an ordinary residual bottleneck block (1x1, 3x3, 1x1);
* ``mean`` / ``median`` / ``bilateral`` / ``nonlocal`` -- the denoising blocks (op, 1x1 conv, residual).

Every variant starts from the same seed and sees the same batches; each is trained with the chosen
adversarial objective (``pgd-at`` with ``--at-steps`` steps, or ``fast-at``) and then scored on the
same test images: clean accuracy and PGD accuracy (Linf, ``--eps``, ``--pgd-steps`` steps, one
random start, seed 0, the best point per sample). The table gives parameters, training seconds and
both accuracies, measured in this run; ``+-`` is one binomial standard error of an accuracy on the
test images (seed-to-seed variation is *not* included: pass several ``--seeds`` to see it).

    python benchmarks/denoise_ablation.py                    # defaults: ~5-8 min on 2 busy cores
    python benchmarks/denoise_ablation.py --train-limit 20000 --epochs 5 --test-n 2000 --seeds 0 1 2 --threads 0
    python benchmarks/denoise_ablation.py --dataset digits --variants none null nonlocal   # seconds

The same models from the command line: ``robustlab train --defense pgd-at --denoise null ...``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import torch

from robustlab import ThreatModel
from robustlab.attacks import PGD
from robustlab.data import load_dataset
from robustlab.models import build_model
from robustlab.training import TrainConfig, accuracy, build_objective, train

VARIANTS = ("none", "null", "bottleneck", "mean", "median", "bilateral", "nonlocal")


def model_options(variant: str, args: argparse.Namespace, input_size: int) -> dict[str, Any]:
    """small-cnn options of one variant (``none``: no block)."""
    opts: dict[str, Any] = {"input_size": input_size, "channels": list(args.channels), "hidden": args.hidden,
                            "batchnorm": args.batchnorm}
    if variant != "none":
        opts["denoise"] = variant
        if args.stages:
            opts["denoise_stages"] = list(args.stages)
    return opts


def run_variant(variant: str, seed: int, data: tuple[torch.Tensor, ...], args: argparse.Namespace) -> dict[str, Any]:
    """Train one variant from ``seed`` and score it: a row of the table."""
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    model = build_model("small-cnn", 10, xtr.shape[1], **model_options(variant, args, xtr.shape[-1]))
    if args.objective == "pgd-at":
        objective = build_objective("pgd-at", eps=args.eps, steps=args.at_steps, rel_step_size=2.5 / args.at_steps)
    else:
        objective = build_objective("fast-at", eps=args.eps)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule="onecycle", seed=seed,
                      progress=False)
    t0 = time.perf_counter()
    train(model, objective, (xtr, ytr), None, cfg)
    train_s = time.perf_counter() - t0
    model.eval()
    t0 = time.perf_counter()
    clean = accuracy(model, xte, yte)
    attack = PGD(ThreatModel("linf", args.eps), steps=args.pgd_steps, seed=0)
    broken = sum(int(attack.run(model, xte[i : i + 250], yte[i : i + 250]).success.sum()) for i in range(0, len(xte), 250))
    robust = 1.0 - broken / len(xte)
    return {"variant": variant, "seed": seed, "params": sum(p.numel() for p in model.parameters()),
            "train_s": train_s, "eval_s": time.perf_counter() - t0, "clean": clean, "pgd": robust,
            "rollbacks": len(getattr(objective, "events", []))}


def print_table(rows: list[dict[str, Any]], n_test: int) -> None:
    """One line per variant: parameters, seconds and accuracies (mean over seeds, with their spread)."""
    def se(p: float) -> float:
        return math.sqrt(max(p * (1 - p), 1e-12) / n_test)

    print(f"\n{'variant':<11}{'params':>8}{'+params':>9}{'train s':>9}{'clean acc':>16}{'PGD acc':>16}"
          f"{'PGD - none':>12}{'seeds':>7}")
    base = {r["seed"]: r for r in rows if r["variant"] == "none"}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == variant]
        clean = statistics.mean(r["clean"] for r in rs)
        pgd = statistics.mean(r["pgd"] for r in rs)
        spread = f" sd {statistics.stdev(r['pgd'] for r in rs):.3f}" if len(rs) > 1 else ""
        extra = rs[0]["params"] - base[rs[0]["seed"]]["params"] if base else 0
        diff = (f"{statistics.mean(r['pgd'] - base[r['seed']]['pgd'] for r in rs):+.3f}"
                if all(r["seed"] in base for r in rs) else "-")
        print(f"{variant:<11}{rs[0]['params']:>8}{extra:>9}{statistics.mean(r['train_s'] for r in rs):>9.1f}"
              f"{clean:>9.3f} +-{se(clean):.3f}{pgd:>9.3f} +-{se(pgd):.3f}{diff:>12}{len(rs):>7}{spread}")
    if any(r["rollbacks"] for r in rows):
        print("fast-at rollbacks (catastrophic overfitting caught): "
              + ", ".join(f"{r['variant']}/{r['seed']}: {r['rollbacks']}" for r in rows if r["rollbacks"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    ap.add_argument("--train-limit", type=int, default=4000, help="first N training images")
    ap.add_argument("--test-n", type=int, default=500, help="first N test images (clean and PGD accuracy)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak of the one-cycle schedule (Adam)")
    ap.add_argument("--objective", default="pgd-at", choices=["pgd-at", "fast-at"])
    ap.add_argument("--at-steps", type=int, default=3, help="PGD steps of pgd-at training (step 2.5 eps / steps)")
    ap.add_argument("--eps", type=float, default=0.1, help="Linf budget of training and of the PGD evaluation")
    ap.add_argument("--pgd-steps", type=int, default=20, help="steps of the evaluation PGD")
    ap.add_argument("--channels", type=int, nargs=2, default=[16, 32])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batchnorm", action="store_true", help="small-cnn with BatchNorm (the bottleneck block follows)")
    ap.add_argument("--stages", type=int, nargs="+", default=None, help="denoise_stages (default both: 1 2)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: small models on a shared machine; 0: torch's)")
    args = ap.parse_args()
    for name in ("train_limit", "test_n", "epochs", "at_steps", "pgd_steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    xtr, ytr, _ = load_dataset(args.dataset, "train")
    xte, yte, _ = load_dataset(args.dataset, "test")
    data = (xtr[: args.train_limit], ytr[: args.train_limit], xte[: args.test_n], yte[: args.test_n])
    print(f"{args.dataset}: {len(data[0])} train / {len(data[2])} test images; small-cnn channels {args.channels} "
          f"hidden {args.hidden}{' +BN' if args.batchnorm else ''}; blocks after stages {args.stages or [1, 2]}")
    at = f"pgd-at ({args.at_steps} steps)" if args.objective == "pgd-at" else "fast-at"
    print(f"training: {at}, Linf eps {args.eps}, {args.epochs} epochs, batch {args.batch_size}, Adam one-cycle lr "
          f"{args.lr}; evaluation: PGD-{args.pgd_steps} eps {args.eps}; seeds {args.seeds}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    # Untimed warm-up (thread pools, allocator), so the first variant's seconds are not inflated.
    train(build_model("small-cnn", 10, xtr.shape[1], **model_options("none", args, xtr.shape[-1])), build_objective("clean"),
          (data[0][:256], data[1][:256]), None, TrainConfig(epochs=1, batch_size=args.batch_size, progress=False))
    rows = []
    t_all = time.perf_counter()
    for seed in args.seeds:
        for variant in args.variants:
            row = run_variant(variant, seed, data, args)
            rows.append(row)
            print(f"  {variant:<11} seed {seed}: clean {row['clean']:.3f}  PGD {row['pgd']:.3f}  "
                  f"({row['train_s']:.1f} s train, {row['eval_s']:.1f} s eval)", flush=True)
    print_table(rows, len(data[2]))
    print(f"total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
