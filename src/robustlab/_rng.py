"""Per-sample random numbers, so that an attack's result for a sample does not depend on the batch.

With a ``torch.Generator`` the random start of sample i depends on which samples share its batch
and in what order: evaluating 300 images in one call or in batches of 64 gives different numbers.
:class:`SampleRNG` instead derives every draw for sample i from ``(seed, id_i, draw number)`` with a
counter-based generator (a SplitMix64-style integer hash, computed with torch integer ops on the
samples' device), so sample i gets the same numbers in any batch, any split of the data set and any
process. The attacks draw through the functions below, which accept either kind of generator (or
None: torch's global generator), with the batch as the first dimension of every shape.

The draw number advances once per call; an attack must therefore make the same sequence of draw
calls whatever the batch holds (draws over a subset go through :meth:`SampleRNG.subset`).
"""

from __future__ import annotations

import math

import torch

_GAMMA = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
_M1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M2 = -7723592293110705685  # 0x94D049BB133111EB


def _wrap(v: int) -> int:
    """A Python integer as the int64 that the same 64-bit arithmetic would hold."""
    return (v + 2**63) % 2**64 - 2**63


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser (int64 arithmetic wraps, as the algorithm needs)."""
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


class SampleRNG:
    """Random numbers per sample: row i of every draw depends only on ``(seed, ids[i], draw number)``."""

    def __init__(self, seed: int, ids: torch.Tensor, _counter: list[int] | None = None,
                 _keys: torch.Tensor | None = None) -> None:
        if ids.dim() != 1:
            raise ValueError(f"sample ids must be a 1-D tensor, got shape {tuple(ids.shape)}")
        self.seed = int(seed)
        self.ids = ids.to(torch.int64)
        self._counter = [0] if _counter is None else _counter
        # each sample's key, hashed once: draws then cost two mixing rounds
        self._keys = _mix(self.ids * _GAMMA + _wrap(self.seed)) if _keys is None else _keys

    def subset(self, index: torch.Tensor) -> SampleRNG:
        """The generator of the samples ``index`` (sharing the draw counter)."""
        index = index.to(self.ids.device)
        return SampleRNG(self.seed, self.ids[index], self._counter, self._keys[index])

    def bits(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform random int64 words of ``shape`` (first dimension: the samples)."""
        shape = tuple(shape)
        if not shape or shape[0] != len(self.ids):
            raise ValueError(f"a per-sample draw needs shape (n={len(self.ids)}, ...), got {shape}")
        draw = self._counter[0]
        self._counter[0] += 1
        row = _mix(self._keys + _wrap(draw * _GAMMA))  # (n,)
        m = math.prod(shape[1:])
        j = torch.arange(1, m + 1, device=self.ids.device, dtype=torch.int64)
        return _mix(row[:, None] + j[None, :] * _GAMMA).view(shape)

    def uniform(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """Uniform in [0, 1) (24 random bits for float32/16, 53 for float64: never rounds up to 1)."""
        z = self.bits(shape)
        if dtype == torch.float64:
            return _shr(z, 11).to(torch.float64) * 2.0**-53
        return (_shr(z, 40).to(torch.float32) * 2.0**-24).to(dtype)


Generator = torch.Generator | SampleRNG | None


def rand(g: Generator, shape: tuple[int, ...] | torch.Size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Uniform in [0, 1), like ``torch.rand``."""
    if isinstance(g, SampleRNG):
        return g.uniform(shape, dtype).to(device)
    return torch.rand(shape, generator=g, dtype=dtype, device=device)


def randn(g: Generator, shape: tuple[int, ...] | torch.Size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Standard normal, like ``torch.randn`` (Box-Muller from two per-sample uniforms)."""
    if isinstance(g, SampleRNG):
        u1 = 1.0 - g.uniform(shape, torch.float64)  # (0, 1]
        u2 = g.uniform(shape, torch.float64)
        return ((-2.0 * u1.log()).sqrt() * torch.cos(2 * math.pi * u2)).to(device=device, dtype=dtype)
    return torch.randn(shape, generator=g, dtype=dtype, device=device)


def randint(g: Generator, low: int, high: int, shape: tuple[int, ...] | torch.Size, *, device: torch.device) -> torch.Tensor:
    """Integers in [low, high), like ``torch.randint``."""
    if isinstance(g, SampleRNG):
        u = g.uniform(shape, torch.float64)
        return (low + (u * (high - low)).floor().to(torch.int64)).clamp_max(high - 1).to(device)
    return torch.randint(low, high, tuple(shape), generator=g, device=device)


def exponential(g: Generator, shape: tuple[int, ...] | torch.Size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Exponential with rate 1, like ``Tensor.exponential_``."""
    if isinstance(g, SampleRNG):
        return (-torch.log1p(-g.uniform(shape, torch.float64))).to(device=device, dtype=dtype)
    return torch.empty(tuple(shape), dtype=dtype, device=device).exponential_(generator=g)


def subset(g: Generator, index: torch.Tensor) -> Generator:
    """The generator for the samples ``index`` of a batch (a torch.Generator is shared as is)."""
    return g.subset(index) if isinstance(g, SampleRNG) else g
