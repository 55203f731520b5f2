"""Square Attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"), Linf and L2.

A score-based black-box attack: it only reads the model's outputs (every forward runs under
``torch.no_grad``; no gradient is ever computed), so it is immune to gradient masking and is the
standard sanity check for white-box results. Random search over localised square-shaped updates:

* **Linf**: start from vertical stripes (each column of each channel at ``x +- eps``), then at
  every iteration pick, per sample, a random ``s x s`` window and set it (all channels) to
  ``x + eps * sign`` with one random sign per channel; keep the candidate if the loss improves.
  Candidates that would not change the current point (the window already at that vertex) get the
  opposite signs instead, so no query is wasted on a no-op.
* **L2**: the paper's scheme: start from a grid of "meta pseudo-Gaussian" blocks (two opposite
  rectangles of ``1 / r^2`` concentric rings); each iteration takes two random windows, moves the
  perturbation mass of the second window into the first (a new random block pattern added to the
  first window's old content), and rescales the whole perturbation to the sphere of radius eps.

The window side ``s`` follows the paper's schedule: ``p = p_init / 2^j`` (halved at 10, 50, 200,
500, 1000, 2000, 4000, 6000, 8000 of 10000 iterations, rescaled to the query budget unless
``rescale_schedule=False``, as in AutoAttack's standard version), ``s = round(sqrt(p * pixels))``.
Window positions and signs are drawn per sample (the reference draws one position per batch).
Inputs that are not ``(N, C, H, W)`` are viewed as images: ``(N, H, W)`` as one channel, ``(N, D)``
as a ``1 x D`` strip.

Queries are counted per sample: one for the initial point plus one per iteration the sample is
still being attacked (the clean prediction that picks the samples to attack is not counted), per
restart. A sample stops as soon as it is misclassified (or reaches the target).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn

from .. import _rng
from .._torch import check_fraction, check_int, per_sample
from ..threat import ThreatModel
from ._best import BestPoints
from .base import Attack, OptGen, OptTensor, is_adversarial
from .losses import LossFn


def p_schedule(p_init: float, it: int, n_iters: int, rescale: bool = True) -> float:
    """The fraction of pixels a square covers at iteration ``it`` of ``n_iters`` (paper schedule,
    defined on 10,000 iterations; rescaled to ``n_iters`` unless ``rescale`` is False)."""
    if rescale:
        it = int(it / max(n_iters, 1) * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


def random_search(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, view: torch.Tensor, y: torch.Tensor, target: OptTensor,
    restarts: int, run_once: Callable[..., tuple[BestPoints, torch.Tensor]], generator: OptGen,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A score-based random search with restarts (Square, Sparse-RS) on ``view``, a reshaped view of
    ``x`` the search works in: the starting points are scored, then each ``run_once(query, view,
    y, target, generator)`` runs on the samples not broken yet and offers its points. ``query(points,
    y, target) -> (loss, success)`` calls the model without gradients on points reshaped as ``x``.
    Returns the best points (shaped as ``x``) and the queries spent per sample."""

    def query(z: torch.Tensor, ys: torch.Tensor, ts: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits = model(z.reshape(z.shape[0], *x.shape[1:]))
        return loss_fn(logits, ys, ts).to(x.dtype), is_adversarial(logits, ys, ts)

    best = BestPoints(view.clone(), *query(view, y, target))
    queries = torch.zeros(len(x), dtype=torch.long, device=x.device)
    for _ in range(restarts):
        idx = best.pending()
        if idx.numel() == 0:
            break
        ts = None if target is None else target[idx]
        run, qr = run_once(query, view[idx], y[idx], ts, _rng.subset(generator, idx))
        best.update(run.x, run.loss, run.succ, idx)
        queries[idx] += qr
    return best.x.reshape(x.shape), queries


def _rings(rows: int, cols: int) -> torch.Tensor:
    """A (rows, cols) block of concentric rectangles weighted 1/r^2 (peak in the centre), unit L2."""
    d = torch.zeros(rows, cols, dtype=torch.float64)
    if rows == 0 or cols == 0:
        return d
    cr, cc = rows // 2, cols // 2
    for r in range(max(rows // 2 + 1, cols // 2 + 1)):
        d[max(cr - r, 0) : min(cr - r + 2 * r + 1, rows), max(cc - r, 0) : min(cc - r + 2 * r + 1, cols)] += 1.0 / (r + 1) ** 2
    return d / d.norm().clamp_min(1e-12)


@lru_cache(maxsize=64)
def _block(s: int) -> torch.Tensor:
    """The meta pseudo-Gaussian block: the top half rings, the bottom half negative rings, unit L2."""
    d = torch.zeros(s, s, dtype=torch.float64)
    d[: s // 2] = _rings(s // 2, s)
    d[s // 2 :] = -_rings(s - s // 2, s)
    return d / d.norm().clamp_min(1e-12)


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """A (N, C, H, W) view of x (see the module docstring)."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 2:
        return x.view(x.shape[0], 1, 1, x.shape[1])
    return x.reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])


def _window_index(vh: torch.Tensor, vw: torch.Tensor, s: int, w: int) -> torch.Tensor:
    """Flat (row * w + col) indices of per-sample s x s windows with top-left (vh, vw): (n, s*s)."""
    ar = torch.arange(s, device=vh.device)
    rows = vh[:, None] + ar
    cols = vw[:, None] + ar
    return (rows[:, :, None] * w + cols[:, None, :]).reshape(len(vh), s * s)


class Square(Attack):
    """Score-based black-box random search with square updates.

    Args:
        threat: Linf or L2 perturbation set.
        queries: model queries per sample and restart (including the initial point).
        p_init: initial fraction of pixels a square covers (0.8 in the paper for Linf on
            ImageNet, 0.05 for CIFAR-10 in AutoAttack; larger helps on small images).
        restarts: independent runs, each only on samples not broken yet.
        rescale_schedule: stretch the p schedule (defined on 10,000 iterations) to ``queries``
            (default); False keeps it on absolute iteration numbers, as AutoAttack's standard
            version does (``resc_schedule=False``).
        loss: loss to increase, ``"margin"`` (default) or ``"ce"`` (or any loss of :mod:`.losses`).
        seed, eval_mode: see :class:`~robustlab.attacks.base.Attack`.

    Returns ``(x_adv, queries)`` from ``_attack``; ``run`` puts the query counts into
    :attr:`AttackResult.queries`.
    """

    per_sample_rng = True

    name = "square"
    uses_gradients = False

    def __init__(
        self, threat: ThreatModel, queries: int = 1000, p_init: float = 0.8, restarts: int = 1,
        loss: str | LossFn = "margin", seed: int | None = None, eval_mode: bool = True, rescale_schedule: bool = True,
    ) -> None:
        # The search always stops per sample on success (early_stop is always on).
        super().__init__(threat, loss=loss, eval_mode=eval_mode, seed=seed, early_stop=True)
        self.queries = check_int("queries", queries, 1)
        self.p_init = check_fraction("p_init", p_init, open_low=True)
        self.restarts = check_int("restarts", restarts, 1)
        if not isinstance(rescale_schedule, bool):
            raise ValueError(f"rescale_schedule must be True or False, got {rescale_schedule!r}")
        self.rescale_schedule = rescale_schedule

    def __repr__(self) -> str:
        t = self.threat
        return (
            f"{type(self).__name__}(norm={t.norm}, eps={t.eps:g}, queries={self.queries}, "
            f"p_init={self.p_init:g}, restarts={self.restarts}, loss={self.loss_name}"
            f"{'' if self.rescale_schedule else ', rescale_schedule=False'})"
        )

    # --- the attack ---------------------------------------------------------------------------
    def _attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: OptTensor, generator: OptGen
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return random_search(model, self.loss_fn, x, _as_images(x), y, target, self.restarts, self._run_once, generator)

    def _run_once(
        self,
        query: Callable[..., tuple[torch.Tensor, torch.Tensor]],
        x: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor | None,
        generator: _rng.Generator,
    ) -> tuple[BestPoints, torch.Tensor]:
        """One random search from a fresh start (``query(points, y, target) -> (loss, success)``):
        the points it ends at, each sample's best, and the queries it spent per sample."""
        n, c, h, w = x.shape
        eps = self.threat.eps
        dev, dt = x.device, x.dtype
        if self.threat.norm == "linf":
            signs = _rng.randint(generator, 0, 2, (n, c, 1, w), device=dev).to(dt) * 2 - 1
            xb = self.threat.project(x + eps * signs, x)
        else:
            xb = self._l2_init(x, generator)
        # The search moves only to improving candidates, so its current point is its best one.
        cur = BestPoints(xb, *query(xb, y, t))
        qn = torch.ones(n, dtype=torch.long, device=dev)
        n_pix = h * w
        for i in range(self.queries - 1):
            act = cur.pending()  # host sync: one per query round (black-box cost)
            if act.numel() == 0:
                break
            xa, xba = x[act], cur.x[act]
            ta = None if t is None else t[act]
            p = p_schedule(self.p_init, i, self.queries - 1, self.rescale_schedule)
            if self.threat.norm == "linf":
                s = min(max(int(round(math.sqrt(p * n_pix))), 1), h, w)
                x_new = self._linf_candidate(xa, xba, s, _rng.subset(generator, act))
            else:
                s = max(int(round(math.sqrt(p * n_pix))), 3)
                s = min(s + 1 if s % 2 == 0 else s, h, w)
                x_new = self._l2_candidate(xa, xba, s, _rng.subset(generator, act))
            loss, ok = query(x_new, y[act], ta)
            qn[act] += 1
            cur.update(x_new, loss, ok, act)
        return cur, qn

    # --- Linf -----------------------------------------------------------------------------------
    def _linf_candidate(self, x: torch.Tensor, xb: torch.Tensor, s: int, generator) -> torch.Tensor:
        n, c, h, w = x.shape
        dev, dt = x.device, x.dtype
        vh = _rng.randint(generator, 0, h - s + 1, (n,), device=dev)
        vw = _rng.randint(generator, 0, w - s + 1, (n,), device=dev)
        rows = torch.arange(h, device=dev)[None, :]
        cols = torch.arange(w, device=dev)[None, :]
        in_h = (rows >= vh[:, None]) & (rows < vh[:, None] + s)
        in_w = (cols >= vw[:, None]) & (cols < vw[:, None] + s)
        mask = (in_h[:, :, None] & in_w[:, None, :])[:, None].to(dt)  # (n, 1, h, w)
        sign = _rng.randint(generator, 0, 2, (n, c, 1, 1), device=dev).to(dt) * 2 - 1
        step = mask * (2 * self.threat.eps) * sign
        cand = self.threat.project(xb + step, x)
        unchanged = (cand == xb).flatten(1).all(1)
        flipped = self.threat.project(xb - step, x)
        return torch.where(per_sample(unchanged, cand), flipped, cand)

    # --- L2 -------------------------------------------------------------------------------------
    def _normalised(self, delta: torch.Tensor) -> torch.Tensor:
        nrm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        return delta / per_sample(nrm, delta)

    def _l2_init(self, x: torch.Tensor, generator) -> torch.Tensor:
        n, c, h, w = x.shape
        dev, dt = x.device, x.dtype
        s = max(min(h, w) // 5, 1)
        nh, nw = h // s, w // s
        sh, sw = (h - nh * s) // 2, (w - nw * s) // 2
        delta = torch.zeros_like(x)
        base = _block(s).to(device=dev, dtype=dt)
        for a in range(nh):
            for b in range(nw):
                flip = _rng.randint(generator, 0, 2, (n, 1, 1, 1), device=dev).bool()  # per sample
                blk = torch.where(flip, base.t(), base)
                sign = _rng.randint(generator, 0, 2, (n, c, 1, 1), device=dev).to(dt) * 2 - 1
                r0, c0 = sh + a * s, sw + b * s
                delta[:, :, r0 : r0 + s, c0 : c0 + s] += blk * sign
        return self.threat.clip_bounds(x + self.threat.eps * self._normalised(delta))

    def _l2_candidate(self, x: torch.Tensor, xb: torch.Tensor, s: int, generator) -> torch.Tensor:
        n, c, h, w = x.shape
        dev, dt = x.device, x.dtype
        eps = self.threat.eps
        rnd = lambda hi: _rng.randint(generator, 0, hi, (n,), device=dev)  # noqa: E731
        idx1 = _window_index(rnd(h - s + 1), rnd(w - s + 1), s, w)[:, None, :].expand(n, c, s * s)
        idx2 = _window_index(rnd(h - s + 1), rnd(w - s + 1), s, w)[:, None, :].expand(n, c, s * s)
        delta = (xb - x).flatten(2).clone()  # (n, c, h*w)
        win1 = delta.gather(2, idx1)  # (n, c, s*s)
        norm_win1 = win1.norm(dim=2, keepdim=True)
        norm_image = delta.flatten(1).norm(dim=1)
        union = torch.zeros_like(delta).scatter_(2, idx1, 1.0).scatter_(2, idx2, 1.0)
        norm_windows = (delta * union).flatten(1).norm(dim=1)
        base = _block(s).to(device=dev, dtype=dt)
        flip = _rng.randint(generator, 0, 2, (n, 1, 1), device=dev).bool()
        blk = torch.where(flip, base.t().reshape(1, 1, -1), base.reshape(1, 1, -1))  # (n, 1, s*s)
        sign = _rng.randint(generator, 0, 2, (n, c, 1), device=dev).to(dt) * 2 - 1
        new = blk * sign + win1 / (norm_win1 + 1e-12)
        budget = ((eps**2 - norm_image**2).clamp_min(0) / c + norm_windows**2).sqrt()
        new = new / (new.norm(dim=2, keepdim=True) + 1e-12) * budget[:, None, None]
        delta.scatter_(2, idx2, 0.0)
        delta.scatter_(2, idx1, new)
        delta = delta.view_as(x)
        return self.threat.clip_bounds(x + eps * self._normalised(delta))
