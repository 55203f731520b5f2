"""Evaluation: attack outcomes (:mod:`.outcomes`), ``evaluate`` over a suite (:mod:`.evaluate`),
named suites, accuracy curves, natural corruptions and gradient-masking checks.

Imports flow one way: outcomes <- checks <- evaluate <- curves; checks never imports evaluate.
"""

from .checks import format_checks, run_checks
from .corruptions import CORRUPTIONS, corrupt, corruption_accuracy, corruption_metrics, mean_corruption_accuracy
from .curves import eps_curve, iterations_curve, iterations_metrics
from .evaluate import evaluate
from .outcomes import SCHEMA_VERSION, AttackOutcome, EvaluationResult, clean_accuracy, predict, run_attack
from .suites import SUITES, build_suite

__all__ = [
    "CORRUPTIONS", "SCHEMA_VERSION", "SUITES", "AttackOutcome", "EvaluationResult", "build_suite", "clean_accuracy",
    "corrupt", "corruption_accuracy", "corruption_metrics", "eps_curve", "evaluate", "format_checks",
    "iterations_curve", "iterations_metrics", "mean_corruption_accuracy", "predict", "run_attack", "run_checks",
]
