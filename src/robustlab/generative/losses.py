"""The costs of the generator/discriminator game, written on the discriminator's logits.

With ``D(x) = sigmoid(l(x))`` (Goodfellow's NIPS 2016 tutorial, the course notes' notation):

* discriminator cost ``J(D) = -1/2 E_x log D(x) - 1/2 E_z log(1 - D(G(z)))``: the cross-entropy of
  a classifier that labels real data 1 and generated data 0;
* ``minimax``: the zero-sum generator cost ``J(G) = -J(D)``; only its second term depends on G, so
  the generator minimises ``1/2 E_z log(1 - D(G(z)))``, whose gradient vanishes when D confidently
  rejects the samples (``D(G(z))`` near 0, early in training): ``d/dl = -1/2 D(G(z))``;
* ``non-saturating``: ``J(G) = -1/2 E_z log D(G(z))``, the same fixed point, gradient
  ``-1/2 (1 - D(G(z)))``, strongest exactly when the generator is worst;
* ``least-squares`` (Mao et al. 2017), on the raw output ``l``: ``1/2 E (l(x) - 1)^2 + 1/2 E l(G(z))^2``
  for D and ``1/2 E (l(G(z)) - 1)^2`` for G;
* ``hinge`` (Lim & Ye 2017; Miyato et al. 2018): ``E relu(1 - l(x)) + E relu(1 + l(G(z)))`` for D,
  ``-E l(G(z))`` for G.

One-sided label smoothing (Salimans et al. 2016): real targets become ``real_label`` (e.g. 0.9),
fake targets stay 0 -- smoothing the fake side would reward D for keeping samples it already
rejects near their current place. For least-squares ``real_label`` is the real target, for hinge
the real margin. Everything is computed from logits (``softplus``), so no ``log(0)`` ever occurs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._torch import check_float

GAN_LOSSES: tuple[str, ...] = ("non-saturating", "minimax", "least-squares", "hinge")


def check_loss(name: str) -> str:
    """``name`` as one of :data:`GAN_LOSSES` (case-insensitive), else ValueError listing them."""
    key = str(name).strip().lower()
    if key not in GAN_LOSSES:
        raise ValueError(f"unknown GAN loss {name!r}: expected one of {', '.join(GAN_LOSSES)}")
    return key


def check_real_label(real_label: float) -> float:
    """One-sided label smoothing's real target, a number in (0.5, 1] (0.9 is the usual choice)."""
    v = check_float("label smoothing (real label)", real_label)
    if not 0.5 < v <= 1.0:
        raise ValueError(f"label smoothing (the real label) must be in (0.5, 1], got {real_label!r}")
    return v


def smoothed_targets(real: torch.Tensor, fake: torch.Tensor, real_label: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for a real and a fake batch of logits: ``real_label`` for real, exactly 0 for fake
    (one-sided smoothing)."""
    real_label = check_real_label(real_label)
    return torch.full_like(real, real_label), torch.zeros_like(fake)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, loss: str = "non-saturating",
                       real_label: float = 1.0) -> torch.Tensor:
    """The discriminator's cost for one real and one generated batch (a scalar). ``minimax`` and
    ``non-saturating`` share the cross-entropy ``J(D)``; they differ only in the generator's cost."""
    kind = check_loss(loss)
    t_real, t_fake = smoothed_targets(real_logits, fake_logits, real_label)
    if kind in ("non-saturating", "minimax"):
        return 0.5 * (F.binary_cross_entropy_with_logits(real_logits, t_real)
                      + F.binary_cross_entropy_with_logits(fake_logits, t_fake))
    if kind == "least-squares":
        return 0.5 * ((real_logits - t_real).pow(2).mean() + (fake_logits - t_fake).pow(2).mean())
    return F.relu(t_real - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, loss: str = "non-saturating") -> torch.Tensor:
    """The generator's cost on the discriminator's logits for generated samples (a scalar).

    ``minimax`` returns the G-dependent part of ``-J(D)``, ``1/2 E log(1 - D(G(z)))`` =
    ``-1/2 E softplus(l)``; ``non-saturating`` returns ``-1/2 E log D(G(z))`` = ``1/2 E softplus(-l)``."""
    kind = check_loss(loss)
    if kind == "minimax":
        return -0.5 * F.softplus(fake_logits).mean()
    if kind == "non-saturating":
        return 0.5 * F.softplus(-fake_logits).mean()
    if kind == "least-squares":
        return 0.5 * (fake_logits - 1.0).pow(2).mean()
    return -fake_logits.mean()


def cycle_consistency_loss(x: torch.Tensor, reconstructed: torch.Tensor) -> torch.Tensor:
    """CycleGAN's cycle loss ``E ||F(G(x)) - x||_1`` (mean absolute error per pixel)."""
    return (reconstructed - x).abs().mean()


def perturbation_hinge(delta: torch.Tensor, bound: float) -> torch.Tensor:
    """AdvGAN's soft bound on the perturbation: ``E max(0, ||delta||_2 - bound)`` per sample."""
    return F.relu(delta.flatten(1).norm(dim=1) - bound).mean()


def margin_adversarial_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None,
                            kappa: float = 0.0) -> torch.Tensor:
    """AdvGAN's adversarial loss (the C&W margin), a scalar to minimise: untargeted
    ``max(Z_y - max_{i != y} Z_i, -kappa)``; targeted ``max(max_{i != t} Z_i - Z_t, -kappa)``."""
    cls = y if target is None else target
    own = logits.gather(1, cls[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(cls, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    gap = own - other if target is None else other - own
    return gap.clamp_min(-kappa).mean()
