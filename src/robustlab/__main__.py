"""``python -m robustlab`` runs the command line (under ``--nproc`` relaunches, with the arguments
that :func:`robustlab.distributed.relaunch` passed through the environment)."""

import sys

from .cli import main
from .distributed import relaunched_argv

argv = relaunched_argv() if len(sys.argv) == 1 else None
main(args=argv, prog_name="robustlab" if argv is not None else None)
