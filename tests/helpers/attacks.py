"""Cheap settings for every attack in the registry, shared by the contract and property tests.

``VARIANTS[name]`` lists option sets for ``build_attack(name, threat, **options)``; the first is
the cheap default, the others reach code paths the default does not (early stop, restarts, other
losses, targeted variants). An attack added to :data:`robustlab.attacks.ATTACKS` without an entry
here fails the contract tests by name, so a new attack is checked without anyone being told.

Two placeholders stand for things only a test can build: :data:`SURROGATE` (a model fit for the
test's data, for attacks crafted on another model) and ``("attack", name, options)`` tuples (an
inner attack built on the same threat model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from torch import nn

from robustlab import ThreatModel
from robustlab.attacks import ATTACKS, Attack, attack_options, build_attack

SURROGATE = object()  # placeholder: a fresh surrogate model from the test


def _inner(name: str, **options: Any) -> tuple:
    return ("attack", name, options)


VARIANTS: dict[str, list[dict[str, Any]]] = {
    "fgsm": [{}, {"loss": "margin"}],
    "fgv": [{}],
    "noise": [{}],
    "pgd": [
        {"steps": 3},
        {"steps": 3, "restarts": 2, "early_stop": True},
        {"steps": 3, "restarts": 2, "track_best": False},
        {"steps": 2, "loss": "margin", "step_size": 0.7},
    ],
    "mim": [{"steps": 3, "random_start": True}, {"steps": 3, "restarts": 2, "early_stop": True}],
    "cw": [{"steps": 4, "binary_search_steps": 2}],
    "advgan": [{"generator": {"width": 4, "blocks": 1, "seed": 0}}],
    "fab": [{"steps": 3}, {"steps": 3, "restarts": 2, "targeted_classes": 2, "early_stop": True, "final_search": 0}],
    "apgd": [
        {"steps": 4},
        {"steps": 3, "restarts": 2, "early_stop": True},
        {"steps": 4, "loss": "dlr"},
        {"steps": 3, "loss": "dlr", "targeted_classes": 2},
        {"steps": 3, "targeted_classes": 3, "early_stop": True},
    ],
    "square": [{"queries": 12}, {"queries": 6, "restarts": 2, "p_init": 0.3, "loss": "ce"}],
    "sparse-rs": [{"queries": 12}, {"queries": 6, "restarts": 2, "p_init": 0.8, "loss": "ce"}],
    "nes": [{"steps": 3, "samples": 4}, {"steps": 2, "samples": 6, "sigma": 0.01, "loss": "ce"}],
    "transfer": [
        {"surrogate": SURROGATE, "attack": _inner("pgd", steps=2)},
        {"surrogate": SURROGATE, "attack": _inner("apgd", steps=3, early_stop=True)},
    ],
    "mse-penalty": [{"steps": 3}, {"steps": 3, "lam": 0.0, "lr": 0.05, "early_stop": True}],
    "fooling-image": [{"steps": 3}, {"steps": 3, "confidence": 0.3, "lr": 0.2}],
}


def variants(name: str) -> list[dict[str, Any]]:
    """The option sets for a registered attack; a clear failure if it has none."""
    if name not in VARIANTS:
        pytest.fail(
            f"attack {name!r} is registered in robustlab.attacks.ATTACKS but has no cheap settings in "
            "tests/helpers/attacks.py VARIANTS: add at least one option set (the first is the default)"
        )
    return VARIANTS[name]


def variant_ids() -> list[tuple[str, int]]:
    """(name, index) for every option set of every registered attack (for parametrize)."""
    return [(name, i) for name in sorted(ATTACKS) for i in range(len(VARIANTS.get(name, [{}])))]


def build(
    name: str,
    threat: ThreatModel,
    variant: int = 0,
    *,
    seed: int | None = 0,
    surrogate: Callable[[], nn.Module] | None = None,
) -> Attack:
    """``build_attack`` with the cheap option set ``variant`` (placeholders filled in)."""

    def fill(value: Any, seed: int | None) -> Any:
        if value is SURROGATE:
            if surrogate is None:
                pytest.fail(f"attack {name!r} needs a surrogate model: pass surrogate= to helpers.attacks.build")
            return surrogate()
        if isinstance(value, tuple) and value and value[0] == "attack":
            _, inner, opts = value
            return build_attack(inner, threat, **_with_seed(inner, {k: fill(v, seed) for k, v in opts.items()}, seed))
        return value

    options = {k: fill(v, seed) for k, v in variants(name)[variant].items()}
    return build_attack(name, threat, **_with_seed(name, options, seed))


def _with_seed(name: str, options: dict[str, Any], seed: int | None) -> dict[str, Any]:
    allowed = attack_options(ATTACKS[name])
    if seed is not None and "seed" not in options and (allowed is None or "seed" in allowed):
        options = {**options, "seed": seed}
    return options


def accepts_target(attack: Attack) -> bool:
    """Whether ``target=`` may be passed (APGD-T picks its own targets and refuses one)."""
    return not getattr(attack, "targeted_classes", 0)


def needs_target(attack: Attack) -> bool:
    """Whether every call must pass ``target=`` (an attack with no untargeted form: fooling images)."""
    return bool(getattr(attack, "needs_target", False))


def eps_ball_names() -> list[str]:
    """The registered attacks whose examples lie in the eps-ball (all but ``eps_ball = False`` ones,
    e.g. fooling images): the ones the ball checks of a registry-wide test apply to."""
    return sorted(name for name, cls in ATTACKS.items() if cls.eps_ball)


def models_held(attack: Attack) -> list[nn.Module]:
    """Models an attack holds itself (e.g. a transfer attack's surrogate), to check they stay as found."""
    return [v for v in vars(attack).values() if isinstance(v, nn.Module)]
