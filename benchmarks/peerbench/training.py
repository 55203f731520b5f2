"""Adversarial-training throughput: images/s of a training step (objective + backward + Adam
step) for robustlab's ``pgd-at`` and ``fast-at`` objectives against the floor ``k x (input
forward+backward, eval mode) + 1 x (training forward+backward + optimizer step)``, with
torchattacks' PGD in the same loop as a reference, and (``--levers``) two crafting variants."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .common import floor_passes
from .levers import Wrapped


def load_objective(name: str, **options):
    from robustlab.training import build_objective

    return build_objective(name, **options)


def bench_training(model0: nn.Module, xt, yt, batch: int, steps: int, repeats: int, libs, log, levers: bool = False) -> dict:
    k = 10
    model = copy.deepcopy(model0)
    for p in model.parameters():
        p.requires_grad_(True)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(xt), (batch,), generator=g) for _ in range(steps)]

    def update(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def floor_step(kk: int):
        def step(xb, yb):
            model.eval()
            for p in params:
                p.requires_grad_(False)
            floor_passes(model, xb, yb, kk)
            for p in params:
                p.requires_grad_(True)
            model.train()
            update(F.cross_entropy(model(xb), yb))
        return step

    def objective_step(obj):
        def step(xb, yb):
            model.train()
            loss, _ = obj(model, xb, yb)
            update(loss)
        return step

    configs: dict[str, tuple[Callable, int]] = {}
    configs["floor (k=10)"] = (floor_step(k), k)
    try:
        configs["robustlab pgd-at (k=10)"] = (objective_step(load_objective("pgd-at", eps=0.1, steps=k)), k)
    except Exception as e:
        log(f"  pgd-at unavailable: {e}")
    if "torchattacks" in libs:
        import torchattacks as ta

        atk = ta.PGD(model, eps=0.1, alpha=0.025, steps=k, random_start=True)

        def ta_step(xb, yb):
            model.train()
            x_adv = atk(xb, yb)  # torchattacks switches to eval mode for the attack and back
            update(F.cross_entropy(model(x_adv), yb))

        configs["torchattacks PGD + step (k=10)"] = (ta_step, k)
    if levers and "robustlab pgd-at (k=10)" in configs:
        # L5: craft with a bare last-iterate loop (no best-point bookkeeping, no final scoring forward)
        obj5 = load_objective("pgd-at", eps=0.1, steps=k)
        t5 = obj5.threat

        def last_iterate(m, xb, yb):
            was = [(mm, mm.training) for mm in m.modules()]
            m.eval()
            for p in params:
                p.requires_grad_(False)
            xa = t5.random_start(xb)
            for _ in range(k):
                xa.requires_grad_(True)
                (gr,) = torch.autograd.grad(F.cross_entropy(m(xa), yb, reduction="sum"), xa)
                xa = t5.project(xa.detach() + 0.025 * gr.sign(), xb)
            for p in params:
                p.requires_grad_(True)
            for mm, w in was:
                mm.training = w
            return xa

        obj5.attack = last_iterate
        configs["L5 pgd-at, last-iterate crafting"] = (objective_step(obj5), k)
        # L3+L4: craft on channels-last inputs under bf16 autocast (the update stays float32)
        obj34 = load_objective("pgd-at", eps=0.1, steps=k)
        pgd34 = obj34.attack
        obj34.attack = lambda m, xb, yb: pgd34(Wrapped(m, True, True), xb, yb)
        configs["L3+L4 pgd-at, bf16 channels-last crafting"] = (objective_step(obj34), k)
    configs["floor (k=1)"] = (floor_step(1), 1)
    try:
        configs["robustlab fast-at (k=1)"] = (objective_step(load_objective("fast-at", eps=0.1)), 1)
    except Exception as e:
        log(f"  fast-at unavailable: {e}")
    state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    times: dict[str, list[float]] = {name: [] for name in configs}
    cpus: dict[str, list[float]] = {name: [] for name in configs}
    for fn, _ in configs.values():  # warm-up
        fn(xt[batches[0]][:16], yt[batches[0]][:16])
    for r in range(repeats):
        for name, (fn, _) in configs.items():
            model.load_state_dict(state)
            opt.load_state_dict(opt_state)
            torch.manual_seed(r)
            t0, c0 = time.perf_counter(), time.process_time()
            for b in batches:
                fn(xt[b], yt[b])
            times[name].append((time.perf_counter() - t0) / steps)
            cpus[name].append((time.process_time() - c0) / steps)
            log(f"  r{r} train {name:<32} {times[name][-1]:.3f} s/step")
    return {"times": times, "cpu": cpus, "k": {n: kk for n, (_, kk) in configs.items()}, "batch": batch, "steps": steps}
