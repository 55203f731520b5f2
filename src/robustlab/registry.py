"""Name registries (attacks, models, training objectives): the lookup by name and the check of
keyword options that every ``build_*`` function does.

A typo in a name or an option must be an error that lists what is allowed, never a silently
different attack, model or defense.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, kind: str, also: str = "") -> tuple[str, T]:
    """``(key, entry)`` for ``name`` (case-insensitive, surrounding spaces ignored), else a
    ValueError ``unknown <kind> <name>: expected one of <sorted keys><also>``."""
    key = str(name).strip().lower()
    if key not in registry:
        raise ValueError(f"unknown {kind} {name!r}: expected one of {', '.join(sorted(registry))}{also}")
    return key, registry[key]


def keyword_options(factory: Callable[..., Any], skip: Iterable[str] = ()) -> list[str] | None:
    """The keyword options ``factory`` (a class or a function) accepts, less ``skip``; None
    when it takes ``**kwargs`` (any option may be valid)."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    excluded = set(skip)
    return [p.name for p in params if p.name not in excluded and p.kind is not inspect.Parameter.VAR_POSITIONAL]


def required_options(factory: Callable[..., Any]) -> list[str]:
    """The parameters ``factory`` cannot do without (no default value)."""
    return [p.name for p in inspect.signature(factory).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def check_options(factory: Callable[..., Any], options: Iterable[str], what: str, skip: Iterable[str] = ()) -> None:
    """ValueError ``unknown option(s) for <what>: ...; allowed: ...`` when ``options`` names a
    keyword that ``factory`` does not accept (``skip``: parameters the caller fills itself)."""
    allowed = keyword_options(factory, skip)
    if allowed is None:
        return
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) for {what}: {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
