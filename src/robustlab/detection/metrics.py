"""Detection metrics in torch (no sklearn): ROC AUC, the ROC curve, and the threshold and
detection rate at a target false-positive rate."""

from __future__ import annotations

import math
from typing import Any

import torch


def _as_1d(t: Any) -> torch.Tensor:
    return torch.as_tensor(t).detach().flatten().double().cpu()


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (positives = label 1 should score higher), via the Mann-Whitney
    statistic with average ranks for ties; NaN when one class is absent."""
    s, lab = _as_1d(scores), _as_1d(labels) > 0.5
    n_pos, n_neg = int(lab.sum()), int((~lab).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(s)
    s_sorted = s[order]
    ranks = torch.empty_like(s)
    # average rank (1-based) for each group of tied scores
    _, inverse, counts = torch.unique_consecutive(s_sorted, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    u = float(ranks[lab].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def roc_curve(scores: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fpr, tpr, thresholds) for the rule ``score >= threshold``, thresholds descending, starting
    at (0, 0) with threshold +inf; tied scores make one point."""
    s, lab = _as_1d(scores), _as_1d(labels) > 0.5
    order = torch.argsort(s, descending=True)
    s, lab = s[order], lab[order]
    tp = torch.cumsum(lab.double(), 0)
    fp = torch.cumsum((~lab).double(), 0)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # the last element of every group of ties
    n_pos, n_neg = max(int(lab.sum()), 1), max(int((~lab).sum()), 1)
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fp[last] / n_neg])
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), tp[last] / n_pos])
    thr = torch.cat([torch.full((1,), float("inf"), dtype=torch.float64), s[last]])
    return fpr, tpr, thr


def threshold_at_fpr(clean_scores: Any, fpr: float = 0.05) -> float:
    """The smallest threshold such that at most a fraction ``fpr`` of the clean scores are
    ``> threshold`` (the rule is ``score > threshold``)."""
    s = torch.sort(_as_1d(clean_scores), descending=True).values
    if len(s) == 0:
        raise ValueError("no clean scores to calibrate the threshold on")
    k = int(math.floor(fpr * len(s) + 1e-9))
    return float(s[min(k, len(s) - 1)])


def tpr_at_fpr(clean_scores: Any, adv_scores: Any, fpr: float = 0.05) -> tuple[float, float, float]:
    """(detection rate, actual false-positive rate, threshold) at the threshold that flags at
    most ``fpr`` of the clean scores."""
    thr = threshold_at_fpr(clean_scores, fpr)
    c, a = _as_1d(clean_scores), _as_1d(adv_scores)
    tpr = float((a > thr).double().mean()) if len(a) else float("nan")
    return tpr, float((c > thr).double().mean()), thr
