"""AdvGAN vs PGD-20 on the same correctly classified Fashion-MNIST test images: success rate and
throughput (images per second of attack time), plus transfer of the generator to other models.

    python benchmarks/generative_advgan.py --generator GEN --target runs/demo/standard \
        [--other runs/demo/fast-at ...] --eps 0.1 --n 1000

``GEN`` is a ``robustlab advgan train`` run (``--train`` trains it first, with --epochs and
--train-limit). Both attacks go through the ordinary attack contract (``attack(model, x, y)``);
PGD-20 is robustlab's PGD, 20 steps of 0.1 * eps, random start, no early stop; timings are the
median of --repeats alternating runs on one intra-op thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from robustlab import ThreatModel
from robustlab.attacks import PGD
from robustlab.data import load_dataset
from robustlab.generative.advgan import AdvGAN, AdvGanConfig, advgan_train_run
from robustlab.storage import load_model


def correctly_classified(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        keep = (model(x).argmax(1) == y).nonzero().flatten()[:n]
    return x[keep], y[keep]


def timed(attack, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    t = time.perf_counter()
    out = attack(model, x, y)
    return out, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--other", action="append", default=[], help="Other classifier runs (transfer).")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train", action="store_true")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--width", type=int, default=12, help="Generator width (with --train).")
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"load at start {os.getloadavg()}")
    if a.train:
        t = time.perf_counter()
        m = advgan_train_run(a.generator, a.target, AdvGanConfig(eps=a.eps, epochs=a.epochs, width=a.width), train_limit=a.train_limit,
                             progress=False)
        print(f"trained AdvGAN in {time.perf_counter() - t:.0f}s wall ({m['train_seconds']:.0f}s in epochs): {m}")
    threat = ThreatModel("linf", a.eps)
    xt, yt, _ = load_dataset("fashion-mnist", "test")
    for i, run in enumerate([a.target, *a.other]):
        model = load_model(run)
        x, y = correctly_classified(model, xt, yt, a.n)
        advgan, pgd = AdvGAN(threat, a.generator), PGD(threat, steps=20, rel_step_size=0.1, seed=0)
        t_gan, t_pgd = [], []
        for _ in range(a.repeats if i == 0 else 1):
            xg, dt = timed(advgan, model, x, y)
            t_gan.append(dt)
            xp, dt = timed(pgd, model, x, y)
            t_pgd.append(dt)
        with torch.no_grad():
            s_gan = float((model(xg).argmax(1) != y).float().mean())
            s_pgd = float((model(xp).argmax(1) != y).float().mean())
        g, q = statistics.median(t_gan), statistics.median(t_pgd)
        role = "target" if i == 0 else "transfer"
        print(f"{role} {run}: n={len(y)} correctly classified; AdvGAN success {s_gan:.3f} in {g:.3f}s "
              f"({len(y) / g:.0f} img/s); PGD-20 success {s_pgd:.3f} in {q:.2f}s ({len(y) / q:.0f} img/s); "
              f"throughput ratio {q / g:.1f}x; max |delta| {float((xg - x).abs().max()):.4f}")
    print(f"load at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
