"""CycleGAN (Zhu et al. 2017): unpaired translation between two image domains.

Two generators, ``G_ab: A -> B`` and ``G_ba: B -> A``, and two discriminators, ``D_a`` and
``D_b``, trained with least-squares adversarial losses plus the cycle-consistency loss
``lambda * (||G_ba(G_ab(a)) - a||_1 + ||G_ab(G_ba(b)) - b||_1)`` (and, optionally, the identity loss
``||G_ab(b) - b||_1 + ||G_ba(a) - a||_1``). The domains are two classes of one data set (e.g. Fashion-MNIST
sneakers and ankle boots), given by name or index; batches of A and B are drawn independently, so
no pairing is ever used. (The paper's history buffer of generated images is left out: these runs
are short.)

Metrics per epoch on test images of each domain: the **translated-domain accuracy** (how often a
classifier assigns ``G_ab(a)`` to class B and ``G_ba(b)`` to class A) and the **cycle reconstruction
error** (mean absolute pixel error of ``G_ba(G_ab(a))`` against ``a``, and of the B cycle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._torch import check_float, check_int, model_guard
from ..storage import atomic_write_json, ensure_writable_dir
from ..storage.layout import CONFIG_FILE, STATE_FILE
from ..storage.layout import CYCLEGAN_TRANSLATIONS as TRANSLATIONS_FILE
from ..training.loop import write_metrics
from .loop import epoch_order, run_epochs
from .losses import cycle_consistency_loss, discriminator_loss, generator_loss
from .models import build_network


def resolve_domain(domain: str | int, class_names: Sequence[str]) -> int:
    """A class index from a class name (case-insensitive; spaces, '-' and '_' ignored) or index."""
    names = [str(n) for n in class_names]
    text = str(domain).strip()
    if text.lstrip("-").isdigit():
        i = int(text)
        if not 0 <= i < len(names):
            raise ValueError(f"domain class index {i} is out of range: the data set has {len(names)} classes")
        return i

    def key(s: str) -> str:
        return "".join(ch for ch in s.lower() if ch.isalnum())

    for i, n in enumerate(names):
        if key(n) == key(text) or key(n.split("/")[0]) == key(text):
            return i
    raise ValueError(f"unknown domain class {domain!r}: expected an index or one of {', '.join(names)}")


@dataclass
class CycleGanConfig:
    """What decides a CycleGAN run (recorded in config.json and networks.json)."""

    epochs: int = 3
    batch_size: int = 8  # many small steps: 80% vs 0% translated sneakers after 1,500 images (batch 32)
    lr: float = 2e-4
    width: int = 16
    blocks: int = 2
    downsamplings: int = 2  # generators work at 1/4 resolution: a receptive field wide enough to change shapes
    cycle_weight: float = 10.0
    identity_weight: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("width", 1), ("blocks", 0), ("downsamplings", 1)):
            setattr(self, name, check_int(name, getattr(self, name), minimum))
        self.lr = check_float("lr", self.lr, 0.0, strict=True)
        self.cycle_weight = check_float("cycle_weight", self.cycle_weight, 0.0)
        self.identity_weight = check_float("identity_weight", self.identity_weight, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON (what the run's config.json records and resume compares)."""
        return asdict(self)


def build_cyclegan(config: CycleGanConfig, channels: int) -> dict[str, nn.Module]:
    """The four networks, each initialised from its own seed."""
    nets: dict[str, nn.Module] = {}
    for i, name in enumerate(("g_ab", "g_ba")):
        nets[name] = build_network("image-to-image", seed=config.seed + i, channels=channels, width=config.width,
                                   blocks=config.blocks, output="image", downsamplings=config.downsamplings)
    for i, name in enumerate(("d_a", "d_b")):
        nets[name] = build_network("patch-discriminator", seed=config.seed + 2 + i, channels=channels, width=config.width)
    return nets


def cycle_losses(g_ab: nn.Module, g_ba: nn.Module, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Translations and the cycle-consistency terms for one batch of each domain."""
    fake_b, fake_a = g_ab(a), g_ba(b)
    return {"fake_b": fake_b, "fake_a": fake_a,
            "cycle_a": cycle_consistency_loss(a, g_ba(fake_b)), "cycle_b": cycle_consistency_loss(b, g_ab(fake_a))}


@torch.no_grad()
def translation_metrics(g_ab: nn.Module, g_ba: nn.Module, classifier: nn.Module | None, a: torch.Tensor, b: torch.Tensor,
                        class_a: int, class_b: int, batch_size: int = 500) -> dict[str, float]:
    """Translated-domain accuracy (by ``classifier``) and cycle reconstruction error on test images."""
    out: dict[str, float] = {}
    with model_guard(g_ab), model_guard(g_ba):
        for name, x, fwd, back, cls in (("a_to_b", a, g_ab, g_ba, class_b), ("b_to_a", b, g_ba, g_ab, class_a)):
            hits, err = 0, 0.0
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size]
                t = fwd(xb)
                err += float((back(t) - xb).abs().mean()) * len(xb)
                if classifier is not None:
                    with model_guard(classifier):
                        hits += int((classifier(t).argmax(1) == cls).sum())
            out[f"cycle_error_{name[0]}"] = err / len(x)
            if classifier is not None:
                out[f"translated_accuracy_{name}"] = hits / len(x)
    if classifier is not None:
        total_hits = out["translated_accuracy_a_to_b"] * len(a) + out["translated_accuracy_b_to_a"] * len(b)
        out["translated_accuracy"] = total_hits / (len(a) + len(b))
    return out


def train_cyclegan(xa: torch.Tensor, xb: torch.Tensor, config: CycleGanConfig, run_dir: str | Path | None = None,
                   resume: bool = False, classifier: nn.Module | None = None, test: tuple[torch.Tensor, torch.Tensor] | None = None,
                   classes: tuple[int, int] = (0, 1), progress: bool = True,
                   metadata: dict[str, Any] | None = None) -> tuple[dict[str, nn.Module], list[dict[str, Any]]]:
    """Train a CycleGAN between image sets ``xa`` and ``xb`` (unpaired); ``test`` (test images of
    A and B) with ``classifier`` and ``classes`` gives the per-epoch metrics. Returns (networks, history)."""
    n = min(len(xa), len(xb))
    if n < config.batch_size:
        raise ValueError(f"each domain needs at least batch_size={config.batch_size} images, got {len(xa)} and {len(xb)}")
    dev = xa.device
    nets = {k: v.to(dev) for k, v in build_cyclegan(config, xa.shape[1]).items()}
    g_params = list(nets["g_ab"].parameters()) + list(nets["g_ba"].parameters())
    d_params = list(nets["d_a"].parameters()) + list(nets["d_b"].parameters())
    opts: dict[str, torch.optim.Optimizer] = {"generators": torch.optim.Adam(g_params, lr=config.lr, betas=(0.5, 0.999)),
                                              "discriminators": torch.optim.Adam(d_params, lr=config.lr, betas=(0.5, 0.999))}
    rng = torch.Generator().manual_seed(config.seed)
    bs = config.batch_size

    def step(epoch: int, b: int) -> dict[str, float]:
        # Independent orders for the two domains: unpaired batches.
        a = xa[epoch_order(len(xa), config.seed, epoch, dev, salt=1)[b * bs : (b + 1) * bs]]
        bb = xb[epoch_order(len(xb), config.seed, epoch, dev, salt=2)[b * bs : (b + 1) * bs]]
        out = cycle_losses(nets["g_ab"], nets["g_ba"], a, bb)
        adv = generator_loss(nets["d_b"](out["fake_b"]), "least-squares") + generator_loss(nets["d_a"](out["fake_a"]), "least-squares")
        cyc = out["cycle_a"] + out["cycle_b"]
        loss = adv + config.cycle_weight * cyc
        if config.identity_weight > 0:
            loss = loss + config.identity_weight * ((nets["g_ab"](bb) - bb).abs().mean() + (nets["g_ba"](a) - a).abs().mean())
        opts["generators"].zero_grad(set_to_none=True)
        loss.backward()
        opts["generators"].step()
        d_loss = (discriminator_loss(nets["d_a"](a), nets["d_a"](out["fake_a"].detach()), "least-squares")
                  + discriminator_loss(nets["d_b"](bb), nets["d_b"](out["fake_b"].detach()), "least-squares"))
        opts["discriminators"].zero_grad(set_to_none=True)
        d_loss.backward()
        opts["discriminators"].step()
        return {"g_adv_loss": float(adv.detach()), "cycle_loss": float(cyc.detach()), "d_loss": float(d_loss.detach())}

    def epoch_end(epoch: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        if test is None:
            return {}, {}
        ta, tb = test
        metrics = translation_metrics(nets["g_ab"], nets["g_ba"], classifier, ta, tb, *classes)
        with model_guard(nets["g_ab"]), model_guard(nets["g_ba"]), torch.no_grad():
            k = 8
            ab, ba = nets["g_ab"](ta[:k]), nets["g_ba"](tb[:k])
            tensors = {"a": ta[:k], "a_to_b": ab, "a_cycle": nets["g_ba"](ab), "b": tb[:k], "b_to_a": ba, "b_cycle": nets["g_ab"](ba)}
        return metrics, tensors

    history = run_epochs(kind="cyclegan", command="cyclegan train", run=Path(run_dir) if run_dir is not None else None,
                         networks=nets, optimizers=opts, rng=rng, config=config.to_dict(), epochs=config.epochs,
                         steps=n // bs, step=step, epoch_end=epoch_end, artifacts_file=TRANSLATIONS_FILE, resume=resume,
                         progress=progress, metadata={"classes": list(classes), **(metadata or {})})
    return nets, history


def cyclegan_train_run(run_dir: str | Path, domain_a: str | int, domain_b: str | int, config: CycleGanConfig | None = None,
                       dataset: str = "fashion-mnist", data_root: str | None = None, classifier: str | None = None,
                       train_limit: int | None = None, resume: bool = False, progress: bool = True,
                       device: str = "cpu") -> dict[str, Any]:
    """Train (or resume) a CycleGAN between two classes of ``dataset``; returns the metrics.
    ``train_limit``: at most this many training images per domain."""
    from ..data import load_dataset
    from ..runs.train import resolve_device
    from ..storage import load_model
    from ..storage.layout import read_json

    run, dev = Path(run_dir), resolve_device(device)
    if resume:
        saved = read_json(run / CONFIG_FILE)
        if not isinstance(saved, dict) or saved.get("kind") != "cyclegan" or not (run / STATE_FILE).is_file():
            raise ValueError(f"cannot resume: {run} holds no CycleGAN run")
        config = CycleGanConfig(**saved["config"])
        d = saved["data"]
        domain_a, domain_b, dataset, data_root, classifier, train_limit = (
            d[k] for k in ("domain_a", "domain_b", "dataset", "data_root", "classifier", "train_limit"))
    elif (run / STATE_FILE).exists():
        raise ValueError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
    config = config or CycleGanConfig()
    x, y, info = load_dataset(dataset, "train", root=data_root)
    xt, yt, _ = load_dataset(dataset, "test", root=data_root)
    ca, cb = resolve_domain(domain_a, info.class_names), resolve_domain(domain_b, info.class_names)
    if ca == cb:
        raise ValueError(f"the two domains must be different classes, got {domain_a!r} and {domain_b!r}")
    limit = None if train_limit is None else check_int("train_limit", train_limit, config.batch_size)
    xa, xb = x[y == ca][:limit], x[y == cb][:limit]
    model = load_model(classifier, map_location=dev) if classifier is not None else None
    data = {"domain_a": str(domain_a), "domain_b": str(domain_b), "dataset": dataset, "data_root": data_root,
            "classifier": classifier, "train_limit": train_limit}
    ensure_writable_dir(run)
    if not resume:
        atomic_write_json(run / CONFIG_FILE, {"kind": "cyclegan", "config": config.to_dict(), "data": data})
    _, history = train_cyclegan(xa.to(dev), xb.to(dev), config, run, resume, model,
                                (xt[yt == ca].to(dev), xt[yt == cb].to(dev)), (ca, cb), progress,
                                metadata={"dataset": info.to_dict(), "data": data,
                                          "class_names": [info.class_names[ca], info.class_names[cb]]})
    last = history[-1]
    metrics = {"kind": "cyclegan", "epochs": config.epochs, "domains": [info.class_names[ca], info.class_names[cb]],
               "train_seconds": round(sum(h["seconds"] for h in history), 2),
               **{k: v for k, v in last.items() if k.startswith(("translated_accuracy", "cycle_error"))}}
    write_metrics(run, metrics)
    return metrics
