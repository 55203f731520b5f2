"""The training recipes side by side at one fixed budget: clean accuracy, PGD-20, a suite, minutes.

Each recipe (``robustlab train --recipe NAME``, or ``--extra NAME='flags'`` for a variant) is trained
with the same overrides (``--epochs``, ``--train-limit``), then evaluated on the first ``--n`` test
images: clean accuracy on the whole test set (from the run), PGD-20 at the recipe's threat model and
``--suite`` (default ``standard``; ``autoattack`` for the AutoAttack protocol, several times slower).
One table is printed, measured in this one run; the runs stay under ``--out`` (rerun: they are reused).

    python benchmarks/recipes.py [--recipes fmnist-linf-0.1,fmnist-standard] [--epochs 10] [--train-limit N]
                                 [--n 1000] [--suite standard] [--out runs/recipes]
    python benchmarks/recipes.py --recipes none --extra fast-bn='--defense fast-at --eps 0.125 --batchnorm ...'
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def robustlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustlab", *args], check=True, capture_output=True, text=True)


def threat_of(run: Path) -> tuple[str, float]:
    """The threat model the run is judged under: its monitor attack's (the evaluation budget, e.g.
    eps 0.1 for a model trained at 0.125), else its defense's."""
    spec = json.loads((run / "config.json").read_text())["spec"]
    opts = spec.get("defense_options") or {}
    monitor = spec.get("monitor") or {}
    return (str(monitor.get("norm", opts.get("norm", "linf"))),
            float(monitor.get("eps", opts.get("eps", 0.1))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default="fmnist-standard,fmnist-linf-0.1,fmnist-linf-0.1-trades-awp,fmnist-l2",
                   help="comma-separated recipe names ('none' for only --extra)")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=FLAGS", help="a variant: name and train flags")
    p.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs (the fixed budget)")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--n", type=int, default=1000, help="test images for PGD-20 and the suite")
    p.add_argument("--suite", default="standard")
    p.add_argument("--out", default="runs/recipes")
    args = p.parse_args()

    jobs: list[tuple[str, list[str]]] = []
    if args.recipes != "none":
        jobs += [(r, ["--recipe", r]) for r in args.recipes.split(",") if r.strip()]
    for e in args.extra:
        name, _, flags = e.partition("=")
        jobs.append((name, shlex.split(flags)))
    budget = ([] if args.epochs is None else ["--epochs", str(args.epochs)]) + (
        [] if args.train_limit is None else ["--train-limit", str(args.train_limit)])
    rows = []
    for name, flags in jobs:
        run = Path(args.out) / name
        t0 = time.perf_counter()
        if not (run / "metrics.json").is_file():
            robustlab("train", *flags, *budget, "--quiet", "--out", str(run))
        minutes = json.loads((run / "metrics.json").read_text()).get("train_seconds", time.perf_counter() - t0) / 60
        norm, eps = threat_of(run)
        common = ["--eps", f"{eps:g}", "--norm", norm, "--n", str(args.n), "--quiet"]
        pgd = Path(args.out) / f"{name}-pgd20"
        suite = Path(args.out) / f"{name}-{args.suite}"
        for out, what in ((pgd, ["--attacks", "pgd", "--steps", "20"]), (suite, ["--suite", args.suite])):
            if not (out / "evaluation.json").is_file():
                robustlab("evaluate", str(run), *what, *common, "--out", str(out))
        clean = json.loads((run / "metrics.json").read_text())["clean_accuracy"]
        r_pgd = json.loads((pgd / "evaluation.json").read_text())["robust_accuracy"]
        r_suite = json.loads((suite / "evaluation.json").read_text())["robust_accuracy"]
        rows.append((name, f"{norm} {eps:g}", clean, r_pgd, r_suite, minutes))
        print(f"{name}: done", flush=True)
    print()
    print(f"{'recipe':32s} {'threat':10s} {'clean':>7s} {'PGD-20':>7s} {args.suite:>11s} {'minutes':>8s}")
    for name, threat, clean, r_pgd, r_suite, minutes in rows:
        print(f"{name:32s} {threat:10s} {clean:7.4f} {r_pgd:7.4f} {r_suite:11.4f} {minutes:8.1f}")
    print(f"(clean: all test images; PGD-20 and {args.suite}: the first {args.n}; minutes: training wall time)")


if __name__ == "__main__":
    main()
