"""Training a DCGAN into a run directory: D/G updates, checkpoints, history, resume, SIGINT.

One pass over the training images per epoch; every batch updates the discriminator once and every
``d_steps``-th batch also updates the generator (on the same generated batch, judged by the
freshly updated D), so ``d_steps = K`` gives K discriminator updates per generator update ("keep D
up to date with G"). All randomness of the loop (batch order, codes, sampled labels) comes from one
``torch.Generator`` whose state is checkpointed with the networks and optimisers; metrics use their
own fixed codes. So a run killed at any batch and resumed ends bit-identical to an uninterrupted
one. After every epoch the networks, ``history.jsonl`` (losses, D's outputs, IS, FD, class
histogram) and a sample grid from fixed codes are written, then the training state (the commit
point), all atomically through :mod:`robustlab.storage`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .._torch import check_int
from ..storage import atomic_write_json, ensure_writable_dir
from ..storage.layout import CONFIG_FILE, STATE_FILE, read_json
from ..storage.layout import GAN_SAMPLES as SAMPLES_FILE
from ..training.loop import write_metrics
from .loop import epoch_order, run_epochs
from .losses import check_loss, check_real_label, discriminator_loss, generator_loss
from .metrics import GanJudge
from .models import build_network

GRID = 64


@dataclass
class GanConfig:
    """Everything that decides a GAN run's result (recorded in config.json and networks.json)."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    latent_dim: int = 64
    width: int = 32
    loss: str = "non-saturating"
    label_smoothing: float = 1.0  # the real label (one-sided); 1.0 = no smoothing
    d_steps: int = 1
    conditional: bool = False
    virtual_batchnorm: bool = False
    d_norm: str = "batch"
    seed: int = 0
    eval_samples: int = 2000
    progress: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        for name, minimum in (("epochs", 1), ("batch_size", 2), ("latent_dim", 1), ("width", 1), ("d_steps", 1),
                              ("eval_samples", 2)):
            setattr(self, name, check_int(name, getattr(self, name), minimum))
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.beta1 < 1:
            raise ValueError(f"beta1 must be in [0, 1), got {self.beta1}")
        self.loss = check_loss(self.loss)
        self.label_smoothing = check_real_label(self.label_smoothing)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON, without the progress flag (what config.json records and resume compares)."""
        d = asdict(self)
        d.pop("progress")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], progress: bool = True) -> GanConfig:
        """Settings read back from :meth:`to_dict`'s JSON; unknown keys are a ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GAN config keys: {sorted(unknown)}")
        return cls(**{**d, "progress": progress})


def build_gan(config: GanConfig, channels: int, image_size: int, num_classes: int) -> dict[str, torch.nn.Module]:
    """Generator and discriminator for ``config`` (initialised from its seed)."""
    k = num_classes if config.conditional else 0
    g = build_network("dcgan-generator", seed=config.seed, latent_dim=config.latent_dim, channels=channels,
                      image_size=image_size, width=config.width, num_classes=k,
                      norm="virtual" if config.virtual_batchnorm else "batch", ref_seed=config.seed)
    d = build_network("dcgan-discriminator", seed=config.seed + 1, channels=channels, image_size=image_size,
                      width=config.width, num_classes=k, norm=config.d_norm)
    return {"generator": g, "discriminator": d}


def fixed_codes(config: GanConfig, n: int, num_classes: int, device: torch.device,
                salt: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Codes (and balanced labels for a conditional GAN) from a seed of their own, so metrics and
    sample grids never touch the training random stream."""
    g = torch.Generator().manual_seed(config.seed * 7919 + salt)
    z = torch.randn(n, config.latent_dim, generator=g).to(device)
    y = (torch.arange(n) % num_classes).to(device) if config.conditional else None
    return z, y


@torch.no_grad()
def sample(generator: torch.nn.Module, z: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 500) -> torch.Tensor:
    """Generator images for codes ``z`` (labels ``y``), in eval mode; the mode is restored."""
    was = generator.training
    generator.eval()
    try:
        return torch.cat([generator(z[i : i + batch_size], None if y is None else y[i : i + batch_size])
                          for i in range(0, len(z), batch_size)])
    finally:
        generator.train(was)


@dataclass
class GanResult:
    """What a GAN run ends with: the per-epoch history and the trained networks."""
    history: list[dict[str, Any]]
    networks: dict[str, torch.nn.Module]
    real_inception_score: float | None = None


def train_gan(x_train: torch.Tensor, y_train: torch.Tensor, config: GanConfig, num_classes: int,
              run_dir: str | Path | None = None, resume: bool = False, judge: GanJudge | None = None,
              metadata: dict[str, Any] | None = None) -> GanResult:
    """Train a DCGAN on ``x_train`` (labels used only when ``config.conditional``); with a
    ``run_dir`` checkpoint every epoch, and ``resume=True`` continue from the saved state.
    ``judge`` adds IS, FD and the class histogram of ``config.eval_samples`` samples per epoch."""
    if len(x_train) < config.batch_size:
        raise ValueError(f"need at least batch_size={config.batch_size} training images, got {len(x_train)}")
    dev = x_train.device
    torch.manual_seed(config.seed)
    nets = {k: v.to(dev) for k, v in build_gan(config, x_train.shape[1], x_train.shape[-1], num_classes).items()}
    G, D = nets["generator"], nets["discriminator"]
    opts: dict[str, torch.optim.Optimizer] = {k: torch.optim.Adam(v.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
                                              for k, v in nets.items()}
    rng = torch.Generator().manual_seed(config.seed)
    grid_z, grid_y = fixed_codes(config, GRID, num_classes, dev, salt=2)
    eval_z, eval_y = fixed_codes(config, config.eval_samples, num_classes, dev, salt=1)
    bs = config.batch_size

    def step(epoch: int, b: int) -> dict[str, float]:
        idx = epoch_order(len(x_train), config.seed, epoch, dev)[b * bs : (b + 1) * bs]
        return _step(G, D, opts, x_train[idx], y_train[idx], config, num_classes, rng, update_g=(b + 1) % config.d_steps == 0)

    def epoch_end(epoch: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        metrics = {}
        if judge is not None:  # the real test images' score rides along: each history line is self-contained
            metrics = {**judge.score(sample(G, eval_z, eval_y)), "real_inception_score": judge.real_inception_score}
        return metrics, {f"epoch_{epoch + 1}": sample(G, grid_z, grid_y)}

    history = run_epochs(kind="gan", command="gan train", run=Path(run_dir) if run_dir is not None else None, networks=nets,
                         optimizers=opts, rng=rng, config=config.to_dict(), epochs=config.epochs,
                         steps=len(x_train) // bs,  # a last partial batch is dropped (BatchNorm on 1 image fails)
                         step=step, epoch_end=epoch_end, artifacts_file=SAMPLES_FILE, resume=resume,
                         progress=config.progress, metadata=metadata)
    return GanResult(history=history, networks=nets, real_inception_score=None if judge is None else judge.real_inception_score)


def _step(G, D, opts, xr: torch.Tensor, yr: torch.Tensor, config: GanConfig, num_classes: int, rng: torch.Generator,
          update_g: bool) -> dict[str, float]:
    """One discriminator update and, when ``update_g``, one generator update on the same fakes."""
    n = len(xr)
    z = torch.randn(n, config.latent_dim, generator=rng).to(xr.device)
    yf = torch.randint(0, num_classes, (n,), generator=rng).to(xr.device) if config.conditional else None
    y_real = yr if config.conditional else None
    fake = G(z, yf)
    real_logits, fake_logits = D(xr, y_real), D(fake.detach(), yf)
    d_loss = discriminator_loss(real_logits, fake_logits, config.loss, config.label_smoothing)
    opts["discriminator"].zero_grad(set_to_none=True)
    d_loss.backward()
    opts["discriminator"].step()
    logs = {"d_loss": float(d_loss.detach()), "d_real": float(torch.sigmoid(real_logits.detach()).mean()),
            "d_fake": float(torch.sigmoid(fake_logits.detach()).mean())}
    if update_g:
        g_loss = generator_loss(D(fake, yf), config.loss)
        opts["generator"].zero_grad(set_to_none=True)
        g_loss.backward()
        opts["generator"].step()
        logs["g_loss"] = float(g_loss.detach())
    return logs


# --- the run directory -----------------------------------------------------------------------
def gan_train_run(run_dir: str | Path, config: GanConfig | None = None, dataset: str = "fashion-mnist",
                  data_root: str | None = None, train_limit: int | None = None, classifier: str | None = None,
                  resume: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Train (or ``resume``) a GAN run in ``run_dir`` and write its metrics.json; returns the
    metrics. ``classifier`` (a robustlab classifier run) scores every epoch (IS, FD)."""
    from ..data import load_dataset
    from ..runs.train import resolve_device
    from ..storage import load_model

    run = Path(run_dir)
    dev = resolve_device(device)
    if resume:
        saved = read_json(run / CONFIG_FILE)
        if not isinstance(saved, dict) or saved.get("kind") != "gan" or not (run / STATE_FILE).is_file():
            raise ValueError(f"cannot resume: {run} holds no GAN run ({CONFIG_FILE} and {STATE_FILE} from robustlab gan train)")
        progress = True if config is None else config.progress
        config = GanConfig.from_dict(saved["config"], progress=progress)
        dataset, data_root, train_limit, classifier = (saved["data"][k] for k in ("dataset", "data_root", "train_limit", "classifier"))
    else:
        if (run / STATE_FILE).exists():
            raise ValueError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
        config = config or GanConfig()
    x, y, info = load_dataset(dataset, "train", root=data_root)
    if train_limit is not None:
        x, y = x[: check_int("train_limit", train_limit, config.batch_size)], y[:train_limit]
    judge = None
    if classifier is not None:
        x_test, _, _ = load_dataset(dataset, "test", root=data_root)
        judge = GanJudge(load_model(classifier, map_location=dev), x_test[: config.eval_samples].to(dev))
    ensure_writable_dir(run)
    data = {"dataset": dataset, "data_root": data_root, "train_limit": train_limit, "classifier": classifier}
    if not resume:
        atomic_write_json(run / CONFIG_FILE, {"kind": "gan", "config": config.to_dict(), "data": data})
    result = train_gan(x.to(dev), y.to(dev), config, info.num_classes, run, resume=resume, judge=judge,
                       metadata={"dataset": info.to_dict(), "data": data})
    last = result.history[-1]
    metrics = {"kind": "gan", "epochs": config.epochs, "train_seconds": round(sum(h["seconds"] for h in result.history), 2),
               "inception_score": last.get("inception_score"), "frechet_distance": last.get("frechet_distance"),
               "real_inception_score": result.real_inception_score, "class_histogram": last.get("class_histogram"),
               "classifier": classifier}
    write_metrics(run, metrics)
    return metrics
