"""``robustlab compare``: the course exercise's comparison of training runs, clean and adversarial
accuracy per epoch of every run in one figure. It parses and prints; the work is in
:mod:`robustlab.report.compare`. Registered on :func:`robustlab.cli.main` when ``robustlab.cli``
is imported.
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import main


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for compare.png (the figure) and compare.json (its plotted series).")
def compare(runs: tuple[str, ...], out: str) -> None:
    """Clean and adversarial test accuracy per epoch of training runs RUN [RUN ...] in one figure.

    The adversarial accuracy is the per-epoch monitor attack's on the correctly classified monitor
    images (older runs: over all of them, as the legend says); each run is named by its defense,
    BatchNorm on/off and activation."""
    from ..report.compare import DATA_FILE, FIGURE_FILE, OVER_ALL, write_comparison

    doc = write_comparison(runs, out)

    def last(values: list[float | None]) -> str:
        kept = [v for v in values if v is not None]
        return f"{kept[-1]:.4f}" if kept else "—"

    click.echo(f"{'last epoch':<60} {'clean':>7} {'adv':>7}")
    for s in doc["runs"]:
        note = " (adv over all monitor images: older run)" if s["adv_measure"] == OVER_ALL else ""
        click.echo(f"{s['label']:<60} {last(s['clean_accuracy']):>7} {last(s['adv_accuracy']):>7}{note}")
    click.echo(f"series written to {Path(out) / DATA_FILE}")
    click.echo(str(Path(out) / FIGURE_FILE))
