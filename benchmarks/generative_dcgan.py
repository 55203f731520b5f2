"""DCGAN on Fashion-MNIST: Inception Score and Fréchet distance per epoch (classifier-based
analogues, judged by a robustlab classifier), against the same metrics on real test images.

    python benchmarks/generative_dcgan.py --classifier runs/demo/standard --out /tmp/gan --epochs 8

Prints one line per epoch and the ratio IS(generated) / IS(real test images); the issue's target
is >= 0.8 within 15 minutes of training. One intra-op thread (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from robustlab.generative.train import GanConfig, gan_train_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classifier", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--loss", default="non-saturating")
    p.add_argument("--label-smoothing", type=float, default=1.0)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--conditional", action="store_true")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    cfg = GanConfig(epochs=a.epochs, loss=a.loss, label_smoothing=a.label_smoothing, width=a.width,
                    conditional=a.conditional, progress=False)
    metrics = gan_train_run(a.out, cfg, train_limit=a.train_limit, classifier=a.classifier, resume=a.resume)
    wall = time.perf_counter() - t0
    total = 0.0
    with open(os.path.join(a.out, "history.jsonl")) as f:
        for line in f:
            h = json.loads(line)
            total += h["seconds"]
            print(f"epoch {h['epoch']} (after {total:.0f}s): IS {h['inception_score']:.3f}  FD {h['frechet_distance']:.2f}  "
                  f"d_loss {h['d_loss']:.3f} g_loss {h['g_loss']:.3f} D(x) {h['d_real']:.3f} D(G(z)) {h['d_fake']:.3f}  "
                  f"{h['seconds']:.0f}s wall, {h.get('cpu_seconds', float('nan')):.0f}s CPU")
    ratio = metrics["inception_score"] / metrics["real_inception_score"]
    print(f"real test IS {metrics['real_inception_score']:.3f}; generated IS {metrics['inception_score']:.3f} "
          f"= {ratio:.2f} x real; train {metrics['train_seconds']:.0f}s, wall {wall:.0f}s; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
