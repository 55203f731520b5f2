"""robustlab against its peers: torchattacks, Foolbox and IBM ART, at equal settings.

For each of two models -- (a) the Fashion-MNIST small CNN, trained briefly here with
``robustlab.training.train`` (or ``--checkpoint RUN``), and (b) a CIFAR-style ResNet-18 of width
16 on 32x32x3 inputs (Fashion-MNIST padded to 32x32 and repeated over 3 channels, trained for a
few dozen steps) -- every library attacks *the same model object* on *the same batch* with the
same settings:

============  =====================================================================  =========
attack        settings                                                               floor k
============  =====================================================================  =========
fgsm          Linf eps 0.1                                                           1
pgd-linf      Linf eps 0.1, 10 steps of eps/4, uniform random start                  10
pgd-l2        L2 eps 1.0, 10 steps of eps/4, random start                            10
mim           Linf eps 0.1, 10 steps of eps/10, momentum (decay) 1.0, no random start 10
apgd-ce       Linf eps 0.1, 20 iterations, 1 restart, CE loss                        21
eval          fixed-budget robust accuracy: PGD-20 Linf eps 0.1 step eps/8           20
============  =====================================================================  =========

``eval`` is a whole evaluation: robustlab's ``evaluate(..., early_stop=True)`` against each
peer's plain equivalent (clean predictions, PGD-20 on the correctly classified samples only --
a filter that favours the peers -- then predictions on the result). ``robustlab-noES`` is the
same ``evaluate`` with ``early_stop=False``, for reference.

Timing: runs alternate across libraries (order rotated every repeat), each library's call is
timed end to end (ART's numpy conversion and its success-rate logging included: that is what
its users pay), the median of ``--repeats`` runs is reported. Robust accuracy is measured
outside the timed region, by one common forward pass on each library's output (mean over the
repeats), together with a check that the output lies in the eps-ball and the bounds.

Floor: ``k`` forward+backward passes w.r.t. the input on the same batch (model in eval mode,
parameters not requiring grad), i.e. what any attack with k gradient steps must at least spend;
measured every repeat as a loop of 10 passes, ``floor(k) = k * median(one pass)``.

Peak memory: one fresh subprocess per (model, library) loads the same weights and batch, warms
every attack up on 8 images, then for each attack: ``gc.collect()``, glibc ``malloc_trim(0)``
(freed heap pages go back to the OS), reads ``VmRSS``, resets the kernel's RSS high-water mark
(``echo 5 > /proc/self/clear_refs``), runs the attack once and reads ``VmHWM``. Reported:
``VmHWM - VmRSS`` = the extra resident memory the attack needed at its peak, in MiB (tracemalloc
cannot see torch's CPU allocations). Absolute peak RSS of the worker is in the JSON/verbose
output.

Adversarial training: images/s of a training step (objective + backward + Adam step, batch 128)
for ``build_objective("pgd-at", eps=0.1, steps=10)`` and ``build_objective("fast-at", eps=0.1)``
against the floor ``k x (input forward+backward, eval mode) + 1 x (training forward+backward +
optimizer step)`` with k = 10 and 1, plus torchattacks' PGD in the same loop as a reference.

    python benchmarks/peers.py [--quick] [--n 500] [--repeats 3] [--markdown OUT.md]

Threads: ``--threads 1`` by default. On a shared 2-core machine two intra-op threads contend
with every other job and a ResNet forward+backward becomes 5-10x slower and erratic; one
thread gives stable ratios. ``--threads 0`` keeps torch's default.

This file is the command line; the work is in ``benchmarks/peerbench/`` (adapters per library,
timing and memory probes, models, training throughput, markdown tables).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from peerbench.adapters import BUILDERS
from peerbench.common import PEERS, SPECS, available_peers, freeze, predict
from peerbench.levers import LEVERS
from peerbench.models import fmnist, make_case
from peerbench.tables import full_report, machine_info, readme_section, update_readme
from peerbench.timing import MEMORY_FLAG, bench_model, make_probe, measure_memory, memory_worker
from peerbench.training import bench_training

warnings.filterwarnings("ignore")
logging.getLogger("art").setLevel(logging.ERROR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small batches and short training (< 2 min)")
    ap.add_argument("--n", type=int, default=None, help="CNN batch (default 500; --quick 64)")
    ap.add_argument("--n-resnet", type=int, default=None, help="ResNet batch (default 64; --quick 16)")
    ap.add_argument("--resnet-width", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", default=None, help="write the results tables to this file")
    ap.add_argument("--readme", default=None,
                    help="replace the part of this file between <!-- peers:begin --> and <!-- peers:end --> "
                         "with the machine facts, the verdicts against the targets and the training table")
    ap.add_argument("--json", default=None, help="write raw timings to this file")
    ap.add_argument("--checkpoint", default=None, help="a small-cnn run to load instead of training one")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--libs", default=",".join(PEERS), help="peers to compare (comma separated)")
    ap.add_argument("--models", default="cnn,resnet")
    ap.add_argument("--memory", choices=("inproc", "fresh", "off"), default="inproc",
                    help="peak-memory probe: around every timed run (inproc, free), in one fresh subprocess per "
                         "(model, library) (fresh, costs one more run of everything), or off")
    ap.add_argument("--no-training", action="store_true", help="skip the adversarial-training throughput")
    ap.add_argument("--levers", action="store_true",
                    help="instead of the peer comparison: robustlab with each proposed speed lever (monkeypatch / "
                         "wrapper, nothing under src/ changes) next to plain robustlab and torchattacks")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument(MEMORY_FLAG, dest="memory_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(args.memory_worker, BUILDERS, SPECS)
        return
    q = args.quick
    n_cnn = args.n or (64 if q else 500)
    n_rn = args.n_resnet or (16 if q else 64)
    at_steps = 1 if q else 3
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        if args.verbose:
            print(msg, flush=True)

    peers = available_peers()
    machine = machine_info(peers)
    wanted = [p.strip() for p in args.libs.split(",") if p.strip()]
    libs_ok = [p for p in wanted if p in peers and not str(peers[p]).startswith("unavailable")]
    for p in wanted:
        if p not in libs_ok:
            print(f"skipping {p}: {peers.get(p, 'unknown library')}", file=sys.stderr)
    libs = ["robustlab", "robustlab-noES"] + libs_ok if not q else ["robustlab"] + libs_ok
    builders = BUILDERS
    if args.levers:
        builders = dict(LEVERS)
        if "torchattacks" not in libs_ok:
            del builders["torchattacks"]
        libs = list(builders)
    mem_libs = ["robustlab"] + libs_ok

    xtest, ytest = fmnist("test")
    all_res: dict[str, dict] = {}
    mems: dict[str, dict] = {}
    trains: dict[str, dict] = {}
    models = [m.strip() for m in args.models.split(",")]
    with tempfile.TemporaryDirectory(prefix="robustlab-peers-") as tmpd:
        tmp = Path(tmpd)
        for mname in models:
            title, model, desc, x, y = make_case(mname, xtest, ytest, n_cnn=n_cnn, n_resnet=n_rn, quick=q,
                                                 checkpoint=args.checkpoint, resnet_width=args.resnet_width)
            freeze(model)
            clean = float((predict(model, x) == y).float().mean())
            print(f"{title}: {desc}; clean accuracy {clean:.3f} on {len(x)} images "
                  f"[{time.perf_counter() - t_start:.0f} s]", flush=True)
            res = bench_model(model, x, y, libs, SPECS, args.repeats, log, builders, make_probe(args.memory))
            res.update(desc=desc, n=len(x), clean=clean)
            all_res[title] = res
            print(f"  timed [{time.perf_counter() - t_start:.0f} s]", flush=True)
            if args.memory == "fresh" and not args.levers:
                mems[title] = measure_memory(model, x, y, mem_libs, SPECS, args.threads, tmp, mname, log, Path(__file__))
                print(f"  memory [{time.perf_counter() - t_start:.0f} s]", flush=True)
            if not args.no_training and mname == "cnn":
                xt, yt = fmnist("train")
                trains[title] = bench_training(model, xt, yt, 128, at_steps, args.repeats, libs_ok, log, args.levers)
                print(f"  training throughput [{time.perf_counter() - t_start:.0f} s]", flush=True)

    if args.levers:
        head = "## robustlab speed levers (measured by monkeypatch / wrapper)"
    else:
        head = "## robustlab vs torchattacks / Foolbox / ART"
    command = f"python benchmarks/peers.py {' '.join(sys.argv[1:])}"
    text = full_report(head, machine, command, args.repeats, time.perf_counter() - t_start, all_res, SPECS, libs, mems,
                       trains, args.levers)
    print()
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.readme and not args.levers:
        update_readme(Path(args.readme), readme_section(machine, command, args.repeats, all_res, SPECS, trains))
    if args.json:
        raw = {t: {"floor_unit": r["floor_unit"], "cells": {f"{k[0]}|{k[1]}": vars(c) for k, c in r["cells"].items()}}
               for t, r in all_res.items()}
        raw["memory"] = mems
        raw["training"] = {t: tr["times"] for t, tr in trains.items()}
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))


if __name__ == "__main__":
    main()
