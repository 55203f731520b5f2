"""Adversarial attacks, one family per module, all keeping the contract in :mod:`.base`.

``build_attack(name, threat, **options)`` builds a registered attack by name; :data:`ATTACKS`
is the registry (a plain dict, name -> class).
"""

from __future__ import annotations

from typing import Any

from .._torch import model_guard
from ..registry import check_options, keyword_options, lookup
from ..threat import ThreatModel
from .apgd import APGD
from .base import Attack, AttackResult, Crafted, is_adversarial, require_eps_ball
from .cw import CW
from .fab import FAB
from .fgsm import FGSM, FGV
from .fooling import FoolingImage
from .losses import LOSSES, get_loss
from .mim import MIM
from .mse_penalty import MSEPenalty
from .nes import NES
from .noise import Noise
from .pgd import PGD
from .sparse_rs import SparseRS
from .square import Square
from .transfer import Transfer

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "fgv": FGV,
    "pgd": PGD,
    "mim": MIM,
    "cw": CW,
    "fab": FAB,
    "noise": Noise,
    "apgd": APGD,
    "square": Square,
    "sparse-rs": SparseRS,
    "nes": NES,
    "transfer": Transfer,
    "mse-penalty": MSEPenalty,
    # not an eps-ball attack (eps_ball = False): `robustlab attack` runs it, evaluations refuse it
    "fooling-image": FoolingImage,
}

# A generator-based attack: its class lives with the generator networks it loads (generative/),
# which build on attacks.base; registered here, after every attack above is defined.
from ..generative.advgan import AdvGAN  # noqa: E402

ATTACKS["advgan"] = AdvGAN


def attack_options(cls: type[Attack]) -> list[str] | None:
    """The keyword options an attack class accepts (None if it takes ``**kwargs``)."""
    return keyword_options(cls, skip=("threat",))


def build_attack(name: str, threat: ThreatModel, **options: Any) -> Attack:
    """Build a registered attack by name (case-insensitive). Unknown names and unknown options
    are a ValueError (a typo must not silently give a weaker attack)."""
    key, cls = lookup(ATTACKS, name, "attack")
    check_options(cls, options, f"attack {key!r}", skip=("threat",))
    return cls(threat, **options)


__all__ = [
    "AdvGAN",
    "APGD",
    "NES",
    "SparseRS",
    "Square",
    "Transfer",
    "Crafted",
    "ATTACKS",
    "Attack",
    "AttackResult",
    "CW",
    "FAB",
    "FGSM",
    "FGV",
    "FoolingImage",
    "LOSSES",
    "MIM",
    "MSEPenalty",
    "Noise",
    "PGD",
    "attack_options",
    "build_attack",
    "get_loss",
    "is_adversarial",
    "model_guard",
    "require_eps_ball",
]
