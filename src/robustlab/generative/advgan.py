"""AdvGAN (Xiao et al. 2018, "Generating adversarial examples with adversarial networks").

A generator maps an image ``x`` to a perturbation ``delta = G(x)`` inside the eps-ball; it is
trained against a fixed target classifier ``f`` with

    L = w_adv * L_adv + w_gan * L_GAN + w_hinge * L_hinge

* ``L_adv``: the C&W margin ``max(Z_y(x + delta) - max_{i != y} Z_i(x + delta), -kappa)`` on ``f``'s logits;
* ``L_GAN``: a discriminator tells ``x`` from ``x + delta`` (least-squares GAN, as in the paper), so
  the perturbed images stay close to the data distribution;
* ``L_hinge``: ``E max(0, ||delta||_2 - c)``, a soft bound on the perturbation's L2 size.

This module is imported by the attack registry, so it imports the training machinery lazily.
The generator ends in a tanh scaled by eps (Linf: ``eps * tanh``; L2: the tanh map rescaled to L2
norm eps), so its output is always inside the ball; clipping to the bounds follows. At attack time
one forward pass per example crafts the perturbation: :class:`AdvGAN` is a robustlab
:class:`~robustlab.attacks.Attack` that loads a trained generator and keeps the attack contract
(ball, bounds, model untouched -- the target model is never even queried for gradients).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._torch import check_float, check_int, model_guard
from ..attacks.base import Attack, OptGen
from ..storage import atomic_write_json, ensure_writable_dir
from ..storage.layout import ADVGAN_EXAMPLES as EXAMPLES_FILE
from ..storage.layout import CONFIG_FILE, STATE_FILE
from ..threat import ThreatModel, canonical_norm
from .checkpoint import load_network
from .losses import discriminator_loss, generator_loss, margin_adversarial_loss, perturbation_hinge
from .models import build_network


def perturbation(generator: nn.Module, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """The generator's perturbation for ``x``, scaled into ``threat``'s eps-ball (Linf: eps * G(x);
    L2: G(x) rescaled to norm eps; L1: rescaled to L1 norm eps). Images whose sides the generator
    cannot take (not multiples of its downsampling factor, or too small) are edge-padded, and the result cropped."""
    f = int(getattr(generator, "factor", 1))
    h, w = x.shape[-2:]
    # multiples of f, and at least 2 f: instance normalisation needs more than one value per map
    pad_h, pad_w = max(-(-h // f) * f, 2 * f) - h, max(-(-w // f) * f, 2 * f) - w
    if pad_h or pad_w:
        d = generator(F.pad(x, (0, pad_w, 0, pad_h), mode="replicate"))[..., :h, :w]
    else:
        d = generator(x)
    if threat.norm == "linf":
        return threat.eps * d
    size = d.flatten(1).norm(p=2 if threat.norm == "l2" else 1, dim=1).clamp_min(1e-12)
    return threat.eps * d / size.view(-1, *([1] * (d.dim() - 1)))


def adversarial_images(generator: nn.Module, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """``x`` plus the generator's perturbation, clipped to the threat model's bounds."""
    return threat.clip_bounds(x + perturbation(generator, x, threat))


def build_perturbation_generator(channels: int = 1, width: int = 12, blocks: int = 2, seed: int = 0,
                                 downsamplings: int = 2) -> nn.Module:
    """An untrained AdvGAN generator (:class:`.models.ImageToImage` ending in tanh)."""
    return build_network("image-to-image", seed=seed, channels=channels, width=width, blocks=blocks, output="perturbation",
                         downsamplings=downsamplings)


@dataclass
class AdvGanConfig:
    """What decides an AdvGAN run (recorded in config.json and networks.json)."""

    eps: float = 0.1
    norm: str = "linf"
    epochs: int = 6  # width 12 on Fashion-MNIST at eps 0.1: 86.9, 89.1, 89.7, 90.2, 90.1, 90.4% success after epochs 1-6
    batch_size: int = 64
    lr: float = 1e-3
    # Small on purpose: one forward pass must cost far less than PGD-20's 20 forward+backward passes.
    # Measured on one CPU thread, 1,000 images: width 16 runs at 16x PGD-20's throughput, width 12 at
    # 21.6x-33.4x (90.4% success), width 8 faster still but it plateaued at 89.3% success in 4 epochs.
    width: int = 12
    blocks: int = 2  # at 1/4 resolution (two downsamplings): a wide receptive field for little compute
    downsamplings: int = 2
    adv_weight: float = 10.0
    gan_weight: float = 1.0
    hinge_weight: float = 1.0
    hinge_bound: float | None = None  # c; None: half the L2 size of a full Linf-eps perturbation
    kappa: float = 2.0  # margin past the decision boundary: 77% vs 66% success after one epoch on 10k images
    seed: int = 0
    monitor_n: int = 1000

    def __post_init__(self) -> None:
        if ThreatModel(canonical_norm(self.norm), self.eps).norm == "l0":  # validates norm and eps
            raise ValueError("AdvGAN does not support the l0 threat model: its generator's output is scaled to a "
                             "Linf, L2 or L1 budget and changes every pixel")
        for name, minimum in (("epochs", 1), ("batch_size", 2), ("width", 1), ("blocks", 0), ("downsamplings", 1),
                              ("monitor_n", 1)):
            setattr(self, name, check_int(name, getattr(self, name), minimum))
        for name in ("lr", "adv_weight", "gan_weight", "hinge_weight", "kappa"):
            setattr(self, name, check_float(name, getattr(self, name), 0.0, strict=(name == "lr")))

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON (what the run's config.json records and resume compares)."""
        return asdict(self)


def train_advgan(target: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, config: AdvGanConfig,
                 x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None, run_dir: str | Path | None = None,
                 resume: bool = False, progress: bool = True, metadata: dict[str, Any] | None = None) -> tuple[nn.Module, list[dict]]:
    """Train an AdvGAN generator against ``target`` (left exactly as found). Each epoch reports the
    success rate on the first ``monitor_n`` correctly classified test images. Returns (generator, history)."""
    from .loop import epoch_order, run_epochs  # not at import time: the attack registry imports this module
    threat = ThreatModel(canonical_norm(config.norm), config.eps)
    dev = x_train.device
    c, side = x_train.shape[1], x_train.shape[-1]
    G = build_perturbation_generator(c, config.width, config.blocks, config.seed, config.downsamplings).to(dev)
    D = build_network("dcgan-discriminator", seed=config.seed + 1, channels=c, image_size=side, width=16).to(dev)
    nets = {"generator": G, "discriminator": D}
    opts: dict[str, torch.optim.Optimizer] = {k: torch.optim.Adam(v.parameters(), lr=config.lr, betas=(0.5, 0.999))
                                              for k, v in nets.items()}
    rng = torch.Generator().manual_seed(config.seed)
    bound = config.hinge_bound if config.hinge_bound is not None else 0.5 * config.eps * math.sqrt(x_train[0].numel())
    bs = config.batch_size
    with model_guard(target, eval_mode=True):
        mon_x, mon_y = _monitor_set(target, x_test, y_test, config.monitor_n)

        def step(epoch: int, b: int) -> dict[str, float]:
            idx = epoch_order(len(x_train), config.seed, epoch, dev)[b * bs : (b + 1) * bs]
            x, y = x_train[idx], y_train[idx]
            x_adv = adversarial_images(G, x, threat)
            d_loss = discriminator_loss(D(x), D(x_adv.detach()), "least-squares")
            opts["discriminator"].zero_grad(set_to_none=True)
            d_loss.backward()
            opts["discriminator"].step()
            logits = target(x_adv)
            adv = margin_adversarial_loss(logits, y, kappa=config.kappa)
            gan = generator_loss(D(x_adv), "least-squares")
            hinge = perturbation_hinge(x_adv - x, bound)
            loss = config.adv_weight * adv + config.gan_weight * gan + config.hinge_weight * hinge
            opts["generator"].zero_grad(set_to_none=True)
            loss.backward()
            opts["generator"].step()
            return {"d_loss": float(d_loss.detach()), "adv_loss": float(adv.detach()), "gan_loss": float(gan.detach()),
                    "hinge_loss": float(hinge.detach()), "train_fooled": float((logits.argmax(1) != y).float().mean())}

        def epoch_end(epoch: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
            if mon_x is None:
                return {}, {}
            with model_guard(G, eval_mode=True), torch.no_grad():
                xa = torch.cat([adversarial_images(G, mon_x[i : i + 500], threat) for i in range(0, len(mon_x), 500)])
                probs_a = torch.softmax(target(xa), 1)
                probs_c = torch.softmax(target(mon_x[:8]), 1)
            fooled = probs_a.argmax(1) != mon_y
            k = 8
            tensors = {"x": mon_x[:k], "x_adv": xa[:k], "y": mon_y[:k], "pred_clean": probs_c.argmax(1),
                       "conf_clean": probs_c.amax(1), "pred_adv": probs_a[:k].argmax(1), "conf_adv": probs_a[:k].amax(1)}
            return {"success_rate": float(fooled.float().mean()), "monitor_n": len(mon_y),
                    "mean_linf": float((xa - mon_x).flatten(1).abs().amax(1).mean()),
                    "mean_l2": float((xa - mon_x).flatten(1).norm(dim=1).mean())}, tensors

        history = run_epochs(kind="advgan", command="advgan train", run=Path(run_dir) if run_dir is not None else None,
                             networks=nets, optimizers=opts, rng=rng, config=config.to_dict(), epochs=config.epochs,
                             steps=len(x_train) // bs, step=step, epoch_end=epoch_end, artifacts_file=EXAMPLES_FILE,
                             resume=resume, progress=progress, metadata={"threat": threat.to_dict(), **(metadata or {})})
    return G.eval(), history


def _monitor_set(target: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None, n: int):
    """The first ``n`` test images the target classifies correctly (what success is measured on)."""
    if x is None or y is None:
        return None, None
    with torch.no_grad():
        pred = torch.cat([target(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    keep = (pred == y).nonzero().flatten()[:n]
    return x[keep], y[keep]


def advgan_train_run(run_dir: str | Path, target: str, config: AdvGanConfig | None = None, dataset: str = "fashion-mnist",
                     data_root: str | None = None, train_limit: int | None = None, resume: bool = False,
                     progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Train (or resume) an AdvGAN generator against the classifier run ``target``; returns metrics."""
    from ..data import load_dataset
    from ..runs.train import resolve_device
    from ..storage import load_model
    from ..storage.layout import read_json
    from ..training.loop import write_metrics

    run, dev = Path(run_dir), resolve_device(device)
    if resume:
        saved = read_json(run / CONFIG_FILE)
        if not isinstance(saved, dict) or saved.get("kind") != "advgan" or not (run / STATE_FILE).is_file():
            raise ValueError(f"cannot resume: {run} holds no AdvGAN run")
        config = AdvGanConfig(**saved["config"])
        target, dataset, data_root, train_limit = (saved["data"][k] for k in ("target", "dataset", "data_root", "train_limit"))
    elif (run / STATE_FILE).exists():
        raise ValueError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
    config = config or AdvGanConfig()
    model = load_model(target, map_location=dev)
    x, y, info = load_dataset(dataset, "train", root=data_root)
    if train_limit is not None:
        x, y = x[: check_int("train_limit", train_limit, config.batch_size)], y[:train_limit]
    xt, yt, _ = load_dataset(dataset, "test", root=data_root)
    data = {"target": str(target), "dataset": dataset, "data_root": data_root, "train_limit": train_limit}
    ensure_writable_dir(run)
    if not resume:
        atomic_write_json(run / CONFIG_FILE, {"kind": "advgan", "config": config.to_dict(), "data": data})
    _, history = train_advgan(model, x.to(dev), y.to(dev), config, xt.to(dev), yt.to(dev), run, resume, progress,
                              metadata={"dataset": info.to_dict(), "data": data})
    last = history[-1]
    metrics = {"kind": "advgan", "epochs": config.epochs, "eps": config.eps, "norm": config.norm, "target": str(target),
               "success_rate": last.get("success_rate"), "monitor_n": last.get("monitor_n"),
               "train_seconds": round(sum(h["seconds"] for h in history), 2)}
    write_metrics(run, metrics)
    return metrics


class AdvGAN(Attack):
    """The AdvGAN attack: one generator forward pass per example, ``x + G(x)`` scaled into the
    eps-ball and clipped to the bounds (the base class projects once more). The target model is
    queried only by the base class's bookkeeping and is left exactly as found; so is the generator.

    Args:
        threat: the perturbation set (the generator was trained for one eps; any eps works, the
            perturbation is rescaled to it).
        generator: a trained generator (``nn.Module`` on the inputs' device), the path of a
            ``robustlab advgan train`` run directory, or a dict of
            :func:`build_perturbation_generator` options (``width``, ``blocks``, ``seed``, ...): an
            *untrained* generator of that architecture built for each call's image channels, dtype
            and device -- for tests of the attack contract, not for attacking.
        batch_size: examples per generator forward pass.

    With ``target`` the examples are the same (the generator is untargeted); success is then
    measured as the prediction equalling the target.
    """

    name = "advgan"
    uses_gradients = False
    norms = ("linf", "l2", "l1")

    def __init__(self, threat: ThreatModel, generator: nn.Module | str | Path | dict[str, Any], *, batch_size: int = 1000,
                 eval_mode: bool = True, seed: int | None = None, early_stop: bool = False) -> None:
        super().__init__(threat, eval_mode=eval_mode, seed=seed, early_stop=early_stop)
        self.spec: dict[str, Any] | None = None
        net: nn.Module | None
        if isinstance(generator, dict):
            self.spec = dict(generator)
            build_perturbation_generator(**{**self.spec, "channels": self.spec.get("channels", 1)})  # options checked now
            net = None
        elif isinstance(generator, (str, Path)):
            net = load_network(generator, "generator")
        elif isinstance(generator, nn.Module):
            net = generator
        else:
            raise ValueError("generator must be an nn.Module, an AdvGAN run directory or a dict of options, "
                             f"got {type(generator).__name__}")
        self.generator = net
        self.batch_size = check_int("batch_size", batch_size, 1)

    def _generator_for(self, x: torch.Tensor) -> nn.Module:
        if self.generator is None:
            assert self.spec is not None
            return build_perturbation_generator(**{**self.spec, "channels": x.shape[1]}).to(device=x.device, dtype=x.dtype)
        p = next(self.generator.parameters())
        if p.device != x.device:
            raise ValueError(f"the AdvGAN generator is on {p.device}, the inputs on {x.device}: move one of them")
        first = next(m for m in self.generator.modules() if isinstance(m, nn.Conv2d))
        if first.in_channels != x.shape[1]:
            raise ValueError(f"the AdvGAN generator takes {first.in_channels}-channel images, got {x.shape[1]} channels")
        return self.generator

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                generator: OptGen) -> torch.Tensor:
        images = _as_images(x)  # (N, H, W) and (N, D) inputs as one-channel images
        gen = self._generator_for(images)
        dtype = next(gen.parameters()).dtype
        with model_guard(gen, eval_mode=True), torch.no_grad():
            delta = torch.cat([perturbation(gen, xb.to(dtype), self.threat) for xb in images.split(self.batch_size)])
        return x + delta.to(x.dtype).reshape(x.shape)


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """``x`` as an (N, C, H, W) batch: (N, H, W) gets one channel, (N, D) one channel and one row."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x[:, None]
    if x.dim() == 2:
        return x[:, None, None, :]
    raise ValueError(f"AdvGAN needs (N, C, H, W), (N, H, W) or (N, D) inputs, got shape {tuple(x.shape)}")
