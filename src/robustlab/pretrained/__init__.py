"""The model zoo: trained checkpoints shipped with the package, each with a model card, used offline.

An entry is a folder ``NAME/`` holding ``model.safetensors`` and ``model.json`` (an ordinary
robustlab checkpoint, :mod:`robustlab.storage.checkpoint`: weights only, no code) and
``card.json`` (:mod:`.cards`: data set, threat model, architecture, parameters, training command
and time, clean and robust accuracy, the gradient-masking checks). ``zoo:NAME`` is accepted
wherever a model is loaded: ``robustlab.load_model("zoo:NAME")``, ``robustlab evaluate --model
zoo:NAME``, :class:`robustlab.runs.sources.ModelSource`.

The entries live in the package folder ``robustlab/pretrained/checkpoints/`` (package data); the
environment variable ``ROBUSTLAB_ZOO`` (or the ``zoo`` argument) points at another folder instead,
for a zoo of your own or a test. Entries are added with ``scripts/zoo_add.py`` (:func:`.cards.add_to_zoo`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

ZOO_ENV = "ROBUSTLAB_ZOO"
PREFIX = "zoo:"
CARD_FILE = "card.json"
PACKAGE_ZOO = Path(__file__).resolve().parent / "checkpoints"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def zoo_dir(zoo: str | os.PathLike | None = None) -> Path:
    """The zoo folder: ``zoo`` when given, else ``$ROBUSTLAB_ZOO`` when set, else the package's."""
    if zoo is not None:
        return Path(zoo)
    env = os.environ.get(ZOO_ENV)
    return Path(env) if env else PACKAGE_ZOO


def is_zoo_ref(value: Any) -> bool:
    """True for a string ``zoo:NAME``."""
    return isinstance(value, str) and value.startswith(PREFIX)


def zoo_name(ref: str) -> str:
    """``NAME`` of ``zoo:NAME`` (or of a bare NAME), checked: lower-case letters, digits, ``._-``."""
    name = ref[len(PREFIX):] if is_zoo_ref(ref) else str(ref)
    if not NAME_RE.match(name):
        raise ValueError(f"bad zoo model name {name!r}: use lower-case letters, digits, '.', '_' and '-' "
                         "(e.g. zoo:fmnist-linf-0.1)")
    return name


def entry_names(zoo: str | os.PathLike | None = None) -> list[str]:
    """The names of the zoo's entries (folders with a model.json), sorted."""
    root = zoo_dir(zoo)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "model.json").is_file())


def entry_path(ref: str, zoo: str | os.PathLike | None = None) -> Path:
    """The folder of zoo entry ``zoo:NAME`` (or ``NAME``); a ValueError naming the zoo and its
    entries when there is no such entry."""
    name = zoo_name(ref)
    root = zoo_dir(zoo)
    path = root / name
    if not (path / "model.json").is_file():
        have = entry_names(zoo)
        listed = f"it has: {', '.join(have)}" if have else "it is empty"
        raise ValueError(f"no model {name!r} in the zoo {root} ({listed}; robustlab zoo list)")
    return path


def read_card(ref: str, zoo: str | os.PathLike | None = None) -> dict[str, Any]:
    """The card of entry ``zoo:NAME`` (its ``name`` set), or a ValueError when it is missing or not JSON."""
    path = entry_path(ref, zoo) / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"zoo entry {zoo_name(ref)!r} has no {CARD_FILE} ({path})") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable JSON card ({e})") from None
    if not isinstance(card, dict):
        raise ValueError(f"{path} is not a JSON object")
    return {**card, "name": zoo_name(ref)}


def list_cards(zoo: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every entry's card, by name; an entry whose card cannot be read is listed with ``error``."""
    out = []
    for name in entry_names(zoo):
        try:
            out.append(read_card(name, zoo))
        except ValueError as e:
            out.append({"name": name, "error": str(e)})
    return out


def load_zoo_model(ref: str, map_location: Any = "cpu", zoo: str | os.PathLike | None = None) -> Any:
    """The model of entry ``zoo:NAME`` in eval mode (what ``load_model("zoo:NAME")`` returns)."""
    from ..storage import load_model

    return load_model(entry_path(ref, zoo), map_location=map_location)


__all__ = ["CARD_FILE", "PACKAGE_ZOO", "PREFIX", "ZOO_ENV", "entry_names", "entry_path", "is_zoo_ref", "list_cards",
           "load_zoo_model", "read_card", "zoo_dir", "zoo_name"]
