"""Small experiments that illustrate why adversarial examples exist (the course notes' arguments),
each a function returning plain rows plus a plot; ``robustlab experiment NAME`` runs them.

* :mod:`.linearity`: FGSM on linear classifiers of growing input dimension: the activation change
  ``eps * ||w||_1`` grows with the dimension, and so does the error rate at a fixed eps.
"""

from .linearity import (
    DEFAULT_DIMS,
    LINEARITY_JSON,
    LINEARITY_PNG,
    fit_linear,
    linear_task,
    linearity_experiment,
    linearity_row,
    plot_linearity,
    run_linearity,
)

__all__ = [
    "DEFAULT_DIMS",
    "LINEARITY_JSON",
    "LINEARITY_PNG",
    "fit_linear",
    "linear_task",
    "linearity_experiment",
    "linearity_row",
    "plot_linearity",
    "run_linearity",
]
