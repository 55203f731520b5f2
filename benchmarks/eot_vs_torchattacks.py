"""EOT on a randomised model: robustlab's PGD, PGD with eot=20 and the autoattack-rand suite against
torchattacks' EOTPGD, on the same images.

The model: a small CNN (16/32 channels) behind Gaussian input noise (sd 0.3) drawn inside its
forward, in eval mode too (the issue's randomised defense), fast-adversarially trained (Wong et al.
2020) on Fashion-MNIST through the noise (so the noise is part of the defense, as in RSE-style
defenses). ``--model PATH`` loads a robustlab model or run directory (e.g. the demo's fast-AT
run) and puts the noise in front of it instead.

Every attack gets the same images and Linf eps. Their examples are judged two ways, with the same
``--judge-draws`` fresh noise draws for every attack (lower = stronger attack):

- **expected accuracy**: the noisy model's accuracy on the examples averaged over the draws (the
  accuracy of the deployed model, one draw per query), with its standard error over draws;
- **average-prediction robust accuracy**: a sample counts as robust when the prediction averaged
  over the draws is right at every example the attack tried on it -- how ``robustlab evaluate``
  judges an EOT attack (with 20 draws), and for a suite the per-sample worst case over its attacks.

=====================  ==========================================================================
pgd                    robustlab PGD, 50 steps of 2.5 eps / 50, random start, one draw per gradient
pgd-eot20              the same with eot=20
autoattack-rand        robustlab's suite: APGD-CE then APGD-DLR on the samples APGD-CE left
                       (100 steps, 1 restart, EOT 20 each, as AutoAttack's version='rand');
                       per sample the example of the first attack that broke it (by its own
                       EOT-averaged prediction), else APGD-CE's (the expected-loss maximiser;
                       ``--rand-fallback dlr`` takes APGD-DLR's instead)
torchattacks EOTPGD    eot_iter=20, 50 steps of alpha = 2.5 eps / 50, random start
=====================  ==========================================================================

Default run: 200 test images; the attacks cost about 6,000 forward+backward passes of 200 images
(autoattack-rand 4,000 of them). Measured on 2 CPU cores shared at load ~9: training 242 s, PGD
24 s, PGD eot=20 385 s, autoattack-rand 800 s -- far over 5 minutes there; use ``--n 50`` or a GPU
for a quick look. Usage:
    python benchmarks/eot_vs_torchattacks.py [--n 200] [--dataset fashion-mnist|digits] [--eps 0.1] [--sd 0.3] [--model PATH]
        [--device cpu|cuda] [--threads 2] [--seed 0] [--rand-fallback ce|dlr]   (needs torchattacks)
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from robustlab import ThreatModel
from robustlab.attacks import PGD
from robustlab.data import load_dataset
from robustlab.evaluation.suites import build_suite


class InputNoise(nn.Module):
    """``inner(x + sd * N(0, 1))``, random in eval mode too."""

    def __init__(self, inner: nn.Module, sd: float) -> None:
        super().__init__()
        self.inner, self.sd = inner, float(sd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + self.sd * torch.randn_like(x))


def fast_at_model(device: torch.device, eps: float, sd: float, train_limit: int, epochs: int,
                  dataset: str = "fashion-mnist") -> nn.Module:
    """The demo's recipe, shortened and narrower: small CNN behind input noise ``sd``, fast-AT at
    ``eps`` through the noise, one-cycle schedule. Returns the noisy model."""
    from robustlab.models import build_model
    from robustlab.training import TrainConfig, build_objective, train

    x, y, _ = load_dataset(dataset, "train")
    x, y = x[:train_limit].to(device), y[:train_limit].to(device)
    torch.manual_seed(0)
    model = InputNoise(build_model("small-cnn", 10, x.shape[1], channels=(16, 32), hidden=64,
                                       input_size=x.shape[-1]), sd).to(device)
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=3e-3, schedule="onecycle", seed=0, progress=False)
    train(model, build_objective("fast-at", eps=eps), (x, y), None, cfg)
    return model.eval()


def judged(model: nn.Module, y: torch.Tensor, draws: int, *examples: torch.Tensor) -> tuple[float, float, float]:
    """On ``examples[0]``: accuracy averaged over ``draws`` noise draws and its standard error over
    draws; and the fraction of samples whose prediction averaged over the same draws is right at
    every one of ``examples`` (the per-sample worst case of the average prediction)."""
    accs: list[float] = []
    mean_logits = []
    with torch.no_grad():
        for j, x_adv in enumerate(examples):  # examples[0] first: every row's draws then match
            total = torch.zeros(())
            for _ in range(draws):
                logits = model(x_adv)
                total = total + logits
                if j == 0:
                    accs.append(float((logits.argmax(1) == y).float().mean()))
            mean_logits.append(total)
    mean = sum(accs) / draws
    sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / max(draws - 1, 1))
    robust = torch.stack([m.argmax(1) == y for m in mean_logits]).all(0)
    return mean, sd / math.sqrt(draws), float(robust.float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="test images (default 200)")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default) or digits")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--sd", type=float, default=0.3, help="input-noise standard deviation")
    p.add_argument("--steps", type=int, default=50, help="PGD / EOTPGD steps")
    p.add_argument("--eot", type=int, default=20)
    p.add_argument("--judge-draws", type=int, default=50)
    p.add_argument("--model", default=None, help="a robustlab model file or run directory (default: train one)")
    p.add_argument("--train-limit", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rand-fallback", choices=("ce", "dlr"), default="ce",
                   help="autoattack-rand's example for samples neither attack broke (default ce)")
    args = p.parse_args()
    import torchattacks

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    t0 = time.perf_counter()
    if args.model:
        from robustlab import load_model

        model = InputNoise(load_model(args.model, map_location=dev), args.sd).eval()
        source = f"{args.model} + Gaussian input noise sd={args.sd:g} in forward"
    else:
        model = fast_at_model(dev, args.eps, args.sd, args.train_limit, args.epochs, args.dataset).eval()
        source = (f"small-cnn 16/32 behind Gaussian input noise sd={args.sd:g} in forward, fast-AT eps={args.eps:g} "
                  f"through the noise, {args.epochs} epochs on up to {args.train_limit} {args.dataset} training images")
    train_s = time.perf_counter() - t0
    x, y, _ = load_dataset(args.dataset, "test")
    x, y = x[: args.n].to(dev), y[: args.n].to(dev)
    threat = ThreatModel("linf", args.eps)
    step = 2.5 * args.eps / args.steps

    def pgd(eot: int):
        return lambda: PGD(threat, steps=args.steps, step_size=step, seed=args.seed, eot=eot)(model, x, y)

    def autoattack_rand() -> list[torch.Tensor]:
        ce, dlr = build_suite("autoattack-rand", threat)
        ce.early_stop = dlr.early_stop = True  # as evaluate() runs a suite (ignored under EOT)
        first = ce.run(model, x, y)
        x_adv, tried = first.x_adv.clone(), [first.x_adv]
        left = (~first.success).nonzero().flatten()
        if left.numel():
            second = dlr.run(model, x[left], y[left])
            use = second.success if args.rand_fallback == "ce" else torch.ones_like(second.success)
            x_adv[left[use]] = second.x_adv[use]
            dlr_examples = first.x_adv.clone()  # samples APGD-CE broke: only its example was tried
            dlr_examples[left] = second.x_adv
            tried.append(dlr_examples)
        return [x_adv, *tried]

    def eotpgd() -> torch.Tensor:
        atk = torchattacks.EOTPGD(model, eps=args.eps, alpha=step, steps=args.steps, eot_iter=args.eot,
                                  random_start=True)
        return atk(x, y)

    rows = [
        ("robustlab pgd", pgd(1)),
        (f"robustlab pgd eot={args.eot}", pgd(args.eot)),
        ("robustlab autoattack-rand", autoattack_rand),
        (f"torchattacks EOTPGD eot_iter={args.eot}", eotpgd),
    ]
    print(f"model: {source} ({train_s:.0f}s)")
    print(f"{len(y)} {args.dataset} test images, Linf eps={args.eps:g}; PGD/EOTPGD {args.steps} steps of {step:.4g}; "
          f"accuracy averaged over {args.judge_draws} noise draws; device {dev}, {args.threads} threads")
    torch.manual_seed(args.seed + 1000)
    clean, clean_se, clean_avg = judged(model, y, args.judge_draws, x)
    print(f"{'attack':<34} {'expected acc':>12} {'+-se':>6} {'avg-pred robust':>15} {'seconds':>8}")
    print(f"{'(clean)':<34} {100 * clean:>11.1f}% {100 * clean_se:>5.1f}  {100 * clean_avg:>14.1f}% {'':>8}")
    for name, make in rows:
        torch.manual_seed(args.seed)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = make()
        examples = out if isinstance(out, list) else [out]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        assert all(float((e - x).abs().max()) <= args.eps + 1e-6 for e in examples)
        torch.manual_seed(args.seed + 1000)  # the same judging draws for every attack
        acc, se, avg = judged(model, y, args.judge_draws, *examples)
        print(f"{name:<34} {100 * acc:>11.1f}% {100 * se:>5.1f}  {100 * avg:>14.1f}% {seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
