"""``robustlab zoo list|show`` (the shipped models and their cards) and ``robustlab leaderboard``
(a RobustBench-style table of evaluation directories, runs and zoo models). They parse and print;
the work is in :mod:`robustlab.pretrained` and :mod:`robustlab.report.leaderboard`. Registered on
:func:`robustlab.cli.main` when ``robustlab.cli`` is imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .common import main


class RunOrZoo(click.ParamType):
    """A run directory that exists, or ``zoo:NAME`` (a model of the zoo, checked when loaded)."""

    name = "run"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if text.startswith("zoo:") or Path(text).is_dir():
            return text
        if Path(text).exists():
            self.fail(f"{text!r} is a file, not a run directory (nor zoo:NAME)", param, ctx)
        self.fail(f"Directory {text!r} does not exist (nor is it zoo:NAME)", param, ctx)


RUN_OR_ZOO = RunOrZoo()


def _minutes(seconds: Any) -> str:
    return f"{seconds / 60:.1f}" if isinstance(seconds, (int, float)) else "—"


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) else "—"


@main.group()
def zoo() -> None:
    """The model zoo: trained models shipped with robustlab, usable offline as zoo:NAME
    (robustlab evaluate --model zoo:NAME, robustlab.load_model("zoo:NAME"))."""


@zoo.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the cards as JSON.")
def zoo_list(as_json: bool) -> None:
    """Every zoo model: data set, threat model, architecture, parameters, clean and robust
    accuracy (%), attack suite, training wall time (min) and the command that trained it."""
    from ..pretrained import list_cards, zoo_dir

    cards = list_cards()
    if as_json:
        click.echo(json.dumps(cards, indent=2, sort_keys=True))
        return
    if not cards:
        click.echo(f"the zoo {zoo_dir()} has no models yet (add one with scripts/zoo_add.py)")
        return
    head = f"{'name':<28} {'dataset':<14} {'threat':<11} {'architecture':<12} {'params':>9} {'clean':>6} {'robust':>6} " \
           f"{'suite':<12} {'min':>6}"
    click.echo(head)
    for c in cards:
        if "error" in c:
            click.echo(f"{c['name']:<28} unreadable card: {c['error']}")
            continue
        t = c.get("threat") or {}
        threat = f"{t.get('norm')} {t.get('eps'):g}" if isinstance(t.get("eps"), (int, float)) else "—"
        arch = (c.get("architecture") or {}).get("name", "—")
        params = f"{c['parameters']:,}" if isinstance(c.get("parameters"), int) else "—"
        click.echo(f"{c['name']:<28} {str(c.get('dataset', '—')):<14} {threat:<11} {arch:<12} {params:>9} "
                   f"{_pct(c.get('clean_accuracy')):>6} {_pct(c.get('robust_accuracy')):>6} {str(c.get('suite', '—')):<12} "
                   f"{_minutes(c.get('train_seconds')):>6}")
        click.echo(f"{'':<28} trained with: {c.get('training_command') or '—'}")


@zoo.command("show")
@click.argument("name")
def zoo_show(name: str) -> None:
    """The full card of zoo model NAME (or zoo:NAME), as JSON."""
    from ..pretrained import read_card

    click.echo(json.dumps(read_card(name), indent=2, sort_keys=True))


@main.command()
@click.argument("sources", nargs=-1, required=True, metavar="DIR_OR_ZOO...")
@click.option("--markdown", "markdown_file", default=None, type=click.Path(dir_okay=False),
              help="Also write the table as Markdown to this file.")
@click.option("--html", "html_file", default=None, type=click.Path(dir_okay=False),
              help="Also write the table as a self-contained HTML page to this file.")
@click.option("--title", default="Leaderboard", show_default=True, help="Heading of the Markdown / HTML page.")
def leaderboard(sources: tuple[str, ...], markdown_file: str | None, html_file: str | None, title: str) -> None:
    """A RobustBench-style table of evaluation directories (robustlab evaluate --out), run
    directories and zoo models ('zoo' for all, zoo:NAME for one): model, clean and robust accuracy,
    attack suite, threat model, parameters, training time; one table per threat model, sorted by
    robust accuracy. Numbers a source lacks are shown as a dash."""
    from ..report.leaderboard import collect_rows, format_html, format_markdown, format_text
    from ..storage import atomic_write_text

    rows = collect_rows(list(sources))
    click.echo(format_text(rows))
    for r in rows:
        if r["missing"]:
            click.echo(f"note: {r['model']} ({r['source']}) has no {', '.join(r['missing'])}", err=True)
    if markdown_file:
        atomic_write_text(Path(markdown_file), format_markdown(rows, title))
        click.echo(f"markdown written to {markdown_file}")
    if html_file:
        atomic_write_text(Path(html_file), format_html(rows, title))
        click.echo(f"html written to {html_file}")
