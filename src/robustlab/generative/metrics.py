"""GAN metrics judged by a robustlab classifier: Inception Score, Fréchet distance, class histogram.

These are the **classifier-based analogues** used for MNIST-like data: the Inception Score
``exp(E_x KL(p(y|x) || p(y)))`` (Salimans et al. 2016) with the classifier's softmax as
``p(y|x)``, and the Fréchet distance of "Are GANs created equal?" (Lucic et al. 2018; FID, Heusel
et al. 2017) between Gaussians fitted to the classifier's *penultimate* features (the input of its
last linear layer). They are not ImageNet-Inception numbers and must not be compared with published
IS / FID values: compare them only with the same metric on real test images (the ceiling) and
across runs judged by the same classifier.

IS lies in [1, number of classes]: 1 when every sample gets the same prediction (or the classifier
is unsure everywhere), the class count when samples are confidently classified and spread evenly
over the classes. The class histogram of the samples' predictions shows mode collapse directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .._torch import model_guard


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` in module order (the logit layer of robustlab's models)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer, so it has no penultimate features")
    return layers[-1]


@torch.no_grad()
def classifier_outputs(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and penultimate features (the last linear layer's input) for ``x``,
    in eval mode; the model's state is left exactly as found."""
    head = last_linear(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach().flatten(1)))
    probs = []
    try:
        with model_guard(model, eval_mode=True):
            for i in range(0, len(x), batch_size):
                probs.append(torch.softmax(model(x[i : i + batch_size]).float(), dim=1))
    finally:
        hook.remove()
    return torch.cat(probs).cpu(), torch.cat(captured).float().cpu()


def inception_score(probs: torch.Tensor | np.ndarray, splits: int = 1) -> tuple[float, float]:
    """``exp(E_x KL(p(y|x) || p(y)))`` from per-sample class probabilities (N, K); with
    ``splits > 1`` the mean and standard deviation over that many disjoint parts (Salimans et al.
    used 10), else (score, 0.0)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"probabilities must be a non-empty (N, K) array, got shape {p.shape}")
    if splits < 1 or splits > len(p):
        raise ValueError(f"splits must be between 1 and the sample count {len(p)}, got {splits}")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = np.where(part > 0, part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(marginal, 1e-30, None))), 0.0)
        scores.append(float(np.exp(kl.sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores)) if splits > 1 else 0.0


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of features (N, D), N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be an (N, D) array with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``, the squared 2-Wasserstein distance
    of two Gaussians. ``Tr (S1 S2)^(1/2)`` is computed by eigen-decomposition as the sum of the
    square roots of the eigenvalues of the symmetric PSD matrix ``S1^(1/2) S2 S1^(1/2)`` (same
    spectrum as ``S1 S2``), which avoids the complex round-off of a general matrix square root."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched shapes: means {mu1.shape} / {mu2.shape}, covariances {s1.shape} / {s2.shape}")
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    return max(fd, 0.0)


def features_frechet_distance(f1: torch.Tensor | np.ndarray, f2: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


def class_histogram(probs: torch.Tensor | np.ndarray) -> list[int]:
    """How many samples the classifier assigns to each class (argmax), length K."""
    p = np.asarray(probs)
    return np.bincount(p.argmax(axis=1), minlength=p.shape[1]).astype(int).tolist()


class GanJudge:
    """A classifier and the real-data reference it scores samples against: IS, FD to the real
    test features, class histogram. The real-data statistics are computed once."""

    def __init__(self, classifier: nn.Module, x_real: torch.Tensor, batch_size: int = 500) -> None:
        self.classifier, self.batch_size = classifier, batch_size
        probs, feats = classifier_outputs(classifier, x_real, batch_size)
        self.real_stats = gaussian_stats(feats)
        self.real_inception_score = inception_score(probs)[0]
        self.real_histogram = class_histogram(probs)

    def score(self, x_fake: torch.Tensor) -> dict[str, Any]:
        """``inception_score``, ``frechet_distance`` (to the real features) and ``class_histogram``."""
        probs, feats = classifier_outputs(self.classifier, x_fake, self.batch_size)
        return {"inception_score": inception_score(probs)[0],
                "frechet_distance": frechet_distance(*gaussian_stats(feats), *self.real_stats),
                "class_histogram": class_histogram(probs)}
