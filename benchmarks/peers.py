"""robustlab against its peers: torchattacks, Foolbox and IBM ART, at equal settings.

For each of two models -- (a) the Fashion-MNIST small CNN, trained briefly here with
``robustlab.training.train`` (or ``--checkpoint RUN``), and (b) a CIFAR-style ResNet-18 of width
16 on 32x32x3 inputs (Fashion-MNIST padded to 32x32 and repeated over 3 channels, trained for a
few dozen steps) -- every library attacks *the same model object* on *the same batch* with the
same settings:

============  =====================================================================  =========
attack        settings                                                               floor k
============  =====================================================================  =========
fgsm          Linf eps 0.1                                                           1
pgd-linf      Linf eps 0.1, 10 steps of eps/4, uniform random start                  10
pgd-l2        L2 eps 1.0, 10 steps of eps/4, random start                            10
mim           Linf eps 0.1, 10 steps of eps/10, momentum (decay) 1.0, no random start 10
apgd-ce       Linf eps 0.1, 20 iterations, 1 restart, CE loss                        21
eval          fixed-budget robust accuracy: PGD-20 Linf eps 0.1 step eps/8           20
============  =====================================================================  =========

``eval`` is a whole evaluation: robustlab's ``evaluate(..., early_stop=True)`` against each
peer's plain equivalent (clean predictions, PGD-20 on the correctly classified samples only --
a filter that favours the peers -- then predictions on the result). ``robustlab-noES`` is the
same ``evaluate`` with ``early_stop=False``, for reference.

Timing: runs alternate across libraries (order rotated every repeat), each library's call is
timed end to end (ART's numpy conversion and its success-rate logging included: that is what
its users pay), the median of ``--repeats`` runs is reported. Robust accuracy is measured
outside the timed region, by one common forward pass on each library's output (mean over the
repeats), together with a check that the output lies in the eps-ball and the bounds.

Floor: ``k`` forward+backward passes w.r.t. the input on the same batch (model in eval mode,
parameters not requiring grad), i.e. what any attack with k gradient steps must at least spend;
measured every repeat as a loop of 10 passes, ``floor(k) = k * median(one pass)``.

Peak memory: one fresh subprocess per (model, library) loads the same weights and batch, warms
every attack up on 8 images, then for each attack: ``gc.collect()``, glibc ``malloc_trim(0)``
(freed heap pages go back to the OS), reads ``VmRSS``, resets the kernel's RSS high-water mark
(``echo 5 > /proc/self/clear_refs``), runs the attack once and reads ``VmHWM``. Reported:
``VmHWM - VmRSS`` = the extra resident memory the attack needed at its peak, in MiB (tracemalloc
cannot see torch's CPU allocations). Absolute peak RSS of the worker is in the JSON/verbose
output.

Adversarial training: images/s of a training step (objective + backward + Adam step, batch 128)
for ``build_objective("pgd-at", eps=0.1, steps=10)`` and ``build_objective("fast-at", eps=0.1)``
against the floor ``k x (input forward+backward, eval mode) + 1 x (training forward+backward +
optimizer step)`` with k = 10 and 1, plus torchattacks' PGD in the same loop as a reference.

    python benchmarks/peers.py [--quick] [--n 500] [--repeats 3] [--markdown OUT.md]

Threads: ``--threads 1`` by default. On a shared 2-core machine two intra-op threads contend
with every other job and a ResNet forward+backward becomes 5-10x slower and erratic; one
thread gives stable ratios. ``--threads 0`` keeps torch's default.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import io
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import robustlab
from robustlab import ThreatModel
from robustlab.attacks import FGSM, MIM, PGD
from robustlab.evaluation.evaluate import evaluate
from robustlab.models.zoo import build_model

try:  # APGD may not be registered in robustlab.attacks yet
    from robustlab.attacks.apgd import APGD as RL_APGD
except ImportError:  # pragma: no cover
    RL_APGD = None

warnings.filterwarnings("ignore")
logging.getLogger("art").setLevel(logging.ERROR)

PEERS = ("torchattacks", "foolbox", "art")
LIBS = ("robustlab",) + PEERS


# ------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    key: str
    label: str
    norm: str
    eps: float
    steps: int = 1
    step: float = 0.0
    random_start: bool = False
    k: int = 1  # forward+backward passes of the floor

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, self.eps)


SPECS = (
    Spec("fgsm", "FGSM Linf", "linf", 0.1, k=1),
    Spec("pgd-linf", "PGD-10 Linf", "linf", 0.1, 10, 0.025, True, k=10),
    Spec("pgd-l2", "PGD-10 L2", "l2", 1.0, 10, 0.25, True, k=10),
    Spec("mim", "MIM-10 Linf", "linf", 0.1, 10, 0.01, False, k=10),
    Spec("apgd-ce", "APGD-CE-20 Linf", "linf", 0.1, 20, 0.2, True, k=21),
    Spec("eval", "eval: PGD-20 fixed budget", "linf", 0.1, 20, 0.0125, True, k=20),
)


def available_peers() -> dict[str, str]:
    """Importable peer libraries -> version (or the reason they are missing)."""
    out = {}
    for name, mod in (("torchattacks", "torchattacks"), ("foolbox", "foolbox"), ("art", "art")):
        try:
            m = __import__(mod)
            out[name] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001 - e.g. a library that needs torchvision
            out[name] = f"unavailable: {type(e).__name__}: {e}"
    return out


# ------------------------------------------------------------------------------------------
# attack adapters: fn(x, y) -> x_adv  (for "eval": fn(x, y) -> robust accuracy)
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def _peer_eval(model: nn.Module, attack: Callable, x: torch.Tensor, y: torch.Tensor) -> float:
    """A peer's fixed-budget evaluation: attack only the correctly classified samples."""
    idx = (_predict(model, x) == y).nonzero().squeeze(1)
    if idx.numel() == 0:
        return 0.0
    out = attack(x[idx], y[idx])
    if isinstance(out, tuple):  # foolbox hands back its own success flags
        robust = int((~out[1]).sum())
    else:
        robust = int((_predict(model, out) == y[idx]).sum())
    return robust / len(x)


def build_robustlab(spec: Spec, model: nn.Module, shape, n: int, early_stop: bool = True):
    t = spec.threat
    if spec.key == "fgsm":
        a = FGSM(t)
    elif spec.key in ("pgd-linf", "pgd-l2"):
        a = PGD(t, steps=spec.steps, step_size=spec.step, random_start=True)
    elif spec.key == "mim":
        a = MIM(t, steps=spec.steps, step_size=spec.step, decay=1.0, random_start=False)
    elif spec.key == "apgd-ce":
        if RL_APGD is None:
            return None
        a = RL_APGD(t, steps=spec.steps, restarts=1, loss="ce")
    elif spec.key == "eval":
        pgd = PGD(t, steps=spec.steps, step_size=spec.step, random_start=True)
        return lambda x, y: evaluate(model, x, y, t, [pgd], batch_size=len(x), early_stop=early_stop).robust_accuracy
    else:
        return None
    return lambda x, y: a(model, x, y)


def build_torchattacks(spec: Spec, model: nn.Module, shape, n: int):
    import torchattacks as ta

    if spec.key == "fgsm":
        a = ta.FGSM(model, eps=spec.eps)
    elif spec.key in ("pgd-linf", "eval"):
        a = ta.PGD(model, eps=spec.eps, alpha=spec.step, steps=spec.steps, random_start=True)
    elif spec.key == "pgd-l2":
        a = ta.PGDL2(model, eps=spec.eps, alpha=spec.step, steps=spec.steps, random_start=True)
    elif spec.key == "mim":
        a = ta.MIFGSM(model, eps=spec.eps, alpha=spec.step, steps=spec.steps, decay=1.0)
    elif spec.key == "apgd-ce":
        a = ta.APGD(model, norm="Linf", eps=spec.eps, steps=spec.steps, n_restarts=1, loss="ce", seed=0)
    else:
        return None
    if spec.key == "eval":
        return lambda x, y: _peer_eval(model, a, x, y)
    return lambda x, y: a(x, y)


def build_foolbox(spec: Spec, model: nn.Module, shape, n: int):
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device="cpu")
    if spec.key == "fgsm":
        a = fb.attacks.FGSM()
    elif spec.key in ("pgd-linf", "eval"):
        a = fb.attacks.LinfPGD(abs_stepsize=spec.step, steps=spec.steps, random_start=True)
    elif spec.key == "pgd-l2":
        a = fb.attacks.L2PGD(abs_stepsize=spec.step, steps=spec.steps, random_start=True)
    elif spec.key == "mim":
        a = fb.attacks.LinfMomentumIterativeFastGradientMethod(
            momentum=1.0, abs_stepsize=spec.step, steps=spec.steps, random_start=False
        )
    else:
        return None  # no APGD in foolbox 3

    def run(x, y):
        _, clipped, success = a(fmodel, x, y, epsilons=spec.eps)
        return clipped, success

    if spec.key == "eval":
        return lambda x, y: _peer_eval(model, run, x, y)
    return lambda x, y: run(x, y)[0]


def build_art(spec: Spec, model: nn.Module, shape, n: int):
    import numpy as np
    from art.attacks.evasion import (
        AutoProjectedGradientDescent,
        FastGradientMethod,
        MomentumIterativeMethod,
        ProjectedGradientDescentPyTorch,
    )
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(shape), nb_classes=10,
        clip_values=(0.0, 1.0), device_type="cpu",
    )
    norm = np.inf if spec.norm == "linf" else 2
    if spec.key == "fgsm":
        a = FastGradientMethod(clf, norm=norm, eps=spec.eps, batch_size=n)
    elif spec.key in ("pgd-linf", "pgd-l2", "eval"):
        a = ProjectedGradientDescentPyTorch(
            clf, norm=norm, eps=spec.eps, eps_step=spec.step, max_iter=spec.steps, num_random_init=1,
            batch_size=n, verbose=False,
        )
    elif spec.key == "mim":
        a = MomentumIterativeMethod(
            clf, norm=norm, eps=spec.eps, eps_step=spec.step, decay=1.0, max_iter=spec.steps, batch_size=n,
            verbose=False,
        )
    elif spec.key == "apgd-ce":
        a = AutoProjectedGradientDescent(
            clf, norm=norm, eps=spec.eps, eps_step=2 * spec.eps, max_iter=spec.steps, nb_random_init=1,
            batch_size=n, loss_type=None, verbose=False,
        )
    else:
        return None

    def run(x, y):
        return torch.from_numpy(a.generate(x.numpy(), y.numpy()))

    if spec.key == "eval":
        return lambda x, y: _peer_eval(model, run, x, y)
    return run


BUILDERS = {
    "robustlab": build_robustlab,
    "robustlab-noES": lambda s, m, sh, n: build_robustlab(s, m, sh, n, early_stop=False) if s.key == "eval" else None,
    "torchattacks": build_torchattacks,
    "foolbox": build_foolbox,
    "art": build_art,
}


# ------------------------------------------------------------------------------------------
# speed levers (--levers): proposed changes to robustlab, measured by monkeypatch / wrapper
# ------------------------------------------------------------------------------------------
class Wrapped(nn.Module):
    """What the proposed ``precision="bf16"`` / channels-last option of the attacks would do in
    ``Attack._loss_and_grad`` (and APGD's local ``loss_and_grad``): feed channels-last inputs
    and run the forward under CPU bf16 autocast; logits come back as float32."""

    def __init__(self, model: nn.Module, channels_last: bool, bf16: bool) -> None:
        super().__init__()
        self.inner, self.cl, self.bf16 = model, channels_last, bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cl and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.inner(x)
        return out.float()


def lean_call(attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Attack.run`` minus the success forward and the distance (proposed for ``__call__``,
    which discards both): a local copy of robustlab/attacks/base.py ``Attack.run``."""
    from robustlab.attacks.base import Crafted, model_guard
    from robustlab.validation import check_images, check_labels, check_logits, check_same_device

    check_images(x, attack.threat)
    check_same_device(model, x=x, y=y)
    x0 = x.detach().clone()
    with model_guard(model, attack.eval_mode):
        with torch.no_grad():
            logits = check_logits(model(x0[:1]), 1)
        check_labels(y, x0.shape[0], logits.shape[1], "y")
        out = attack._attack(model, x0, y, None, attack._generator(x0.device))
        x_adv = out.x_adv if isinstance(out, Crafted) else (out[0] if isinstance(out, tuple) else out)
        return attack.threat.project(x_adv.detach(), x0)


def _rl_attack(spec: Spec, early_stop: bool):
    t = spec.threat
    if spec.key == "fgsm":
        return FGSM(t)
    if spec.key in ("pgd-linf", "pgd-l2"):
        return PGD(t, steps=spec.steps, step_size=spec.step, random_start=True, early_stop=early_stop)
    if spec.key == "mim":
        return MIM(t, steps=spec.steps, step_size=spec.step, decay=1.0, random_start=False, early_stop=early_stop)
    if spec.key == "apgd-ce" and RL_APGD is not None:
        return RL_APGD(t, steps=spec.steps, restarts=1, loss="ce", early_stop=early_stop)
    return None


def build_lever(early_stop: bool = False, cl: bool = False, bf16: bool = False, lean: bool = False):
    """A robustlab variant. With bf16 the timed call ends with one float32 forward on the result:
    the proposed design re-scores success in float32, so no claim rests on bf16 logits."""

    def build(spec: Spec, model: nn.Module, shape, n: int):
        target = Wrapped(model, cl, bf16) if (cl or bf16) else model
        if spec.key == "eval":
            if not (early_stop and (cl or bf16)):
                return None
            pgd = PGD(spec.threat, steps=spec.steps, step_size=spec.step, random_start=True, early_stop=True)

            def ev(x, y):  # evaluate() with the attack on the wrapped model, success in float32
                idx = (_predict(model, x) == y).nonzero().squeeze(1)
                if idx.numel() == 0:
                    return 0.0
                x_adv = pgd.run(target, x[idx], y[idx]).x_adv
                return int((_predict(model, x_adv) == y[idx]).sum()) / len(x)

            return ev
        a = _rl_attack(spec, early_stop)
        if a is None or (spec.key == "fgsm" and early_stop) or (lean and spec.key != "fgsm"):
            return None
        call = (lambda x, y: lean_call(a, target, x, y)) if lean else (lambda x, y: a(target, x, y))
        if not bf16:
            return call

        def rescored(x, y):
            x_adv = call(x, y)
            _predict(model, x_adv)  # the float32 success check of the proposed design
            return x_adv

        return rescored

    return build


def build_all_levers(spec: Spec, model: nn.Module, shape, n: int):
    """L1-L4 together: lean call + channels-last + bf16 for FGSM, early stop + channels-last +
    bf16 for the iterative attacks and the evaluation."""
    if spec.key == "fgsm":
        return build_lever(cl=True, bf16=True, lean=True)(spec, model, shape, n)
    return build_lever(early_stop=True, cl=True, bf16=True)(spec, model, shape, n)


LEVERS = {
    "robustlab": build_robustlab,
    "torchattacks": build_torchattacks,
    "L1 lean __call__": build_lever(lean=True),
    "L2 early stop": build_lever(early_stop=True),
    "L3 channels-last": build_lever(cl=True),
    "L4 bf16 autocast": build_lever(bf16=True),
    "L1-4 together": build_all_levers,
}


# ------------------------------------------------------------------------------------------
# floor
# ------------------------------------------------------------------------------------------
def floor_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> None:
    x_adv = x.clone()
    for _ in range(k):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach()
    del grad


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ------------------------------------------------------------------------------------------
# models and data
# ------------------------------------------------------------------------------------------
def fmnist(split: str):
    x, y, _ = robustlab.load_dataset("fashion-mnist", split)
    return x, y


def to32x3(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1).contiguous()


def train_briefly(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int) -> str:
    """robustlab.training.train with the clean objective (a plain Adam loop if it cannot import)."""
    try:
        from robustlab.training import Clean, TrainConfig, train

        train(model, Clean(), (x, y), None, TrainConfig(epochs=epochs, batch_size=batch_size, progress=False, seed=0))
        how = "robustlab.training.train"
    except ImportError as e:  # another change in flight may break the import: still benchmark
        print(f"(robustlab.training unavailable: {e}; plain Adam loop instead)", file=sys.stderr)
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for _ in range(epochs):
            for i in range(0, len(x), batch_size):
                opt.zero_grad()
                F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size]).backward()
                opt.step()
        how = "plain Adam loop"
    return how


def make_cnn(args) -> tuple[nn.Module, str]:
    if args.checkpoint:
        return robustlab.load_model(args.checkpoint), f"small-cnn from {args.checkpoint}"
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, input_size=28)
    xt, yt = fmnist("train")
    m = args.cnn_train_images
    t0 = time.perf_counter()
    how = train_briefly(model, xt[:m], yt[:m], args.cnn_epochs, 128)
    return model, f"small-cnn, {args.cnn_epochs} epoch(s) on {m} Fashion-MNIST train images ({how}, {time.perf_counter() - t0:.0f} s)"


def make_resnet(args) -> tuple[nn.Module, str]:
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, input_size=32, width=args.resnet_width)
    m = args.resnet_train_steps * 64
    desc = f"resnet18 width {args.resnet_width}"
    if m <= 0:
        return model, desc + ", random init"
    xt, yt = fmnist("train")
    t0 = time.perf_counter()
    how = train_briefly(model, to32x3(xt[-m:]), yt[-m:], 1, 64)
    recalibrate_batchnorm(model, to32x3(xt[:1024]))
    return model, desc + (f", {args.resnet_train_steps} steps of 64 on Fashion-MNIST padded to 32x32x3 ({how}) + BatchNorm "
                          f"statistics re-estimated on 1024 images ({time.perf_counter() - t0:.0f} s)")


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """After a few dozen steps the running statistics lag far behind the weights (eval-mode
    accuracy near chance): replace them by exact averages over ``x``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative average
    model.train()
    for i in range(0, len(x), 256):
        model(x[i : i + 256])
    for b in bns:
        b.momentum = 0.1
    model.eval()


# ------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------
@dataclass
class Cell:
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # process CPU seconds (robust to other jobs' load)
    robust: list[float] = field(default_factory=list)
    in_ball: bool = True
    mem: list[float] = field(default_factory=list)  # extra resident MiB per run (in-process probe)
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")

    @property
    def acc(self) -> float:
        return statistics.fmean(self.robust) if self.robust else float("nan")


class MemProbe:
    """Extra resident memory of one call: gc + glibc ``malloc_trim(0)`` (freed heap pages go back
    to the OS), read ``VmRSS``, reset the kernel's high-water mark (``echo 5 >
    /proc/self/clear_refs``), run, read ``VmHWM``. Both steps sit outside the timed region."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL("libc.so.6")
        with open("/proc/self/clear_refs", "w") as f:  # raises where the kernel does not allow it
            f.write("5")

    def start(self) -> None:
        gc.collect()
        self.libc.malloc_trim(0)
        self.base = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def stop(self) -> float:
        return (_status_kib("VmHWM") - self.base) / 1024


def make_probe(mode: str):
    if mode != "inproc":
        return None
    try:
        return MemProbe()
    except OSError as e:
        print(f"(no peak-memory probe: {e})", file=sys.stderr)
        return None


def bench_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, libs: list[str], specs, repeats: int, log,
                probe: MemProbe | None = None, builders: dict | None = None) -> dict:
    builders = BUILDERS if builders is None else builders
    freeze(model)
    shape = tuple(x.shape[1:])
    n = len(x)
    fns: dict[tuple[str, str], Callable] = {}
    cells: dict[tuple[str, str], Cell] = {}
    for spec in specs:
        for lib in libs:
            try:
                fn = builders[lib](spec, model, shape, n)
            except Exception as e:  # noqa: BLE001
                cells[(spec.key, lib)] = Cell(error=f"{type(e).__name__}: {e}")
                continue
            if fn is None:
                continue
            fns[(spec.key, lib)] = fn
            cells[(spec.key, lib)] = Cell()
    # warm-up: every call once on 8 images, one full-size pass
    for key, fn in list(fns.items()):
        try:
            fn(x[:8], y[:8])
        except Exception as e:  # noqa: BLE001
            cells[key].error = f"{type(e).__name__}: {e}"
            del fns[key]
    floor_passes(model, x, y, 2)
    floor_unit: list[float] = []
    floor_cpu: list[float] = []
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        floor_passes(model, x, y, 10)
        floor_unit.append((time.perf_counter() - t0) / 10)
        floor_cpu.append((time.process_time() - c0) / 10)
        for si, spec in enumerate(specs):
            order = [lib for lib in libs if (spec.key, lib) in fns]
            order = order[r % max(len(order), 1):] + order[: r % max(len(order), 1)]
            for lib in order:
                torch.manual_seed(1000 * r + si)
                if probe:
                    probe.start()
                t0, c0 = time.perf_counter(), time.process_time()
                out = fns[(spec.key, lib)](x, y)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                cell = cells[(spec.key, lib)]
                cell.times.append(dt)
                cell.cpu.append(dc)
                if probe:
                    cell.mem.append(probe.stop())
                if spec.key == "eval":
                    cell.robust.append(float(out))
                else:
                    out = out.to(x.dtype)
                    cell.in_ball &= bool(spec.threat.contains(out, x, tol=1e-4).all())
                    cell.robust.append(float((_predict(model, out) == y).float().mean()))
                log(f"  r{r} {spec.key:<9} {lib:<15} {dt:7.3f} s  robust {cell.robust[-1]:.3f}")
    return {"cells": cells, "floor_unit": statistics.median(floor_unit), "floor_runs": floor_unit,
            "floor_cpu": statistics.median(floor_cpu)}


# ------------------------------------------------------------------------------------------
# peak memory, one subprocess per (model, library)
# ------------------------------------------------------------------------------------------
def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def memory_worker(spec_path: str) -> None:
    cfg = json.loads(Path(spec_path).read_text())
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    from safetensors.torch import load_file

    model = freeze(robustlab.load_model(cfg["model"]))
    data = load_file(cfg["data"])
    x, y = data["x"], data["y"]
    libc = ctypes.CDLL("libc.so.6")
    out = {}
    specs = [s for s in SPECS if s.key in cfg["specs"]]
    fns = {}
    for spec in specs:
        try:
            fn = BUILDERS[cfg["lib"]](spec, model, tuple(x.shape[1:]), len(x))
            if fn is not None:
                fn(x[:8], y[:8])
                fns[spec.key] = fn
        except Exception as e:  # noqa: BLE001
            out[spec.key] = {"error": f"{type(e).__name__}: {e}"}
    for key, fn in fns.items():
        gc.collect()
        libc.malloc_trim(0)
        base = _status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError as e:
            out[key] = {"error": f"cannot reset VmHWM: {e}"}
            continue
        torch.manual_seed(0)
        fn(x, y)
        peak = _status_kib("VmHWM")
        out[key] = {"extra_mib": (peak - base) / 1024, "peak_mib": peak / 1024, "base_mib": base / 1024}
    print("MEMORY-JSON " + json.dumps(out))


def measure_memory(model: nn.Module, x, y, libs, specs, threads: int, tmp: Path, tag: str, log) -> dict:
    robustlab.save_model(model, tmp / f"{tag}-model")
    from safetensors.torch import save_file

    save_file({"x": x.contiguous(), "y": y.contiguous()}, str(tmp / f"{tag}-data.safetensors"))
    results = {}
    for lib in libs:
        cfg = {"model": str(tmp / f"{tag}-model"), "data": str(tmp / f"{tag}-data.safetensors"), "lib": lib,
               "specs": [s.key for s in specs], "threads": threads}
        p = tmp / f"{tag}-{lib}.json"
        p.write_text(json.dumps(cfg))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--_memory-worker", str(p)], capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("MEMORY-JSON ")), None)
        if line is None:
            results[lib] = {"error": (proc.stderr or proc.stdout)[-300:]}
        else:
            results[lib] = json.loads(line[len("MEMORY-JSON "):])
        log(f"  memory {tag} {lib}: {time.perf_counter() - t0:.0f} s")
    return results


# ------------------------------------------------------------------------------------------
# adversarial training throughput
# ------------------------------------------------------------------------------------------
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
    except Exception as e:  # noqa: BLE001
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
    except Exception as e:  # noqa: BLE001
        log(f"  fast-at unavailable: {e}")
    state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    times: dict[str, list[float]] = {name: [] for name in configs}
    cpus: dict[str, list[float]] = {name: [] for name in configs}
    for name, (fn, _) in configs.items():  # warm-up
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


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------
def machine_info(threads: int, peers: dict[str, str]) -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    lines = [
        f"- CPU: {cpu}; {os.cpu_count()} logical cores; load average at start {load[0]:.2f}",
        f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s); Python {platform.python_version()}",
        f"- robustlab {robustlab.__version__}; "
        + "; ".join(f"{k} {v}" for k, v in peers.items()),
    ]
    return lines


def fmt_s(v: float) -> str:
    return "-" if v != v else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def _floor_x(c: Cell, spec: Spec, res: dict, cpu: bool) -> float:
    unit = res["floor_cpu"] if cpu else res["floor_unit"]
    return (c.cpu_median if cpu else c.median) / (spec.k * unit)


def model_tables(name: str, res: dict, specs, libs, mem: dict | None) -> list[str]:
    cells: dict = res["cells"]
    out = [f"### {name}", "", f"{res['desc']}; batch of {res['n']} images, clean accuracy {res['clean']:.3f}; "
           f"one forward+backward on the batch: {res['floor_unit'] * 1000:.1f} ms wall, {res['floor_cpu'] * 1000:.1f} ms CPU "
           f"(medians).", ""]
    out += ["| attack | library | wall s | wall runs | CPU s | robustlab / this (wall, CPU) | x floor (wall, CPU) "
            "| robust acc | in ball | peak extra RSS (MiB) |",
            "|---|---|---:|---|---:|---:|---:|---:|:---:|---:|"]
    for spec in specs:
        rl = cells.get((spec.key, "robustlab"))
        for lib in libs:
            c = cells.get((spec.key, lib))
            if c is None:
                continue
            if c.error:
                out.append(f"| {spec.label} | {lib} | failed | {c.error[:60]} | | | | | | |")
                continue
            ok = rl is not None and rl.times
            ratio = f"{rl.median / c.median:.2f}, {rl.cpu_median / c.cpu_median:.2f}" if ok else "-"
            m = (mem or {}).get(lib, {}).get(spec.key, {})
            if "extra_mib" in m:
                mem_s = f"{m['extra_mib']:.0f}"
            elif c.mem:
                mem_s = f"{statistics.median(c.mem):.0f}"
            else:
                mem_s = "n/a" if not m else "err"
            runs = " ".join(f"{t:.2f}" for t in c.times)
            out.append(
                f"| {spec.label} | {lib} | {fmt_s(c.median)} | {runs} | {fmt_s(c.cpu_median)} | {ratio} "
                f"| {_floor_x(c, spec, res, False):.2f}, {_floor_x(c, spec, res, True):.2f} "
                f"| {c.acc:.3f} | {'yes' if (c.in_ball or spec.key == 'eval') else 'NO'} | {mem_s} |"
            )
    out.append("")
    return out


def summary_table(all_res: dict, specs) -> list[str]:
    out = ["### Against the targets", "",
           "Targets: every attack <= 0.8x the fastest peer's time with robust accuracy <= peer + 0.5 points; "
           "fixed-budget evaluation with early stop >= 3x faster than every peer; attack overhead <= 1.05x the floor. "
           "Verdicts on wall-clock medians and, in brackets, on CPU-time medians (less sensitive to other jobs).",
           "",
           "| model | attack | robustlab wall s | fastest peer | peer wall s | robustlab / peer: wall (CPU) | "
           "robust acc robustlab / peer (pts) | robustlab x floor: wall (CPU) |",
           "|---|---|---:|---|---:|---|---|---|"]
    for mname, res in all_res.items():
        cells = res["cells"]
        for spec in specs:
            rl = cells.get((spec.key, "robustlab"))
            if rl is None or not rl.times:
                continue
            peers = [(lib, cells[(spec.key, lib)]) for lib in PEERS if (spec.key, lib) in cells and cells[(spec.key, lib)].times]
            fw, fc = _floor_x(rl, spec, res, False), _floor_x(rl, spec, res, True)
            if spec.key == "eval":
                fl = f"{fw:.2f} ({fc:.2f}), early stop"
            else:
                fl = f"{fw:.2f} {'PASS' if fw <= 1.05 else 'FAIL'} ({fc:.2f} {'PASS' if fc <= 1.05 else 'FAIL'})"
            if not peers:
                out.append(f"| {mname} | {spec.label} | {fmt_s(rl.median)} | none | | | | {fl} |")
                continue
            lib, best = min(peers, key=lambda p: p[1].median)
            rw, rc = rl.median / best.median, rl.cpu_median / best.cpu_median
            if spec.key == "eval":
                sw = min(c.median for _, c in peers) / rl.median
                sc = min(c.cpu_median for _, c in peers) / rl.cpu_median
                verdict = (f"{sw:.1f}x faster {'PASS' if sw >= 3 else 'FAIL'} "
                           f"({sc:.1f}x {'PASS' if sc >= 3 else 'FAIL'})")
            else:
                verdict = f"{rw:.2f} {'PASS' if rw <= 0.8 else 'FAIL'} ({rc:.2f} {'PASS' if rc <= 0.8 else 'FAIL'})"
            diff = 100 * (rl.acc - best.acc)
            acc_ok = "PASS" if diff <= 0.5 else "FAIL"
            out.append(f"| {mname} | {spec.label} | {fmt_s(rl.median)} | {lib} | {fmt_s(best.median)} | {verdict} | "
                       f"{rl.acc:.3f} / {best.acc:.3f} ({diff:+.1f}) {acc_ok} | {fl} |")
    out.append("")
    return out


def levers_table(all_res: dict, specs, variants) -> list[str]:
    out = ["### Levers against plain robustlab and torchattacks", "",
           "| model | attack | variant | wall s | CPU s | / robustlab: wall (CPU) | / torchattacks: wall (CPU) "
           "| x floor: wall (CPU) | robust acc (torchattacks) |",
           "|---|---|---|---:|---:|---|---|---|---:|"]
    for mname, res in all_res.items():
        cells = res["cells"]
        for spec in specs:
            base = cells.get((spec.key, "robustlab"))
            ta = cells.get((spec.key, "torchattacks"))
            for v in variants:
                c = cells.get((spec.key, v))
                if c is None or not c.times or v == "torchattacks":
                    continue
                r_rl = (f"{c.median / base.median:.2f} ({c.cpu_median / base.cpu_median:.2f})"
                        if base and base.times else "-")
                r_ta = f"{c.median / ta.median:.2f} ({c.cpu_median / ta.cpu_median:.2f})" if ta and ta.times else "-"
                ta_acc = f" ({ta.acc:.3f})" if ta and ta.times else ""
                out.append(f"| {mname} | {spec.label} | {v} | {fmt_s(c.median)} | {fmt_s(c.cpu_median)} | {r_rl} | {r_ta} | "
                           f"{_floor_x(c, spec, res, False):.2f} ({_floor_x(c, spec, res, True):.2f}) | {c.acc:.3f}{ta_acc} |")
    out.append("")
    return out


def training_table(name: str, tr: dict) -> list[str]:
    out = [f"### Adversarial training throughput, {name} (batch {tr['batch']}, {tr['steps']} step(s) per run, Adam)", "",
           "| configuration | wall s/step | images/s | x its floor: wall (CPU) |", "|---|---:|---:|---|"]
    med = {k: statistics.median(v) for k, v in tr["times"].items()}
    cpu = {k: statistics.median(v) for k, v in tr["cpu"].items()}
    for cfg, t in med.items():
        fk = f"floor (k={tr['k'][cfg]})"
        fw, fc = med.get(fk, float("nan")), cpu.get(fk, float("nan"))
        out.append(f"| {cfg} | {t:.3f} | {tr['batch'] / t:.0f} | {t / fw:.2f} ({cpu[cfg] / fc:.2f}) |")
    out.append("")
    return out


# ------------------------------------------------------------------------------------------
def update_readme(path: Path, body: str) -> None:
    """Swap the text between the peers markers of ``path`` for ``body`` (atomically)."""
    begin, end = "<!-- peers:begin -->", "<!-- peers:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small batches and short training (< 2 min)")
    ap.add_argument("--n", type=int, default=None, help="CNN batch (default 500; --quick 100)")
    ap.add_argument("--n-resnet", type=int, default=None, help="ResNet batch (default 64; --quick 32)")
    ap.add_argument("--resnet-width", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", default=None, help="write the results tables to this file")
    ap.add_argument("--readme", default=None,
                    help="replace the part of this file between <!-- peers:begin --> and <!-- peers:end --> "
                         "with the machine facts, the verdicts against the targets and the training table")
    ap.add_argument("--json", default=None, help="write raw timings to this file")
    ap.add_argument("--checkpoint", default=None, help="a small-cnn run to load instead of training one")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--libs", default=",".join(PEERS), help="peers to compare (comma separated)")
    ap.add_argument("--models", default="cnn,resnet")
    ap.add_argument("--memory", choices=("inproc", "fresh", "off"), default="inproc",
                    help="peak-memory probe: around every timed run (inproc, free), in one fresh subprocess per "
                         "(model, library) (fresh, costs one more run of everything), or off")
    ap.add_argument("--no-training", action="store_true", help="skip the adversarial-training throughput")
    ap.add_argument("--levers", action="store_true",
                    help="instead of the peer comparison: robustlab with each proposed speed lever (monkeypatch / "
                         "wrapper, nothing under src/ changes) next to plain robustlab and torchattacks")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--_memory-worker", dest="memory_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(args.memory_worker)
        return
    q = args.quick
    n_cnn = args.n or (64 if q else 500)
    n_rn = args.n_resnet or (16 if q else 64)
    args.cnn_epochs = 1 if q else 2
    args.cnn_train_images = 5000 if q else 20000
    args.resnet_train_steps = 15 if q else 60
    at_steps = 1 if q else 3
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        if args.verbose:
            print(msg, flush=True)

    peers = available_peers()
    wanted = [p.strip() for p in args.libs.split(",") if p.strip()]
    libs_ok = [p for p in wanted if p in peers and not str(peers[p]).startswith("unavailable")]
    for p in wanted:
        if p not in libs_ok:
            print(f"skipping {p}: {peers.get(p, 'unknown library')}", file=sys.stderr)
    libs = ["robustlab", "robustlab-noES"] + libs_ok if not q else ["robustlab"] + libs_ok
    builders = None
    if args.levers:
        builders = dict(LEVERS)
        if "torchattacks" not in libs_ok:
            del builders["torchattacks"]
        libs = list(builders)
    mem_libs = ["robustlab"] + libs_ok

    xtest, ytest = fmnist("test")
    all_res: dict[str, dict] = {}
    mems: dict[str, dict] = {}
    trains: dict[str, dict] = {}
    models = [m.strip() for m in args.models.split(",")]
    with tempfile.TemporaryDirectory(prefix="robustlab-peers-") as tmpd:
        tmp = Path(tmpd)
        for mname in models:
            if mname == "cnn":
                model, desc = make_cnn(args)
                x, y = xtest[:n_cnn].contiguous(), ytest[:n_cnn].contiguous()
                title = "(a) Fashion-MNIST small CNN"
            elif mname == "resnet":
                model, desc = make_resnet(args)
                x, y = to32x3(xtest[:n_rn]), ytest[:n_rn].contiguous()
                title = f"(b) ResNet-18 width {args.resnet_width}, 32x32x3"
            else:
                raise SystemExit(f"unknown model {mname!r}: cnn or resnet")
            freeze(model)
            clean = float((_predict(model, x) == y).float().mean())
            print(f"{title}: {desc}; clean accuracy {clean:.3f} on {len(x)} images "
                  f"[{time.perf_counter() - t_start:.0f} s]", flush=True)
            res = bench_model(model, x, y, libs, SPECS, args.repeats, log, make_probe(args.memory), builders)
            res.update(desc=desc, n=len(x), clean=clean)
            all_res[title] = res
            print(f"  timed [{time.perf_counter() - t_start:.0f} s]", flush=True)
            if args.memory == "fresh" and not args.levers:
                mems[title] = measure_memory(model, x, y, mem_libs, SPECS, args.threads, tmp, mname, log)
                print(f"  memory [{time.perf_counter() - t_start:.0f} s]", flush=True)
            if not args.no_training and mname == "cnn":
                xt, yt = fmnist("train")
                trains[title] = bench_training(model, xt, yt, 128, at_steps, args.repeats, libs_ok, log, args.levers)
                print(f"  training throughput [{time.perf_counter() - t_start:.0f} s]", flush=True)

    head = "## robustlab speed levers (measured by monkeypatch / wrapper)" if args.levers else "## robustlab vs torchattacks / Foolbox / ART"
    lines = [head, ""] + machine_info(torch.get_num_threads(), peers)
    lines += [f"- command: `python benchmarks/peers.py {' '.join(sys.argv[1:])}`; {args.repeats} repeats, "
              f"median reported; total {time.perf_counter() - t_start:.0f} s; load average at end {os.getloadavg()[0]:.2f}", ""]
    for title, res in all_res.items():
        lines += model_tables(title, res, SPECS, libs, mems.get(title))
    if args.levers:
        lines += levers_table(all_res, SPECS, libs)
    else:
        lines += summary_table(all_res, SPECS)
    for title, tr in trains.items():
        lines += training_table(title, tr)
    text = "\n".join(lines)
    print()
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.readme and not args.levers:
        short = machine_info(torch.get_num_threads(), peers)
        short += [f"- command: `python benchmarks/peers.py {' '.join(sys.argv[1:])}`; {args.repeats} repeats, "
                  f"median reported; full tables: `--markdown FILE`", ""]
        short += summary_table(all_res, SPECS)
        for title, tr in trains.items():
            short += training_table(title, tr)
        update_readme(Path(args.readme), "\n".join(short))
    if args.json:
        raw = {t: {"floor_unit": r["floor_unit"], "cells": {f"{k[0]}|{k[1]}": vars(c) for k, c in r["cells"].items()}}
               for t, r in all_res.items()}
        raw["memory"] = mems
        raw["training"] = {t: tr["times"] for t, tr in trains.items()}
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))


if __name__ == "__main__":
    main()
