"""Natural robustness: common corruptions at severities 1-5 (in the spirit of Hendrycks &
Dietterich 2019, ImageNet-C / CIFAR-10-C), in pure torch.

=================  ======================================================  ==========================
corruption         what it does                                            severities 1..5
=================  ======================================================  ==========================
gaussian_noise     add N(0, sd^2) per pixel                                sd = .08 .12 .18 .26 .38
                                                                           (x the input range)
gaussian_blur      depthwise Gaussian convolution (replicate padding)      sigma = .5 .75 1 1.5 2 px
contrast           ``(x - mean) * c + mean`` (mean per image and channel)  c = .75 .5 .4 .3 .15
brightness         add a constant                                          + .1 .2 .3 .4 .5
                                                                           (x the input range)
rotation           rotate about the centre, random direction per image     3 6 9 12 15 degrees
shift              translate in a random direction per image               .04 .08 .12 .16 .2
                                                                           (x the image side)
=================  ======================================================  ==========================

Rotation and shift use ``affine_grid``/``grid_sample`` (bilinear); uncovered pixels take the lower
bound (black). Every result is clipped to the input bounds. Severity 0 is the identity. The
randomness (noise, directions) comes from a generator seeded from ``(seed, corruption,
severity)``, so a table is reproducible and independent of the order it is computed in.
Images are ``(N, C, H, W)`` (``(N, H, W)`` is read as one channel); the pixel-wise corruptions
(noise, contrast, brightness) also accept any ``(N, ...)`` tensor.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._torch import model_guard

Bounds = tuple[float, float]

PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (0.5, 0.75, 1.0, 1.5, 2.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "rotation": (3.0, 6.0, 9.0, 12.0, 15.0),
    "shift": (0.04, 0.08, 0.12, 0.16, 0.2),
}
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)


def _images(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)
    raise ValueError(f"{name} needs images (N, C, H, W) or (N, H, W), got shape {tuple(x.shape)}")


def gaussian_noise(x: torch.Tensor, sd: float, generator: torch.Generator | None, bounds: Bounds) -> torch.Tensor:
    """``x`` plus Gaussian noise of standard deviation ``sd`` times the input range (``bounds``), unclipped."""
    lo, hi = bounds
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + noise * (sd * (hi - lo))


def gaussian_blur(x: torch.Tensor, sigma: float, generator: torch.Generator | None, bounds: Bounds) -> torch.Tensor:
    """``x`` blurred per channel by a separable Gaussian of width ``sigma`` pixels (radius ``ceil(3 sigma)``,
    replicate padding); images ``(N, C, H, W)`` or ``(N, H, W)``."""
    x4 = _images(x, "gaussian_blur")
    c = x4.shape[1]
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    kh = k.view(1, 1, 1, -1).expand(c, 1, 1, len(k))
    kv = k.view(1, 1, -1, 1).expand(c, 1, len(k), 1)
    out = F.conv2d(F.pad(x4, (radius, radius, 0, 0), mode="replicate"), kh, groups=c)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), kv, groups=c)
    return out.view_as(x)


def contrast(x: torch.Tensor, factor: float, generator: torch.Generator | None, bounds: Bounds) -> torch.Tensor:
    """``(x - mean) * factor + mean``, the mean taken per image and channel: ``factor < 1`` lowers the contrast."""
    dims = tuple(range(2, x.dim())) if x.dim() > 2 else (1,)
    mean = x.mean(dim=dims, keepdim=True)
    return (x - mean) * factor + mean


def brightness(x: torch.Tensor, amount: float, generator: torch.Generator | None, bounds: Bounds) -> torch.Tensor:
    """``x`` plus ``amount`` times the input range (``bounds``), unclipped."""
    lo, hi = bounds
    return x + amount * (hi - lo)


def _warp(x: torch.Tensor, theta: torch.Tensor, bounds: Bounds, name: str) -> torch.Tensor:
    x4 = _images(x, name)
    lo = bounds[0]
    grid = F.affine_grid(theta.to(x.dtype), list(x4.shape), align_corners=False)
    out = F.grid_sample(x4 - lo, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + lo
    return out.view_as(x)


def rotation(x: torch.Tensor, degrees: float, generator: torch.Generator | None, bounds: Bounds) -> torch.Tensor:
    """Each image rotated by ``degrees`` about its centre, clockwise or anticlockwise at random (from
    ``generator``); bilinear, uncovered pixels at the lower bound."""
    n = x.shape[0]
    sign = torch.randint(0, 2, (n,), generator=generator, device=x.device).to(torch.float64) * 2 - 1
    a = sign * math.radians(degrees)
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _warp(x, theta, bounds, "rotation")


def shift(x: torch.Tensor, fraction: float, generator: torch.Generator | None, bounds: Bounds) -> torch.Tensor:
    """Each image translated by ``fraction`` of its side in a random direction (from ``generator``);
    bilinear, uncovered pixels at the lower bound."""
    n = x.shape[0]
    phi = torch.rand(n, generator=generator, device=x.device).to(torch.float64) * (2 * math.pi)
    d = 2 * fraction  # normalised coordinates span 2 per image side
    one, zero = torch.ones_like(phi), torch.zeros_like(phi)
    theta = torch.stack([torch.stack([one, zero, d * torch.cos(phi)], 1), torch.stack([zero, one, d * torch.sin(phi)], 1)], 1)
    return _warp(x, theta, bounds, "shift")


CorruptionFn = Callable[[torch.Tensor, float, "torch.Generator | None", Bounds], torch.Tensor]
CORRUPTIONS: dict[str, CorruptionFn] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "brightness": brightness,
    "rotation": rotation,
    "shift": shift,
}


def _check_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: expected one of {', '.join(CORRUPTIONS)}")
    return key


def _check_severity(severity: object) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 0..5, got {severity!r}")
    return severity


def _seeded(seed: int, name: str, severity: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + zlib.crc32(f"{name}:{severity}".encode())) % (2**63))
    return g


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    generator: torch.Generator | None = None,
    bounds: Bounds = (0.0, 1.0),
    seed: int | None = None,
) -> torch.Tensor:
    """``x`` with corruption ``name`` at ``severity`` (0 = identity), clipped to ``bounds``.

    Randomness comes from ``generator``, or from a generator seeded from ``(seed, name,
    severity)`` when ``seed`` is given, or from torch's global generator. ``x`` is not modified.
    """
    key = _check_name(name)
    sev = _check_severity(severity)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError("x must be a floating-point tensor of shape (N, ...)")
    lo, hi = float(bounds[0]), float(bounds[1])
    if sev == 0:
        return x.detach().clone()
    if generator is None and seed is not None:
        generator = _seeded(seed, key, sev, x.device)
    with torch.no_grad():
        out = CORRUPTIONS[key](x.detach(), PARAMS[key][sev - 1], generator, (lo, hi))
    return out.clamp(lo, hi)


def corruption_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    bounds: Bounds = (0.0, 1.0),
    batch_size: int = 500,
) -> dict[str, dict[int, float]]:
    """Accuracy of ``model`` on corrupted copies of ``(x, y)``: ``table[name][severity]``.

    ``corruptions`` defaults to all of :data:`CORRUPTIONS`. The model runs in eval mode and its
    state is restored. (Severity keys are ints; JSON turns them into strings.)
    """
    names = [_check_name(c) for c in (corruptions if corruptions is not None else list(CORRUPTIONS))]
    sevs = [_check_severity(s) for s in severities]
    table: dict[str, dict[int, float]] = {}
    with torch.no_grad(), model_guard(model):
        for name in names:
            table[name] = {}
            for sev in sevs:
                g = _seeded(seed, name, sev, x.device)
                correct = 0
                for i in range(0, len(x), batch_size):
                    xc = corrupt(x[i : i + batch_size], name, sev, generator=g, bounds=bounds)
                    correct += int((model(xc).argmax(1) == y[i : i + batch_size]).sum())
                table[name][sev] = correct / max(len(x), 1)
    return table


def mean_corruption_accuracy(table: dict[str, dict[int, float]]) -> float:
    """The average accuracy over every corruption and severity of a table (severity 0 excluded)."""
    vals = [a for row in table.values() for s, a in row.items() if int(s) != 0]
    return sum(vals) / len(vals) if vals else float("nan")


def corruption_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
    """The corruption keys of a run's metrics.json: the table (JSON severity keys), its mean and
    the number of images; ``kwargs`` go to :func:`corruption_accuracy`."""
    table = corruption_accuracy(model, x, y, **kwargs)
    return {"corruptions": {name: {str(s): a for s, a in row.items()} for name, row in table.items()},
            "mean_corruption_accuracy": mean_corruption_accuracy(table), "corruptions_n": len(y)}


__all__ = ["CORRUPTIONS", "PARAMS", "SEVERITIES", "corrupt", "corruption_accuracy", "corruption_metrics",
           "mean_corruption_accuracy"]
