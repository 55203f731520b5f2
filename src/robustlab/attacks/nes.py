"""NES: projected gradient ascent on a gradient *estimated from queries* (Ilyas et al. 2018,
"Black-box adversarial attacks with limited queries and information").

The gradient of the attack loss is estimated with antithetic Gaussian sampling (natural
evolution strategies)::

    g = 1 / (2 * sigma * P) * sum_{i=1..P} [L(x + sigma u_i) - L(x - sigma u_i)] u_i,   u_i ~ N(0, I)

with ``P = samples / 2`` pairs, and drives PGD steps (sign for Linf, normalised for L2) with a
projection onto the ball and the bounds after each step. Only model outputs are used: every
forward runs under ``torch.no_grad``. Query points ``x +- sigma u`` are clipped to the input
bounds (the model is never queried outside its domain).

Per sample the attack keeps the best point it has seen (misclassified beats correctly classified,
then higher loss) and stops as soon as the sample is misclassified (or reaches the target).
Queries per sample: ``samples + 1`` per step it is attacked (estimate + evaluation of the new
point); the clean prediction that picks the samples to attack is not counted (as in Square).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _rng
from .._torch import check_float, check_int
from ..threat import ThreatModel
from ._best import BestPoints
from .base import Attack, OptGen, OptTensor, is_adversarial, resolve_step_size
from .losses import LossFn


class NES(Attack):
    """Query-only gradient estimation + PGD.

    Args:
        threat: Linf or L2 perturbation set.
        steps: PGD steps.
        samples: loss evaluations per gradient estimate (``samples / 2`` antithetic pairs; an
            even number >= 2).
        sigma: the finite-difference scale (in input units).
        step_size: absolute step, or ``rel_step_size`` a fraction of eps; default
            ``max(2.5 / steps, 0.1) * eps`` (estimated gradients are noisy, so steps stay large).
        loss: ``"margin"`` (default) or ``"ce"`` (or any loss of :mod:`.losses`).
        batch_size: images per forward pass when scoring the samples.
        seed, eval_mode: see :class:`~robustlab.attacks.base.Attack`.
    """

    per_sample_rng = True

    name = "nes"
    uses_gradients = False

    def __init__(
        self, threat: ThreatModel, steps: int = 50, samples: int = 50, sigma: float = 0.001,
        step_size: float | None = None, rel_step_size: float | None = None,
        loss: str | LossFn = "margin", seed: int | None = None, eval_mode: bool = True, batch_size: int = 4096,
    ) -> None:
        super().__init__(threat, loss=loss, eval_mode=eval_mode, seed=seed, early_stop=True)
        self.steps = check_int("steps", steps, 1)
        self.samples = check_int("samples", samples, 2)
        if self.samples % 2:
            raise ValueError(f"samples must be even (antithetic pairs), got {samples}")
        self.sigma = check_float("sigma", sigma, 0.0, strict=True)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.step_size = resolve_step_size(step_size, rel_step_size, threat.eps, max(2.5 / self.steps, 0.1))

    def __repr__(self) -> str:
        t = self.threat
        return (
            f"{type(self).__name__}(norm={t.norm}, eps={t.eps:g}, steps={self.steps}, samples={self.samples}, "
            f"sigma={self.sigma:g}, step_size={self.step_size:g}, loss={self.loss_name})"
        )

    def _scores(
        self, model: nn.Module, z: torch.Tensor, ys: torch.Tensor, ts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and success of a batch of points, forwarded in chunks without gradients."""
        losses, succ = [], []
        with torch.no_grad():
            for i in range(0, z.shape[0], self.batch_size):
                logits = model(z[i : i + self.batch_size])
                yy = ys[i : i + self.batch_size]
                tt = None if ts is None else ts[i : i + self.batch_size]
                losses.append(self.loss_fn(logits, yy, tt).to(z.dtype))
                succ.append(is_adversarial(logits, yy, tt))
        return torch.cat(losses), torch.cat(succ)

    def _attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: OptTensor, generator: OptGen
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        pairs = self.samples // 2
        best = BestPoints(x.clone(), *self._scores(model, x, y, target))
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        xa = x.clone()
        for _ in range(self.steps):
            act = best.pending()  # host sync: one per step (black-box cost)
            if act.numel() == 0:
                break
            k = act.numel()
            xs, xc, ys = x[act], xa[act], y[act]
            ts = None if target is None else target[act]
            u = _rng.randn(_rng.subset(generator, act), (k, pairs, *x.shape[1:]), dtype=x.dtype, device=x.device)
            centre = xc[:, None]
            pts = torch.cat([self.threat.clip_bounds(centre + self.sigma * u), self.threat.clip_bounds(centre - self.sigma * u)], 1)
            # every query point is scored against its sample's label (and target)
            ys_pts = ys.repeat_interleave(self.samples)
            ts_pts = None if ts is None else ts.repeat_interleave(self.samples)
            loss, _ = self._scores(model, pts.reshape(k * self.samples, *x.shape[1:]), ys_pts, ts_pts)
            loss = loss.view(k, self.samples)
            diff = (loss[:, :pairs] - loss[:, pairs:]) / (2 * self.sigma * pairs)
            grad = (diff.view(k, pairs, *([1] * (x.dim() - 1))) * u).sum(1)
            xc = self.threat.project(xc + self.step_size * self.threat.steepest_direction(grad), xs)
            lc, sc = self._scores(model, xc, ys, ts)
            queries[act] += self.samples + 1
            xa[act] = xc
            best.update(xc, lc, sc, act)
        return best.x, queries
