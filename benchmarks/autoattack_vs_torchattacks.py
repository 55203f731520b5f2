"""robustlab ``--suite autoattack`` against torchattacks' ``AutoAttack(version='standard')``.

Both run APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square (5,000 queries), cascading on
the points still robust, on the same model and the same first ``--n`` Fashion-MNIST test images,
with one thread (``torch.set_num_threads(1)``). Printed: clean accuracy, robust accuracy and wall
time of each, the time ratio robustlab / torchattacks, robustlab's per-attack breakdown, and the
per-sample disagreement (points one calls robust and the other breaks).

Note on budgets: torchattacks' ``AutoAttack`` builds its APGD, APGD-T and FAB with torchattacks'
default ``steps=10``, not the reference's 100 (Square does get 5,000 queries). ``--ta-steps 100``
sets the reference's 100 iterations on those three (the budget robustlab's suite uses), for a
like-for-like comparison; the default runs torchattacks as a user gets it.

The model: ``--run RUN`` (a robustlab run directory); without one, a small CNN is adversarially
trained (``robustlab train --defense pgd-at --eps EPS --train-limit 10000 --epochs 2``) into
``--train-out``. Runs alternate robustlab, torchattacks, robustlab, ... for ``--repeats`` rounds
(the machine may be shared: the median time is reported). On CPU robustlab's evaluation runs the
model in cache-sized chunks of images (and with BatchNorm folded) and judges every example with
the model itself (docs/evaluation.md, "Speed"); the last line says what it ran on.

    python benchmarks/autoattack_vs_torchattacks.py [--run RUN] [--n 1000] [--eps 0.1] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def get_run(args: argparse.Namespace) -> Path:
    """The run to attack: ``--run``, or a pgd-at run trained now into ``--train-out``."""
    if args.run:
        return Path(args.run)
    out = Path(args.train_out)
    if not (out / "model.safetensors").exists():
        cmd = [sys.executable, "-m", "robustlab", "train", "--defense", "pgd-at", "--eps", str(args.eps),
               "--train-limit", "10000", "--epochs", "2", "--monitor-attack", "none", "--seed", "0",
               "--device", "cpu", "--quiet", "--out", str(out)]
        print("training:", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
    return out


def run_robustlab(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                  batch_size: int) -> tuple[torch.Tensor, float, dict]:
    """Per-sample robustness under ``--suite autoattack``, its wall time and the result summary."""
    from robustlab import ThreatModel
    from robustlab.evaluation.evaluate import evaluate

    t0 = time.perf_counter()
    res = evaluate(model, x, y, ThreatModel(norm, eps), "autoattack", batch_size=batch_size)
    seconds = time.perf_counter() - t0
    return res.robust.bool(), seconds, res.to_dict(per_sample=False)


def run_torchattacks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                     batch_size: int, steps: int | None) -> tuple[torch.Tensor, float]:
    """Per-sample robustness under torchattacks' AutoAttack standard and its wall time."""
    import torchattacks

    atk = torchattacks.AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps,
                                  version="standard", n_classes=10, seed=0)
    if steps is not None:
        for sub in atk._autoattack.attacks:
            if hasattr(sub, "steps"):
                sub.steps = steps
    robust = []
    t0 = time.perf_counter()
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        adv = atk(xb, yb)
        with torch.no_grad():
            robust.append(model(adv).argmax(1) == yb)
    seconds = time.perf_counter() - t0
    return torch.cat(robust), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None, help="robustlab run directory with the model to attack")
    p.add_argument("--train-out", default="runs/bench-pgd-at", help="where to train a pgd-at model without --run")
    p.add_argument("--n", type=int, default=1000, help="first N test images")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--ta-batch-size", type=int, default=None,
                   help="torchattacks' batch (default: --batch-size); a small one shows what chunking gives it")
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds (median time reported)")
    p.add_argument("--ta-steps", type=int, default=None,
                   help="iterations of torchattacks' APGD/APGD-T/FAB (default: torchattacks' own, 10)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    from robustlab import load_model
    from robustlab.data import load_dataset

    run = get_run(args)
    model = load_model(run, map_location="cpu").eval()
    for q in model.parameters():
        q.requires_grad_(False)
    x, y, _ = load_dataset("fashion-mnist", "test")
    x, y = x[: args.n].contiguous(), y[: args.n].contiguous()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    print(f"model {run}, {len(x)} Fashion-MNIST test images, {args.norm} eps {args.eps:g}, "
          f"{torch.get_num_threads()} thread(s); clean accuracy {clean:.4f}", flush=True)

    rl_times, ta_times = [], []
    rl_robust = ta_robust = None
    summary: dict = {}
    ta_label = f"torchattacks AutoAttack standard ({'steps=' + str(args.ta_steps) if args.ta_steps else 'its default steps=10'})"
    if args.ta_batch_size:
        ta_label += f", batch {args.ta_batch_size}"
    for r in range(args.repeats):
        rl_robust, s, summary = run_robustlab(model, x, y, args.eps, args.norm, args.batch_size)
        rl_times.append(s)
        print(f"  round {r + 1}: robustlab --suite autoattack  robust {float(rl_robust.float().mean()):.4f}  {s:7.1f} s", flush=True)
        ta_robust, s = run_torchattacks(model, x, y, args.eps, args.norm, args.ta_batch_size or args.batch_size,
                                        args.ta_steps)
        ta_times.append(s)
        print(f"  round {r + 1}: {ta_label}  robust {float(ta_robust.float().mean()):.4f}  {s:7.1f} s", flush=True)
    assert rl_robust is not None and ta_robust is not None
    rl_t, ta_t = statistics.median(rl_times), statistics.median(ta_times)
    rl_acc, ta_acc = float(rl_robust.float().mean()), float(ta_robust.float().mean())
    print()
    print(f"{'':44s} {'clean':>7s} {'robust':>7s} {'seconds':>8s}")
    print(f"{'robustlab --suite autoattack':44s} {clean:7.4f} {rl_acc:7.4f} {rl_t:8.1f}")
    print(f"{ta_label:44s} {clean:7.4f} {ta_acc:7.4f} {ta_t:8.1f}")
    print(f"robust accuracy difference (robustlab - torchattacks): {100 * (rl_acc - ta_acc):+.1f} points "
          f"(target: at most +0.3)")
    print(f"time ratio robustlab / torchattacks: {rl_t / ta_t:.2f}x (target: at most 0.5x)")
    print(f"per sample: robust for robustlab only {int((rl_robust & ~ta_robust).sum())}, "
          f"for torchattacks only {int((ta_robust & ~rl_robust).sum())}")
    print("robustlab per attack (cumulative robust accuracy, seconds, settings):")
    for name, a in summary["attacks"].items():
        print(f"  {name:12s} {a['robust_accuracy']:.4f} {a['seconds']:8.1f} s  {a.get('settings', '')}")
    copies = {a.get("model_copy", "") for a in summary["attacks"].values()}
    print("robustlab ran the attacks on:", "; ".join(c or "the model itself" for c in sorted(copies)))


if __name__ == "__main__":
    main()
