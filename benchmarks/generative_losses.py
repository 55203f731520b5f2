"""Non-saturating vs minimax generator cost after the first epoch (the notes' argument, measured):
the same DCGAN, data, seed and discriminator cost, only the generator's cost differs.

    python benchmarks/generative_losses.py --classifier runs/demo/standard --train-limit 20000

Minimax ``1/2 log(1 - D(G(z)))`` has gradient ``-D(G(z))/2`` in D's logit: while D rejects the
samples (D(G(z)) near 0) the generator learns slowly; non-saturating ``-1/2 log D(G(z))`` has
``-(1 - D(G(z)))/2``. Prints IS / FD (classifier-based) and D's outputs after epoch 1 for each.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from robustlab.data import load_dataset
from robustlab.generative.metrics import GanJudge
from robustlab.generative.train import GanConfig, train_gan
from robustlab.storage import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classifier", required=True)
    p.add_argument("--train-limit", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--losses", default="non-saturating,minimax")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    x, y, info = load_dataset("fashion-mnist", "train")
    xt, _, _ = load_dataset("fashion-mnist", "test")
    judge = GanJudge(load_model(a.classifier), xt[:2000])
    print(f"real test images: IS {judge.real_inception_score:.3f}; load {os.getloadavg()}")
    for loss in a.losses.split(","):
        t = time.perf_counter()
        cfg = GanConfig(epochs=a.epochs, loss=loss, seed=a.seed, progress=False)
        res = train_gan(x[: a.train_limit], y[: a.train_limit], cfg, info.num_classes, judge=judge)
        for h in res.history:
            print(f"{loss:>15} epoch {h['epoch']}: IS {h['inception_score']:.3f}  FD {h['frechet_distance']:.2f}  "
                  f"D(x) {h['d_real']:.3f}  D(G(z)) {h['d_fake']:.3f}  g_loss {h['g_loss']:.4f}  "
                  f"histogram {h['class_histogram']}")
        print(f"{loss:>15}: {time.perf_counter() - t:.0f}s; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
