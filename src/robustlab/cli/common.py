"""The ``robustlab`` command line: train, attack, evaluate, demo, report, train-detector, noisy-student.

It parses options and prints; the work is in :mod:`robustlab.runs` (and the demo's, noisy
student's modules). Bad input ends with exit code 2 and one line naming the problem (no traceback).
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import click

from .. import __version__


def one_line_error(e: BaseException) -> None:
    """Print ``e`` as one line on stderr (no usage block, no traceback) and exit with code 2."""
    if isinstance(e, click.UsageError):
        msg = e.format_message()
        if e.ctx is not None:
            msg += f" (see '{e.ctx.command_path} -h')"
    elif isinstance(e, OSError) and e.strerror:
        msg = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    else:
        msg = str(e)
    click.echo("error: " + " ".join(msg.split()), err=True)
    sys.exit(2)


class _Group(click.Group):
    """Bad input ends as one line on stderr and exit code 2: ValueError (our 'bad input' signal),
    click's own usage errors, OSError (a missing, unwritable or full output location) and
    FloatingPointError (a diverged run, e.g. from a learning rate far too high)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `robustlab`: the help text, as click shows it
                raise
            one_line_error(e)
            raise  # not reached

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # output piped into `head` and the like: click's own handling
        except (click.UsageError, ValueError, OSError, FloatingPointError) as e:
            one_line_error(e)


def parse_number(text: str, what: str) -> float:
    """A number written as a decimal (``0.031``) or a fraction (``8/255``, as papers give budgets)."""
    t = str(text).strip()
    num, slash, den = t.partition("/")
    try:
        value = float(num) / float(den) if slash else float(t)
    except ValueError:
        raise ValueError(f"{what} must be a number or a fraction like 8/255, got {text!r}") from None
    except ZeroDivisionError:
        raise ValueError(f"{what} divides by zero: {text!r}") from None
    return value


class Number(click.ParamType):
    """A click option value that is a number or a fraction (``--eps 8/255``)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        what = param.opts[0] if param is not None and param.opts else "value"
        try:
            number = parse_number(value, what)
        except ValueError as e:
            self.fail(str(e), param, ctx)
        if not math.isfinite(number):
            self.fail(f"{what} must be a finite number, got {value!r}", param, ctx)
        return number


#: ``type=`` of the budget options: a number or a fraction.
NUMBER = Number()


def parse_floats(text: str, what: str, whole: bool = False) -> list[Any]:
    """A comma-separated list of numbers or fractions (``whole``: of whole numbers >= 1, as ints)."""
    try:
        vals = [parse_number(v, what) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be a comma-separated list of numbers (or fractions like 8/255), got {text!r}") from None
    if not vals:
        raise ValueError(f"{what} is empty")
    if whole and not all(v.is_integer() and v >= 1 for v in vals):
        raise ValueError(f"{what} must be whole numbers >= 1, got {text!r}")
    return [int(v) for v in vals] if whole else vals


def argv_without_nproc(argv: list[str]) -> list[str]:
    """The command line minus ``--nproc N`` / ``--nproc=N`` (for the torchrun relaunch)."""
    out: list[str] = []
    args = iter(argv)
    for a in args:
        if a == "--nproc":
            next(args, None)
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs; values parsed as JSON when possible (numbers, true/false, lists)."""
    out: dict[str, Any] = {}
    for p in pairs:
        k, eq, v = p.partition("=")
        if not eq or not k.strip():
            raise ValueError(f"option {p!r} must look like KEY=VALUE")
        try:
            out[k.strip().replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip().replace("-", "_")] = v
    return out


def json_object(text: str | None, what: str) -> dict[str, Any]:
    """A JSON object given on the command line ({} for None); ValueError otherwise."""
    if text is None:
        return {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} must be a JSON object, got {text!r} ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a JSON object like '{{\"width\": 64}}', got {text!r}")
    return obj


def merge_options(pairs: tuple[str, ...], **given: Any) -> dict[str, Any]:
    """KEY=VALUE ``pairs``, then the dedicated options that were given (not None) over them."""
    return {**parse_options(pairs), **{k: v for k, v in given.items() if v is not None}}


def repeated_options(order: list[Any]) -> list[str]:
    """The single-use options (an option that takes one value: not a flag, not ``multiple``, not a
    count) that appear more than once in ``order``, the parameters in the order parsed."""
    counts: dict[str, int] = {}
    for param in order:
        if isinstance(param, click.Option) and not (param.multiple or param.count or param.is_flag):
            name = param.opts[0] if param.opts else str(param.name)
            counts[name] = counts.get(name, 0) + 1
    return [name for name, k in counts.items() if k > 1]


class SingleUseCommand(click.Command):
    """A command on which an option that takes one value may be given only once: click itself would
    silently keep the last of ``--eps 0.1 --eps 0.3``, so a repeat is a usage error naming the option
    (exit code 2, one line, through :class:`_Group`). Repeatable options say ``multiple=True``."""

    def make_parser(self, ctx: click.Context) -> Any:
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_args(args: list[str]) -> Any:
            opts, largs, order = parse(args)
            repeated = repeated_options(order)
            if repeated:
                raise click.UsageError(f"{', '.join(repeated)} given more than once: it takes one value (only the "
                                       "last would count); give it once", ctx)
            return opts, largs, order

        setattr(parser, "parse_args", parse_args)  # noqa: B010 (an instance attribute, for mypy)
        return parser


_Group.command_class = SingleUseCommand  # every command of the main group refuses a repeated single-use option


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robustlab")
def main() -> None:
    """Attack, harden and honestly evaluate image classifiers."""
