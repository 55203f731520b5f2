#!/usr/bin/env python3
"""Add a trained run's model to the zoo, with its card; then rewrite the zoo's README table.

Usage:
    python scripts/zoo_add.py RUN --name NAME --evaluation EVAL_DIR [--zoo DIR] [--command CMD]
        [--description TEXT] [--overwrite]

RUN is a run directory (robustlab train --out RUN; its metrics.json gives the clean accuracy on
the whole test set and the training time), EVAL_DIR an evaluation directory of the same weights
(robustlab evaluate RUN --suite standard --n 1000 --checks --out EVAL_DIR; it gives the robust
accuracy, suite, threat model and gradient-masking checks). The model is copied to
ZOO/NAME/ (model.safetensors, model.json, card.json); ZOO is --zoo, else $ROBUSTLAB_ZOO, else the
package folder src/robustlab/pretrained/checkpoints/ (shipped as package data). --command replaces
the training command rebuilt from RUN/config.json (e.g. 'robustlab train --recipe fmnist-linf-0.1
--out RUN'). The card's spot_check (clean accuracy on the first 500 test images) is measured here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, add the entry, rewrite ZOO/README.md; 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the run directory")
    parser.add_argument("--name", required=True, help="zoo name, e.g. fmnist-linf-0.1")
    parser.add_argument("--evaluation", required=True, help="evaluation directory (robustlab evaluate RUN --out DIR)")
    parser.add_argument("--zoo", default=None, help="zoo folder (default: $ROBUSTLAB_ZOO, else the package's)")
    parser.add_argument("--command", default=None, help="the training command to show on the card")
    parser.add_argument("--description", default="", help="one line on the card")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing entry of that name")
    args = parser.parse_args(argv)

    from robustlab.pretrained import list_cards, zoo_dir
    from robustlab.pretrained.cards import add_to_zoo
    from robustlab.report.leaderboard import format_markdown, row_from_card
    from robustlab.storage import atomic_write_text

    try:
        dest = add_to_zoo(args.run, args.name, args.evaluation, zoo=args.zoo, command=args.command,
                          description=args.description, overwrite=args.overwrite)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = [row_from_card(c, f"zoo:{c['name']}") for c in list_cards(args.zoo) if "error" not in c]
    readme = Path(zoo_dir(args.zoo)) / "README.md"
    atomic_write_text(readme, format_markdown(rows, "robustlab model zoo"))
    print(f"added {dest} (card {dest / 'card.json'}); zoo table {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
