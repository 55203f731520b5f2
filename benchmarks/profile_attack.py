"""Where an attack's time goes: torch.profiler over robustlab's FGSM and PGD-10 (Linf, eps 0.1) on
the two benchmark models, operators grouped into the model's own compute (convolutions, matmuls,
pooling, activations, BatchNorm, forward and backward), memory traffic (zero fills and copies,
mostly inside max-pool's backward) and the attack's own work (loss, sign, step, projection,
random start; an upper bound: a ResNet's residual adds and the input normalisation's sub/div land
here too). The attack's share bounds what any attack library can save over another on the same
model: the rest is the forward+backward that every gradient attack pays.

Usage: python benchmarks/profile_attack.py [--n 500] [--n-resnet 64] [--threads 1]
(untrained weights: the operators and their cost do not depend on the weights)
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from robustlab import ThreatModel
from robustlab.attacks import FGSM, PGD
from robustlab.models.zoo import build_model

# The attack's own element-wise work (loss, sign, step, projection, random start); exact aten names.
ATTACK_OPS = {"sub", "sub_", "mul", "mul_", "add", "add_", "where", "clamp", "clamp_", "uniform_", "sign", "sign_",
              "_log_softmax", "_log_softmax_backward_data", "nll_loss_forward", "nll_loss_backward", "div", "div_",
              "linalg_vector_norm", "abs", "amax", "minimum", "maximum", "ne", "eq", "argmax", "any", "all"}
# Memory traffic: max-pool backward's zero fill and layout copies, mostly inside the model's backward.
MEMORY_OPS = {"copy_", "fill_", "zero_", "empty", "empty_like", "clone", "contiguous"}


def classify(name: str) -> str:
    n = name.removeprefix("aten::")
    if n in ATTACK_OPS:
        return "attack"
    if n in MEMORY_OPS:
        return "memory"
    return "model"  # convolutions, matmuls, pooling, activations, BatchNorm and their backward


def profile_attack(attack, model, x, y) -> dict[str, float]:
    attack(model, x[:8], y[:8])  # warm-up (layout conversion, allocator)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        attack(model, x, y)
    groups: dict[str, float] = defaultdict(float)
    top: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        if ev.key.startswith("aten::"):
            groups[classify(ev.key)] += ev.self_cpu_time_total
            top[ev.key] += ev.self_cpu_time_total
    total = sum(groups.values())
    out = {k: v / total for k, v in groups.items()}
    out["top"] = sorted(top.items(), key=lambda kv: -kv[1])[:6]  # type: ignore[assignment]
    out["total_ms"] = total / 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--n-resnet", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    threat = ThreatModel("linf", 0.1)
    models = {
        "small-cnn 28x28x1": (build_model("small-cnn", 10, 1).eval(), torch.rand(args.n, 1, 28, 28)),
        "resnet18 w16 32x32x3": (build_model("resnet18", 10, 3, width=16).eval(), torch.rand(args.n_resnet, 3, 32, 32)),
    }
    attacks = {"FGSM": FGSM(threat), "PGD-10": PGD(threat, steps=10, rel_step_size=0.25, seed=0)}
    print(f"{'model':<22} {'attack':<7} {'op ms':>8} {'model %':>8} {'memory %':>9} {'attack %':>9}  top operators (self CPU)")
    for mname, (model, x) in models.items():
        y = torch.randint(0, 10, (len(x),))
        for aname, attack in attacks.items():
            r = profile_attack(attack, model, x, y)
            tops = ", ".join(f"{k.removeprefix('aten::')} {100 * v / 1000 / r['total_ms']:.0f}%" for k, v in r["top"])
            print(f"{mname:<22} {aname:<7} {r['total_ms']:8.1f} {100 * r.get('model', 0):8.1f} "
                  f"{100 * r.get('memory', 0):9.1f} {100 * r.get('attack', 0):9.1f}  {tops}")


if __name__ == "__main__":
    main()
