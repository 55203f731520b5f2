"""Adversarial attacks, one family per module, all keeping the contract in :mod:`.base`.

``build_attack(name, threat, **options)`` builds a registered attack by name; :data:`ATTACKS`
is the registry (a plain dict, name -> class).
"""

from __future__ import annotations

import inspect
from typing import Any

from ..threat import ThreatModel
from .apgd import APGD
from .._torch import model_guard
from .base import Attack, AttackResult, Crafted, is_adversarial
from .cw import CW
from .fgsm import FGSM, FGV
from .losses import LOSSES, get_loss
from .mim import MIM
from .nes import NES
from .noise import Noise
from .pgd import PGD
from .square import Square
from .transfer import Transfer

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "fgv": FGV,
    "pgd": PGD,
    "mim": MIM,
    "cw": CW,
    "noise": Noise,
    "apgd": APGD,
    "square": Square,
    "nes": NES,
    "transfer": Transfer,
}


def attack_options(cls: type[Attack]) -> list[str] | None:
    """The keyword options an attack class accepts (None if it takes ``**kwargs``)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name != "threat" and p.kind is not inspect.Parameter.VAR_POSITIONAL]


def build_attack(name: str, threat: ThreatModel, **options: Any) -> Attack:
    """Build a registered attack by name (case-insensitive). Unknown names and unknown options
    are a ValueError (a typo must not silently give a weaker attack)."""
    key = str(name).strip().lower()
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}: expected one of {', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[key]
    allowed = attack_options(cls)
    if allowed is not None:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown option(s) for attack {key!r}: {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
            )
    return cls(threat, **options)


__all__ = [
    "APGD",
    "NES",
    "Square",
    "Transfer",
    "Crafted",
    "ATTACKS",
    "Attack",
    "AttackResult",
    "CW",
    "FGSM",
    "FGV",
    "LOSSES",
    "MIM",
    "Noise",
    "PGD",
    "attack_options",
    "build_attack",
    "get_loss",
    "is_adversarial",
    "model_guard",
]
