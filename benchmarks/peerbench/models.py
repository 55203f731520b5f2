"""The two models every library attacks, and the Fashion-MNIST data they see: (a) the small CNN,
trained briefly (or loaded from ``--checkpoint RUN``), (b) a CIFAR-style ResNet-18 on
Fashion-MNIST padded to 32x32 and repeated over 3 channels, trained for a few dozen steps."""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import robustlab
from robustlab.models.zoo import build_model


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


def make_cnn(checkpoint: str | None, epochs: int, train_images: int) -> tuple[nn.Module, str]:
    if checkpoint:
        return robustlab.load_model(checkpoint), f"small-cnn from {checkpoint}"
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, input_size=28)
    xt, yt = fmnist("train")
    m = train_images
    t0 = time.perf_counter()
    how = train_briefly(model, xt[:m], yt[:m], epochs, 128)
    return model, f"small-cnn, {epochs} epoch(s) on {m} Fashion-MNIST train images ({how}, {time.perf_counter() - t0:.0f} s)"


def make_resnet(width: int, train_steps: int) -> tuple[nn.Module, str]:
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, input_size=32, width=width)
    m = train_steps * 64
    desc = f"resnet18 width {width}"
    if m <= 0:
        return model, desc + ", random init"
    xt, yt = fmnist("train")
    t0 = time.perf_counter()
    how = train_briefly(model, to32x3(xt[-m:]), yt[-m:], 1, 64)
    recalibrate_batchnorm(model, to32x3(xt[:1024]))
    return model, desc + (f", {train_steps} steps of 64 on Fashion-MNIST padded to 32x32x3 ({how}) + BatchNorm "
                          f"statistics re-estimated on 1024 images ({time.perf_counter() - t0:.0f} s)")


def make_case(name: str, xtest: torch.Tensor, ytest: torch.Tensor, *, n_cnn: int, n_resnet: int, quick: bool,
              checkpoint: str | None, resnet_width: int):
    """``(title, model, description, x, y)`` for ``--models`` entry ``name`` (cnn or resnet); the
    training is shorter with ``quick``."""
    if name == "cnn":
        model, desc = make_cnn(checkpoint, 1 if quick else 2, 5000 if quick else 20000)
        return "(a) Fashion-MNIST small CNN", model, desc, xtest[:n_cnn].contiguous(), ytest[:n_cnn].contiguous()
    if name == "resnet":
        model, desc = make_resnet(resnet_width, 15 if quick else 60)
        title = f"(b) ResNet-18 width {resnet_width}, 32x32x3"
        return title, model, desc, to32x3(xtest[:n_resnet]), ytest[:n_resnet].contiguous()
    raise SystemExit(f"unknown model {name!r}: cnn or resnet")


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
