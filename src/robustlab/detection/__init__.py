"""Adversarial-example detection: feature capture, the detector head, ROC metrics, the adaptive
attack that targets classifier and detector together, and the experiment that ties them."""

from .adaptive import AdaptiveDetectorAttack
from .detector import Detector, FeatureDetector
from .experiment import detector_experiment, evaluate_detector
from .features import capture_features, default_layer, extract_features
from .metrics import roc_auc, roc_curve, threshold_at_fpr, tpr_at_fpr
from .training import craft, fit_head, train_detector

__all__ = [
    "AdaptiveDetectorAttack", "Detector", "FeatureDetector", "capture_features", "craft", "default_layer",
    "detector_experiment", "evaluate_detector", "extract_features", "fit_head", "roc_auc", "roc_curve",
    "threshold_at_fpr", "tpr_at_fpr", "train_detector",
]
