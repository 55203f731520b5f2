"""The small HTML fragments every report section writes: escaped text, a 'missing' note and a
section of cards (one definition, so sections cannot drift apart in escaping or markup)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any


def escape(v: Any) -> str:
    """``v`` as escaped text (None as '')."""
    return html.escape("" if v is None else str(v), quote=True)


def missing(text: str) -> str:
    """A note that something could not be shown, and why."""
    return f'<p class="missing">{escape(text)}</p>'


def card_section(heading: str, cards: Sequence[str]) -> str:
    """``<h2>heading</h2>`` over a grid of the given cards; '' when there are none."""
    if not cards:
        return ""
    return f"<h2>{heading}</h2><div class=\"grid\">" + "".join(cards) + "</div>"
