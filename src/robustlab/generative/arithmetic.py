"""Operations on codes (Radford et al. 2016, DCGAN section 6.3): average the codes of a few
chosen samples per concept (single codes are unstable), combine ``c1 - c2 + c3``, decode.

Codes are the generator's full input (:meth:`.models.Generator.code`: the latent vector, plus the
one-hot class for a conditional generator), so arithmetic on a conditional GAN moves the class part
too. Samples are chosen by index into a seeded sample grid, or by class: the codes whose samples a
classifier assigns to that class with the highest confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from .metrics import classifier_outputs
from .models import Generator
from .train import sample


@dataclass
class ArithmeticResult:
    """The three concept means' images, the result ``c1 - c2 + c3`` decoded, and the result with
    small code noise (DCGAN's figure shows such a neighbourhood), plus the chosen samples."""

    concepts: torch.Tensor  # (3, C, H, W): decode(c1), decode(c2), decode(c3)
    result: torch.Tensor  # (1 + n_neighbours, C, H, W)
    chosen: torch.Tensor  # (3, k, C, H, W): the samples whose codes were averaged
    predictions: list[int] | None = None  # the classifier's class for each result image, if one judged


def candidate_codes(generator: nn.Module, n: int, seed: int = 0, labels: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` full codes from a seeded normal draw (labels needed for a conditional generator)."""
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, cast(int, generator.latent_dim), generator=g)
    dev = next(generator.parameters()).device
    if getattr(generator, "num_classes", 0) and labels is None:
        labels = torch.randint(0, cast(int, generator.num_classes), (n,), generator=g)
    return cast(Generator, generator).code(z.to(dev), None if labels is None else labels.to(dev))


def codes_by_class(generator: nn.Module, classifier: nn.Module, cls: int, k: int = 3, pool: int = 500,
                   seed: int = 0) -> torch.Tensor:
    """The ``k`` codes (out of ``pool`` seeded draws) whose samples ``classifier`` assigns to class
    ``cls`` most confidently; ValueError when fewer than ``k`` samples land in that class."""
    labels = torch.full((pool,), int(cls)) if getattr(generator, "num_classes", 0) else None
    codes = candidate_codes(generator, pool, seed, labels)
    probs, _ = classifier_outputs(classifier, _decode(generator, codes))
    hits = (probs.argmax(1) == cls).nonzero().flatten()
    if len(hits) < k:
        raise ValueError(f"only {len(hits)} of {pool} samples are classified as class {cls}; need {k} (raise pool)")
    best = hits[probs[hits, cls].argsort(descending=True)[:k]]
    return codes[best.to(codes.device)]


@torch.no_grad()
def _decode(generator: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    was = generator.training
    generator.eval()
    try:
        return cast(Generator, generator).decode(codes)
    finally:
        generator.train(was)


def code_arithmetic(generator: nn.Module, groups: tuple[torch.Tensor, torch.Tensor, torch.Tensor], n_neighbours: int = 7,
                    noise: float = 0.25, seed: int = 0, classifier: nn.Module | None = None) -> ArithmeticResult:
    """Decode ``mean(g1) - mean(g2) + mean(g3)`` for three groups of codes (each (k, code_dim)),
    and ``n_neighbours`` points around it (Gaussian code noise of scale ``noise``, seeded)."""
    if len(groups) != 3 or any(g.dim() != 2 or len(g) == 0 for g in groups):
        raise ValueError("code arithmetic needs three non-empty groups of codes, each of shape (k, code_dim)")
    means = torch.stack([g.mean(0) for g in groups])
    result = means[0] - means[1] + means[2]
    gen = torch.Generator().manual_seed(int(seed))
    jitter = noise * torch.randn(n_neighbours, result.numel(), generator=gen).to(result.device)
    if getattr(generator, "num_classes", 0):
        jitter[:, generator.latent_dim :] = 0  # noise on the latent part only
    points = torch.cat([result[None], result[None] + jitter])
    k = min(len(g) for g in groups)
    chosen = torch.stack([_decode(generator, g[:k]) for g in groups])
    images = _decode(generator, points)
    preds = None
    if classifier is not None:
        preds = classifier_outputs(classifier, images)[0].argmax(1).tolist()
    return ArithmeticResult(concepts=_decode(generator, means), result=images, chosen=chosen, predictions=preds)


def grid_codes(generator: nn.Module, indices: list[int], n: int = 64, seed: int = 0) -> torch.Tensor:
    """The codes at ``indices`` of the seeded ``n``-sample grid (see :func:`sample_grid`)."""
    bad = [i for i in indices if not 0 <= i < n]
    if bad or not indices:
        raise ValueError(f"sample indices must be in [0, {n}), got {indices}")
    return candidate_codes(generator, n, seed)[torch.as_tensor(indices)]


def sample_grid(generator: nn.Module, n: int = 64, seed: int = 0) -> torch.Tensor:
    """The seeded ``n``-sample grid whose indices :func:`grid_codes` refers to."""
    return sample(generator, *_split(generator, candidate_codes(generator, n, seed)))


def _split(generator: nn.Module, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not getattr(generator, "num_classes", 0):
        return codes, None
    return codes[:, : generator.latent_dim], codes[:, generator.latent_dim :].argmax(1)
