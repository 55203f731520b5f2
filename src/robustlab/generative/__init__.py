"""The generative side: GANs (DCGAN, CycleGAN), their classifier-based metrics, code arithmetic,
and generative adversarial examples (AdvGAN, unrestricted examples).

One concept per module: :mod:`.losses` (the G/D game), :mod:`.models` (networks),
:mod:`.checkpoint` (run files), :mod:`.loop` (the shared epoch loop), :mod:`.train` (DCGAN),
:mod:`.metrics` (IS, FD), :mod:`.arithmetic`, :mod:`.cyclegan`, :mod:`.advgan` (trainer and the
:class:`AdvGAN` attack), :mod:`.unrestricted`.

Names are imported lazily: the attack registry imports :mod:`.advgan`, and importing everything
here would pull the training machinery (which imports the attacks) into that import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AdvGAN": "advgan", "AdvGanConfig": "advgan", "advgan_train_run": "advgan", "train_advgan": "advgan",
    "code_arithmetic": "arithmetic", "codes_by_class": "arithmetic",
    "load_network": "checkpoint", "read_networks_meta": "checkpoint",
    "CycleGanConfig": "cyclegan", "cyclegan_train_run": "cyclegan", "train_cyclegan": "cyclegan",
    "GAN_LOSSES": "losses", "discriminator_loss": "losses", "generator_loss": "losses",
    "GanJudge": "metrics", "class_histogram": "metrics", "frechet_distance": "metrics", "inception_score": "metrics",
    "build_network": "models",
    "GanConfig": "train", "gan_train_run": "train", "train_gan": "train",
    "unrestricted_search": "unrestricted",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
