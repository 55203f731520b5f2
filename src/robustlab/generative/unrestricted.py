"""Unrestricted adversarial examples (Song, Shu, Kushman & Ermon 2018, "Constructing unrestricted
adversarial examples with generative models").

No eps-ball around a test image: search the latent space of a *class-conditional* generator for
images ``G(z, K)`` of source class K that a classifier labels otherwise (untargeted) or as class T
(targeted). Per code, starting from a random ``z0``, minimise with Adam

    L(z) = L_adv(f(G(z, K))) + w_z * mean_i max(|z_i - z0_i| - eps_z, 0)

where ``L_adv`` is the C&W margin (toward "not K", or toward T) and the second term keeps ``z``
near ``z0`` so the image stays a plausible K. (The paper's third term, an auxiliary classifier of
an AC-GAN, needs such a GAN; here the generator's class input plays that role.) Whether the images
*are* still class K is what a human would judge; as a proxy, a second, independently trained
classifier reports how often it still sees K in the successful examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .._torch import check_float, check_int, model_guard


@dataclass
class UnrestrictedResult:
    """Initial and final images with every classifier's predictions, and the summary rates."""

    x_start: torch.Tensor
    x_adv: torch.Tensor
    pred_start: torch.Tensor
    pred_adv: torch.Tensor
    second_pred_start: torch.Tensor | None
    second_pred_adv: torch.Tensor | None
    summary: dict[str, Any] = field(default_factory=dict)


def _margin(logits: torch.Tensor, source: int, target: int | None, kappa: float) -> torch.Tensor:
    """Per-sample margin to minimise: ``Z_K - max_{i != K} Z_i`` (untargeted) or ``max_{i != T} Z_i - Z_T``."""
    cls = source if target is None else target
    own = logits[:, cls]
    mask = F.one_hot(torch.full_like(own, cls, dtype=torch.long), logits.shape[1]).bool()
    other = logits.masked_fill(mask, float("-inf")).amax(1)
    return (own - other if target is None else other - own).clamp_min(-kappa)


def unrestricted_search(generator: nn.Module, classifier: nn.Module, source: int, target: int | None = None, n: int = 100,
                        steps: int = 200, lr: float = 0.01, eps_z: float = 0.1, z_weight: float = 100.0,
                        kappa: float = 2.0, seed: int = 0, second: nn.Module | None = None) -> UnrestrictedResult:
    """Search ``n`` codes of class ``source`` for unrestricted adversarial examples against
    ``classifier`` (toward ``target`` when given). Generator and classifiers are left as found."""
    k = getattr(generator, "num_classes", 0)
    if not k:
        raise ValueError("unrestricted examples need a class-conditional generator (robustlab gan train --conditional)")
    for name, cls in (("source", source), ("target", target)):
        if cls is not None and not 0 <= int(cls) < k:
            raise ValueError(f"{name} class {cls} is out of range for a generator of {k} classes")
    if target is not None and int(target) == int(source):
        raise ValueError(f"target must differ from the source class, got {target} for both")
    n, steps = check_int("n", n, 1), check_int("steps", steps, 1)
    lr, eps_z = check_float("lr", lr, 0.0, strict=True), check_float("eps_z", eps_z, 0.0)
    dev = next(generator.parameters()).device
    g = torch.Generator().manual_seed(int(seed))
    z0 = torch.randn(n, cast(int, generator.latent_dim), generator=g).to(dev)
    labels = torch.full((n,), int(source), device=dev)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    with model_guard(generator), model_guard(classifier):
        with torch.no_grad():
            x_start = generator(z0, labels)
            pred_start = classifier(x_start).argmax(1)
        best = x_start.clone()
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        for _ in range(steps):
            with torch.enable_grad():
                x = generator(z, labels)
                logits = classifier(x)
                adv = _margin(logits, int(source), target, kappa)
                stay = F.relu((z - z0).abs() - eps_z).mean(1)
                loss = (adv + z_weight * stay).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            hit = (logits.argmax(1) != source) if target is None else (logits.argmax(1) == target)
            new = hit.detach() & ~found
            best[new] = x.detach()[new]
            found |= hit.detach()
            opt.step()
        with torch.no_grad():
            pred_adv = classifier(best).argmax(1)
    s_start = s_adv = None
    if second is not None:
        with model_guard(second), torch.no_grad():
            s_start, s_adv = second(x_start).argmax(1), second(best).argmax(1)
    success = (pred_adv != source) if target is None else (pred_adv == target)
    summary: dict[str, Any] = {
        "source": int(source), "target": None if target is None else int(target), "n": n, "steps": steps,
        "start_classified_as_source": float((pred_start == source).float().mean()),
        "success_rate": float(success.float().mean()),
    }
    if s_adv is not None and s_start is not None:
        summary["second_sees_source_at_start"] = float((s_start == source).float().mean())
        summary["second_sees_source_in_successes"] = float((s_adv[success] == source).float().mean()) if bool(success.any()) else None
        summary["second_fooled_too"] = float((s_adv[success] != source).float().mean()) if bool(success.any()) else None
    return UnrestrictedResult(x_start.cpu(), best.cpu(), pred_start.cpu(), pred_adv.cpu(),
                              None if s_start is None else s_start.cpu(), None if s_adv is None else s_adv.cpu(), summary)
