"""Is robustlab's PGD-L2 really weaker than torchattacks' PGDL2, or is it the random start?

peers.py runs each library once per repeat with one random start; robust accuracy on a 500-image
batch then moves by about a point from start to start. This script runs both at peers.py's
settings (model (a), L2 eps 1.0, 10 steps of eps/4, random start) over several seeds and prints
the spread, plus robustlab with torchattacks' start distribution (radius uniform in [0, eps]
instead of uniform in the ball) to separate the start from the rest of the attack.

Usage: python benchmarks/pgd_l2_seeds.py [--seeds 8] [--n 500]   (needs torchattacks)
"""

from __future__ import annotations

import argparse
import statistics

import torch

import robustlab
from robustlab import ThreatModel
from robustlab.attacks import PGD
from robustlab.models.zoo import build_model
from robustlab.training import Clean, TrainConfig, train


class RadiusUniformStart(ThreatModel):
    """The same L2 ball, but random starts with a Gaussian direction and a radius uniform in
    [0, eps] (torchattacks' PGDL2) instead of uniform in the ball (radius ~ eps * U^(1/d))."""

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        g = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        shape = (-1, *[1] * (x.dim() - 1))
        direction = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
        r = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device) * self.eps
        return self.clip_bounds(x + direction * r.view(shape))


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--n", type=int, default=500)
    args = ap.parse_args()
    import torchattacks as ta

    torch.set_num_threads(1)
    xt, yt, _ = robustlab.load_dataset("fashion-mnist", "train")
    xs, ys, _ = robustlab.load_dataset("fashion-mnist", "test")
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, input_size=28)  # peers.py's model (a)
    train(model, Clean(), (xt[:20000], yt[:20000]), None, TrainConfig(epochs=2, batch_size=128, progress=False, seed=0))
    model.eval()
    x, y = xs[: args.n], ys[: args.n]
    eps = 1.0
    threat = ThreatModel("l2", eps)
    other_start = RadiusUniformStart("l2", eps)
    results: dict[str, list[float]] = {"robustlab (uniform in ball)": [], "robustlab, radius U[0, eps] start": [],
                                       "torchattacks PGDL2": []}
    for seed in range(args.seeds):
        results["robustlab (uniform in ball)"].append(
            accuracy(model, PGD(threat, steps=10, step_size=eps / 4, seed=seed)(model, x, y), y))
        results["robustlab, radius U[0, eps] start"].append(
            accuracy(model, PGD(other_start, steps=10, step_size=eps / 4, seed=seed)(model, x, y), y))
        torch.manual_seed(seed)
        results["torchattacks PGDL2"].append(
            accuracy(model, ta.PGDL2(model, eps=eps, alpha=eps / 4, steps=10, random_start=True)(x, y), y))
    print(f"clean accuracy {accuracy(model, x, y):.3f} on {len(x)} test images; PGD-L2 eps {eps}, 10 steps of eps/4, "
          f"{args.seeds} seeds")
    for name, accs in results.items():
        print(f"{name:<36} mean {statistics.mean(accs):.4f}  sd {statistics.stdev(accs):.4f}  "
              f"min {min(accs):.3f}  max {max(accs):.3f}")


if __name__ == "__main__":
    main()
