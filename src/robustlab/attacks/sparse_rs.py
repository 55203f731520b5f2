"""Sparse-RS (Croce, Singh, Andriushchenko, Flammarion & Hein 2022, "Sparse-RS: a versatile
framework for query-efficient sparse black-box adversarial attacks"), the L0 pixel attack.

A score-based black-box attack for the L0 threat model: at most ``eps`` pixels change, each to
anything in the bounds. It only reads the model's outputs (no gradient), so gradient masking
cannot stop it. Random search over pixel *sets*:

* **Start**: ``k = eps`` pixels at random, each set to a random vertex of the box (every channel
  to the low or the high bound, drawn independently): the extreme values move the logits most.
* **Step**: per sample, ``t`` of the ``k`` perturbed pixels go back to their clean values and
  ``t`` unperturbed pixels get fresh random vertices; the candidate replaces the current point
  when it is better (misclassified beats correctly classified; among equals, the higher loss).
  ``t = max(round(alpha * k), 1)`` with ``alpha = p_init / 2^j`` halved on the schedule of
  :func:`~robustlab.attacks.square.p_schedule` (Square's, rescaled to the query budget), so
  the search swaps many pixels early and single pixels late.
* When all pixels may change (``k`` >= pixels) the step re-draws the values of ``t`` pixels.

A pixel of an ``(N, C, H, W)`` batch is its ``C`` channels at one position; other shapes count
every coordinate as a pixel (:func:`robustlab.threat.pixels`). Queries are counted per sample:
one for the start plus one per iteration the sample is still attacked, per restart; a sample
stops as soon as it is misclassified (or reaches the target).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import _rng
from .._torch import check_fraction, check_int
from ..threat import ThreatModel, pixels
from ._best import BestPoints
from .base import Attack, OptGen, OptTensor
from .losses import LossFn
from .square import p_schedule, random_search


class SparseRS(Attack):
    """Score-based black-box random search over sets of at most ``eps`` pixels (L0).

    Args:
        threat: an L0 threat model (``ThreatModel("l0", k)``, k pixels).
        queries: model queries per sample and restart (including the start).
        p_init: initial fraction of the ``k`` pixels swapped per step (0.3 in the paper).
        restarts: independent runs, each only on samples not broken yet.
        loss: loss to increase, ``"margin"`` (default) or ``"ce"`` (or any loss of :mod:`.losses`).
        seed, eval_mode: see :class:`~robustlab.attacks.base.Attack`.
    """

    per_sample_rng = True

    name = "sparse-rs"
    uses_gradients = False
    norms = ("l0",)

    def __init__(
        self, threat: ThreatModel, queries: int = 1000, p_init: float = 0.3, restarts: int = 1,
        loss: str | LossFn = "margin", seed: int | None = None, eval_mode: bool = True,
    ) -> None:
        super().__init__(threat, loss=loss, eval_mode=eval_mode, seed=seed, early_stop=True)
        self.queries = check_int("queries", queries, 1)
        self.p_init = check_fraction("p_init", p_init, open_low=True)
        self.restarts = check_int("restarts", restarts, 1)

    def __repr__(self) -> str:
        t = self.threat
        return (f"{type(self).__name__}(norm={t.norm}, eps={t.eps:g}, queries={self.queries}, "
                f"p_init={self.p_init:g}, restarts={self.restarts}, loss={self.loss_name})")

    def _attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: OptTensor, generator: OptGen
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return random_search(model, self.loss_fn, x, pixels(x), y, target, self.restarts, self._run_once, generator)

    def _vertices(self, shape: tuple[int, ...], generator: _rng.Generator, like: torch.Tensor) -> torch.Tensor:
        """Random vertices of the box: every entry the low or the high bound."""
        lo, hi = self.threat.bounds
        bits = _rng.randint(generator, 0, 2, shape, device=like.device).to(like.dtype)
        return lo + (hi - lo) * bits

    def _run_once(
        self, query: Callable[..., tuple[torch.Tensor, torch.Tensor]], px: torch.Tensor, y: torch.Tensor,
        t: torch.Tensor | None, generator: _rng.Generator,
    ) -> tuple[BestPoints, torch.Tensor]:
        """One random search from a fresh start on pixel views ``px`` (N, C, P): the points it ends
        at (its best, as it only moves to better candidates) and the queries it spent per sample."""
        n, c, p = px.shape
        k = min(int(self.threat.eps), p)
        dev = px.device
        scores = _rng.rand(generator, (n, p), dtype=torch.float32, device=dev)
        mask = torch.zeros(n, p, dtype=torch.bool, device=dev)
        mask.scatter_(1, scores.topk(k, dim=1).indices, True)
        values = self._vertices((n, c, p), generator, px)
        start = torch.where(mask[:, None, :], values, px)
        cur = BestPoints(start, *query(start, y, t))
        qn = torch.ones(n, dtype=torch.long, device=dev)
        for i in range(self.queries - 1):
            act = cur.pending()  # host sync: one per query round (black-box cost)
            if act.numel() == 0:
                break
            g = _rng.subset(generator, act)
            m, v = mask[act], values[act]
            swap = max(int(round(p_schedule(self.p_init, i, self.queries - 1) * k)), 1)
            swap_out = min(swap, p - k)  # pixels that can join the set
            r = _rng.rand(g, (len(act), p), dtype=torch.float32, device=dev)
            if swap_out > 0:
                drop = r.masked_fill(~m, -1.0).topk(swap_out, dim=1).indices
                add = r.masked_fill(m, -1.0).topk(swap_out, dim=1).indices
                m_new = m.clone()
                m_new.scatter_(1, drop, False)
                m_new.scatter_(1, add, True)
                changed = add
            else:  # every pixel is in the set: re-draw some of their values
                m_new = m
                changed = r.topk(min(swap, k), dim=1).indices
            fresh = self._vertices((len(act), c, changed.shape[1]), g, px)
            v_new = v.scatter(2, changed[:, None, :].expand(-1, c, -1), fresh)
            cand = torch.where(m_new[:, None, :], v_new, px[act])
            loss, ok = query(cand, y[act], None if t is None else t[act])
            qn[act] += 1
            better = (ok & ~cur.succ[act]) | ((ok == cur.succ[act]) & (loss > cur.loss[act]))
            cur.update(cand, loss, ok, act)
            keep = better.nonzero().flatten()
            mask[act[keep]] = m_new[keep]
            values[act[keep]] = v_new[keep]
        return cur, qn
