"""Progress display: a tqdm bar on a terminal, plain periodic lines anywhere else.

tqdm redraws its bar with carriage returns, which turn a log file or a CI transcript into one
huge line; when stderr is not a terminal :func:`bar` prints a short line instead (at the start,
then at most every ``interval`` seconds, and at the end). ``enabled=False`` (``--quiet``) shows
nothing. Results never go through here: they are printed by the commands themselves.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

#: Seconds between two plain progress lines (when stderr is not a terminal).
INTERVAL = 30.0


def on_terminal() -> bool:
    """Whether stderr is an interactive terminal (where a redrawn bar makes sense)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class _Lines:
    """The subset of tqdm's interface the package uses, as periodic plain lines on stderr."""

    def __init__(self, iterable: Iterable[Any] | None, total: int | None, desc: str, unit: str, interval: float) -> None:
        self.iterable, self.desc, self.unit, self.interval = iterable, desc, unit, interval
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n = total, 0
        self.t0 = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False

    def _line(self, final: bool = False) -> None:
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        state = "done" if final else "at"
        print(f"{self.desc}: {state} {done} {self.unit}{pct}, {time.monotonic() - self.t0:.0f}s{extra}", file=sys.stderr, flush=True)
        self.last = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.n += k
        finished = self.total is not None and self.n >= self.total  # close() prints the last line
        if not finished and time.monotonic() - self.last >= self.interval:
            self._line()

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def close(self) -> None:
        if not self.closed and self.n:
            self._line(final=True)
        self.closed = True

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
        enabled: bool = True, interval: float | None = None) -> Any:
    """A progress display over ``iterable`` (or updated by hand with ``total``): tqdm on a terminal,
    plain lines every ``interval`` seconds (default :data:`INTERVAL`) otherwise, nothing when not
    ``enabled``."""
    if enabled and not on_terminal():
        return _Lines(iterable, total, desc, unit, INTERVAL if interval is None else interval)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, leave=False)


def echo(text: str) -> None:
    """Print a result line on stdout without breaking a live bar (tqdm.write on a terminal)."""
    if on_terminal():
        tqdm.write(text, file=sys.stdout)
    else:
        print(text, flush=True)
