"""``robustlab experiment``: the small illustrative experiments of :mod:`robustlab.experiments`.

Thin: parse, call, print a table. The group registers itself on the main group when
:mod:`robustlab.cli` imports this module. Bad input ends with one ``error: ...`` line and exit
code 2, as everywhere in robustlab.
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import NUMBER, _Group, main, parse_floats


@main.group("experiment", cls=_Group)
def experiment() -> None:
    """Small experiments that show why adversarial examples exist (writes JSON rows and a plot)."""


@experiment.command("linearity")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for linearity.json and linearity.png.")
@click.option("--dims", "dims_text", default="10,100,1000,10000", show_default=True,
              help="Comma-separated input dimensions of the linear classifiers.")
@click.option("--eps", type=NUMBER, default=0.01, show_default=True, help="FGSM's Linf budget per input coordinate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic data (>= 0).")
def linearity(out: str, dims_text: str, eps: float, seed: int) -> None:
    """FGSM on linear classifiers of growing input dimension: the activation change, its closed
    form eps * ||w||_1, and the clean and FGSM error rates."""
    from ..experiments import LINEARITY_JSON, LINEARITY_PNG, run_linearity

    dims = parse_floats(dims_text, "--dims", whole=True)
    rows = run_linearity(out, dims, eps, seed)
    click.echo(f"{'dim':>8} {'||w||_1':>9} {'eps*||w||_1':>12} {'measured':>10} {'clean err':>10} {'FGSM err':>9}")
    for r in rows:
        click.echo(f"{r['dim']:>8} {r['w_l1']:>9.3f} {r['closed_form']:>12.5f} {r['activation_change']:>10.5f} "
                   f"{r['clean_error']:>10.4f} {r['fgsm_error']:>9.4f}")
    folder = Path(out)
    click.echo(f"written to {folder / LINEARITY_JSON} and {folder / LINEARITY_PNG}")
