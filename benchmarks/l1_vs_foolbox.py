"""L1 robust accuracy: robustlab's APGD-L1 and PGD-L1 (SLIDE) against foolbox's SparseL1DescentAttack.

Same model, same images, same eps, same number of steps (one forward+backward each). The model
is a small CNN trained here on 12,000 Fashion-MNIST images (about 87% clean accuracy, ~20 s on 2
cores), or the run given with ``--run``. Lower robust accuracy = stronger attack; a clean error
counts as non-robust for every attack.

Eps: 28x28 images in [0, 1]. The L1 literature uses eps = 10 on MNIST (Tramer & Boneh 2019;
Croce & Hein 2021); an undefended Fashion-MNIST model falls far below that, so the default list
``2,5,10`` shows a point where attacks differ (2), the mid range (5) and the literature value (10).

    .venv/bin/python benchmarks/l1_vs_foolbox.py                 # ~3 minutes on 2 idle cores
    .venv/bin/python benchmarks/l1_vs_foolbox.py --eps 5 --steps 100 --n 1000

robustlab's attacks run with ``early_stop=True`` (same robust accuracy, less compute).

Measured (--n 500, 50 steps, clean 0.886): robust accuracy at eps 2 / 5 / 10 --
APGD-L1 0.698 / 0.346 / 0.078; PGD-L1 0.730 / 0.466 / 0.146; foolbox SparseL1Descent (defaults)
0.728 / 0.470 / 0.162; foolbox with step 2.5 eps / 50: 0.740 / 0.482 / 0.158.
"""

from __future__ import annotations

import argparse
import time

import torch


def train_model() -> torch.nn.Module:
    from robustlab.data import load_dataset
    from robustlab.models import build_model
    from robustlab.training import Clean, TrainConfig, train

    xtr, ytr, _ = load_dataset("fashion-mnist", "train")
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, channels=(16, 32), hidden=64)
    cfg = TrainConfig(epochs=4, batch_size=128, lr=2e-3, seed=0, progress=False)
    train(model, Clean(), (xtr[:12000], ytr[:12000]), None, cfg)
    return model.eval()


def foolbox_robust(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                   rel_stepsize: float | None) -> torch.Tensor:
    """Per-sample robustness under foolbox's SparseL1DescentAttack (its defaults: quantile 0.99,
    rel_stepsize 0.2, no random start) at ``eps`` with ``steps`` steps."""
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
    kwargs = {} if rel_stepsize is None else {"rel_stepsize": rel_stepsize}
    attack = fb.attacks.SparseL1DescentAttack(steps=steps, **kwargs)
    _, clipped, success = attack(fmodel, x, y, epsilons=[eps])
    # check foolbox's points against our threat model (its projection is L1-then-clip)
    from robustlab import ThreatModel

    assert bool(ThreatModel("l1", eps).contains(clipped[0], x, tol=1e-4).all())
    return ~success[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", default="2,5,10", help="comma-separated L1 radii")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--n", type=int, default=300, help="test images")
    ap.add_argument("--run", default=None, help="a run directory to load instead of training a model")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from robustlab import ThreatModel, load_model
    from robustlab.attacks import APGD, PGD
    from robustlab.data import load_dataset

    t0 = time.perf_counter()
    model = load_model(f"{args.run}/model.safetensors").eval() if args.run else train_model()
    xte, yte, _ = load_dataset("fashion-mnist", "test")
    x, y = xte[: args.n].contiguous(), yte[: args.n]
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    print(f"model ready in {time.perf_counter() - t0:.1f} s; clean accuracy {clean:.3f} on {args.n} images; "
          f"{args.steps} steps per attack", flush=True)
    header = f"{'eps':>5}  {'attack':<44} {'robust acc':>10} {'time s':>7}"
    print(header)
    print("-" * len(header))
    for eps in (float(e) for e in args.eps.split(",")):
        t = ThreatModel("l1", eps)
        rows = [
            ("robustlab APGD-L1 (CE)", lambda t=t: ~APGD(t, steps=args.steps, seed=0, early_stop=True).run(model, x, y).success),
            ("robustlab PGD-L1 (SLIDE, q=0.99)", lambda t=t: ~PGD(t, steps=args.steps, seed=0, early_stop=True).run(model, x, y).success),
            ("foolbox SparseL1Descent (defaults)", lambda eps=eps: foolbox_robust(model, x, y, eps, args.steps, None)),
            (f"foolbox SparseL1Descent (step 2.5 eps/{args.steps})",
             lambda eps=eps: foolbox_robust(model, x, y, eps, args.steps, 2.5 / args.steps)),
        ]
        for name, fn in rows:
            t1 = time.perf_counter()
            robust = fn()
            print(f"{eps:>5g}  {name:<44} {robust.float().mean().item():>10.3f} {time.perf_counter() - t1:>7.1f}",
                  flush=True)
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
