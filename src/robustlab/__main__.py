"""``python -m robustlab`` runs the command line."""

from .cli import main

main()
