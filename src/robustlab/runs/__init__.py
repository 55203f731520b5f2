"""Run directories: training a run (:mod:`.train`), evaluating and attacking one
(:mod:`.evaluate`), a detector experiment on one (:mod:`.detector`), and the artifacts a report
draws (:mod:`.artifacts`). File names: :mod:`robustlab.storage.layout`."""

from .detector import detector_run
from .evaluate import attack_run, evaluate_run
from .train import RunSpec, load_run_data, monitor_spec, resolve_device, train_run

__all__ = ["RunSpec", "attack_run", "detector_run", "evaluate_run", "load_run_data", "monitor_spec", "resolve_device",
           "train_run"]
