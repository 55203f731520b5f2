"""Reports: read a run directory's files (:mod:`.data`), draw the plots (:mod:`.plots`), write one
self-contained HTML page (:mod:`.html`)."""

from .data import RunData, example_captions, monitor_label, read_artifacts, read_run, read_tensors, run_summary
from .html import build_report
from .plots import (
    plot_accuracy_history,
    plot_adversarial_examples,
    plot_class_visualisations,
    plot_comparison,
    plot_corruptions,
    plot_eps_comparison,
    plot_eps_curve,
    plot_feature_maps,
    plot_filters,
    plot_iterations_curve,
    plot_loss_surface,
)

__all__ = [
    "RunData", "build_report", "example_captions", "monitor_label", "plot_accuracy_history", "plot_adversarial_examples",
    "plot_class_visualisations", "plot_comparison", "plot_corruptions", "plot_eps_comparison", "plot_eps_curve",
    "plot_feature_maps", "plot_filters", "plot_iterations_curve", "plot_loss_surface", "read_artifacts", "read_run",
    "read_tensors", "run_summary",
]
