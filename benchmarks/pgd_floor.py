"""How close is robustlab's PGD to the cost floor of its own forward/backward passes?

PGD-10, Linf, eps 0.1 on 1000 images, compared with

* the floor: a bare loop of 10 forward+backward passes w.r.t. the input on the same batch
  (model in eval mode, parameters not requiring grad) -- what any PGD-10 must at least spend;
* the channels_last floor: the same loop with the convolution kernels and the batch in
  channels_last layout, which robustlab's attacks use on CPU by default (``Attack.channels_last``);
  the overhead of an attack is its time over *this* floor, the layout win its time under the first;
* ``pgd-plain``: ``PGD(track_best=False)(model, x, y)`` -- Madry's PGD, the final iterate,
  exactly k forward+backward passes (what adversarial training calls);
* ``pgd``: ``PGD(...).run(model, x, y)`` -- keeps each sample's best point and reports success,
  which costs one forward pass more than the floor (the scoring of the final iterate); its ratio
  is also given against ``floor+1fwd`` (the floor plus one forward on the batch);
* ``pgd+early-stop``: the same with early stop (only not-yet-fooled samples are attacked).

Runs alternate (floor, plain, early-stop, floor, ...) and the median of ``--repeats`` runs is
reported, with each time's ratio to the floor and the robust accuracies.

Data: the first 1000 Fashion-MNIST test images if :mod:`robustlab.data` can load them, otherwise
random 1x28x28 inputs. Model: ``--checkpoint`` (loaded with robustlab's ``load_model``) if given,
else a small-cnn, randomly initialised or, with ``--train-steps N``, trained for N Adam steps on
Fashion-MNIST train (when available) so that the robust accuracy is not trivially 0.

    python benchmarks/pgd_floor.py [--checkpoint PATH] [--train-steps 300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from peerbench.common import floor_passes  # benchmarks/ is this script's folder, first on sys.path
from robustlab import ThreatModel
from robustlab.attacks import PGD
from robustlab.models.zoo import build_model


def load_data(n: int):
    try:
        from robustlab.data import load_dataset

        x, y, _ = load_dataset("fashion-mnist", "test")
        return x[:n].contiguous(), y[:n].contiguous(), "fashion-mnist test"
    except Exception as e:
        print(f"(robustlab.data unavailable: {type(e).__name__}: {e}; using random inputs)", file=sys.stderr)
        g = torch.Generator().manual_seed(0)
        return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g), "random"


def load_model(checkpoint: str | None, train_steps: int) -> tuple[torch.nn.Module, str]:
    if checkpoint:
        loader = None
        try:
            from robustlab import load_model as loader  # type: ignore[attr-defined,no-redef]
        except ImportError:
            from robustlab.storage.checkpoint import load_model as loader  # type: ignore[no-redef]
        return loader(checkpoint), f"checkpoint {checkpoint}"
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, input_size=28)
    if train_steps <= 0:
        return model, "small-cnn, random init"
    try:
        from robustlab.data import load_dataset

        xt, yt, _ = load_dataset("fashion-mnist", "train")
    except Exception:
        return model, "small-cnn, random init (no training data)"
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(train_steps):
        i = torch.randint(0, len(xt), (128,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(xt[i]), yt[i]).backward()
        opt.step()
    return model, f"small-cnn, {train_steps} Adam steps on fashion-mnist train"


def floor_cl(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    from robustlab.attacks.base import channels_last_weights

    with channels_last_weights(model):
        floor_passes(model, x.contiguous(memory_format=torch.channels_last), y, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--train-steps", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    x, y, data_name = load_data(args.n)
    model, model_name = load_model(args.checkpoint, args.train_steps)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        clean_acc = (model(x).argmax(1) == y).float().mean().item()
    threat = ThreatModel("linf", args.eps)
    print(f"data: {data_name} ({len(x)} images), model: {model_name}, clean accuracy {clean_acc:.3f}")
    print(f"PGD-{args.steps} Linf eps {args.eps}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    robust: dict[str, float] = {}

    def run_floor() -> None:
        floor_passes(model, x, y, args.steps)

    def run_forward() -> None:
        with torch.no_grad():
            model(x)

    def run_plain() -> None:
        x_adv = PGD(threat, steps=args.steps, track_best=False, seed=0)(model, x, y)
        plain_adv.append(x_adv)

    def run_pgd(es: bool) -> None:
        res = PGD(threat, steps=args.steps, early_stop=es, seed=0).run(model, x, y)
        robust["pgd+early-stop" if es else "pgd"] = 1 - res.success.float().mean().item()

    plain_adv: list[torch.Tensor] = []
    configs = {"floor": run_floor, "floor-cl": lambda: floor_cl(model, x, y, args.steps), "forward": run_forward,
               "pgd-plain": run_plain, "pgd": lambda: run_pgd(False), "pgd+early-stop": lambda: run_pgd(True)}
    for fn in configs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.repeats):
        for name, fn in configs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    with torch.no_grad():  # outside the timed region, once
        robust["pgd-plain"] = (model(plain_adv[-1]).argmax(1) == y).float().mean().item()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'config':<16}{'median s':>10}{'x floor':>10}{'x floor-cl':>12}{'robust acc':>12}   runs")
    for name in configs:
        ra = f"{robust[name]:.3f}" if name in robust else "-"
        runs = " ".join(f"{t:.3f}" for t in times[name])
        print(f"{name:<16}{med[name]:>10.3f}{med[name] / med['floor']:>10.3f}{med[name] / med['floor-cl']:>12.3f}"
              f"{ra:>12}   {runs}")
    print("pgd (best point + success) costs one more forward than pgd-plain: "
          f"{med['pgd'] / (med['floor-cl'] * (1 + 1 / (3 * args.steps))):.3f}x floor-cl + 1 forward (forward ~ 1/3 pass)")


if __name__ == "__main__":
    main()
