"""Adversarial-example detection: feature capture, the detector head, ROC metrics, the adaptive
attack that targets classifier and detector together, and the experiment that ties them."""

from .detector import (
    AdaptiveDetectorAttack, Detector, FeatureDetector, capture_features, default_layer, detector_experiment,
    evaluate_detector, extract_features, fit_head, roc_auc, roc_curve, threshold_at_fpr, tpr_at_fpr, train_detector,
)

__all__ = [
    "AdaptiveDetectorAttack", "Detector", "FeatureDetector", "capture_features", "default_layer",
    "detector_experiment", "evaluate_detector", "extract_features", "fit_head", "roc_auc", "roc_curve",
    "threshold_at_fpr", "tpr_at_fpr", "train_detector",
]
