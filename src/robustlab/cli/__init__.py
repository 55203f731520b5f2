"""The ``robustlab`` command line: train, attack, evaluate, report, demo, and the rest.

Each module registers its commands on :data:`main` (in :mod:`.common`); this package imports them
all, so ``robustlab.cli:main`` is the entry point. Bad input ends with exit code 2 and one line
naming the problem (no traceback).
"""

from . import course, evaluate, train, zoo  # noqa: F401  (they register their commands on main)
from .common import argv_without_nproc, main
from .experiment import experiment  # noqa: F401  (registers itself on main)
from .generative import COMMANDS as _GENERATIVE

for _group in _GENERATIVE:  # gan, cyclegan, advgan
    main.add_command(_group)

__all__ = ["argv_without_nproc", "main"]
