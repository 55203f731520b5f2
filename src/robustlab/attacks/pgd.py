"""Projected gradient descent (Madry et al. 2018), Linf, L2 and L1, with restarts and early stop.

For the L1 threat model the step is SLIDE's (Tramer & Boneh 2019, "Adversarial training and
robustness for multiple perturbations"): sign of the gradient on its top ``1 - sparsity``
fraction of coordinates (those free to move inside the bounds), normalised to unit L1 norm, then
the exact projection onto the L1 ball intersected with the box.

Each step is one forward+backward on the current iterate; the same pass tells whether the iterate
already fools the model and how high its loss is, so the attack keeps, per sample, the best
point it has *seen* (a successful point beats an unsuccessful one; among equals the higher loss
wins) at no extra cost. One forward without backward per restart scores the final iterate.
With ``track_best=False`` (plain Madry PGD, what adversarial training uses) the last restart's
final iterate goes unscored and every sample not fooled by an earlier restart (with one restart:
every sample) gets it, so ``attack(model, x, y)`` costs exactly k forward+backward passes.

Without ``early_stop`` the step loop never synchronises with the host (no ``.item()``, no
boolean indexing): every step is exactly one forward+backward on the whole batch. With
``early_stop=True`` samples that are already adversarial are frozen and the forward/backward
runs only on the still-active subset, which is where a fixed-budget robust-accuracy evaluation
saves most of its time; the robust accuracy is the same either way.
"""

from __future__ import annotations

import torch
from torch import nn

from .._torch import check_fraction, check_int, per_sample
from ..threat import ThreatModel
from ._best import BestPoints
from .base import Attack, Crafted, OptGen, OptTensor, is_adversarial, resolve_step_size
from .losses import LossFn


class PGD(Attack):
    """Projected gradient ascent on the attack loss inside the threat model's ball.

    Args:
        threat: the perturbation set (Linf: signed-gradient steps; L2: normalised-gradient steps;
            L1: sparse SLIDE steps, see ``sparsity``; projection onto the ball and the bounds
            after every step).
        steps: iterations per restart.
        step_size: absolute step size, or
        rel_step_size: step size as a fraction of eps. Default ``2.5 / steps`` (Madry et al.),
            i.e. a step of ``2.5 * eps / steps``.
        random_start: start from a uniform point of the ball (otherwise from ``x``).
        restarts: independent runs; each sample keeps its best result over all of them.
        loss: loss to ascend (see :mod:`.losses`). Targeted attacks: pass ``target=`` with
            ``"ce"`` (minimise CE(target)) or ``"ce-difference"`` (maximise CE(y) - CE(target)).
        early_stop: freeze samples as soon as they are adversarial and compute only on the rest.
        track_best: return, per sample, the best point seen, scored by one extra forward pass of
            the final iterate (default). False: plain PGD -- the final iterate, unscored (so the
            step loop is the whole cost; ``run`` then measures success on the returned points).
        eval_mode, seed: see :class:`~robustlab.attacks.base.Attack`.
        eot: average every gradient, loss and success decision over this many forward passes
            (Expectation over Transformation, for randomised models; 1 = plain PGD).
        sparsity: L1 only: the percentile q of SLIDE as a fraction -- each step moves the
            ``1 - sparsity`` fraction of coordinates with the largest |gradient| (at least one).
            Default 0.99 for L1 (SLIDE's and foolbox's); an error for Linf / L2.
    """

    per_sample_rng = True

    name = "pgd"
    norms: tuple[str, ...] = ("linf", "l2", "l1")
    _default_rel: float = 2.5  # default step = _default_rel * eps / steps

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 40,
        step_size: float | None = None,
        rel_step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str | LossFn = "ce", early_stop: bool = False, eval_mode: bool = True, seed: int | None = None,
        track_best: bool = True,
        eot: int = 1,
        sparsity: float | None = None,
    ) -> None:
        super().__init__(threat, loss=loss, eval_mode=eval_mode, seed=seed, early_stop=early_stop, eot=eot)
        if sparsity is not None and threat.norm != "l1":
            raise ValueError(f"sparsity applies to the L1 threat model only, got sparsity={sparsity!r} for {threat.norm}")
        self.sparsity = 0.99 if sparsity is None else check_fraction("sparsity", sparsity, open_high=True)
        self.track_best = bool(track_best)
        self.steps = check_int("steps", steps, 1)
        self.restarts = check_int("restarts", restarts, 1)
        self.random_start = bool(random_start)
        self.step_size = resolve_step_size(step_size, rel_step_size, threat.eps, self._default_rel / self.steps)

    def __repr__(self) -> str:
        t = self.threat
        sp = f", sparsity={self.sparsity:g}" if t.norm == "l1" else ""
        return (
            f"{type(self).__name__}(norm={t.norm}, eps={t.eps:g}, steps={self.steps}, "
            f"step_size={self.step_size:g}, restarts={self.restarts}, loss={self.loss_name}{sp}{self._eot_repr()})"
        )

    # --- hooks for variants (MIM) -------------------------------------------------------------
    def _init_state(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per-sample optimiser state for one restart (None for plain PGD)."""
        return None

    def _direction(
        self, grad: torch.Tensor, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The step direction (unit norm in the threat's norm) and the updated state."""
        if self.threat.norm == "l1":
            return self.threat.sparse_direction(grad, 1.0 - self.sparsity), state
        return self.threat.steepest_direction(grad), state

    def _movable(self, grad: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
        """L1: the gradient without the coordinates the bounds block (a sparse step must not be
        spent on them); Linf / L2: ``grad`` itself."""
        return self.threat.free_gradient(grad, xa) if self.threat.norm == "l1" else grad

    # --- the attack ---------------------------------------------------------------------------
    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: OptTensor, generator: OptGen) -> Crafted:
        best = BestPoints.unscored(x)
        for r in range(self.restarts):
            # Draw the start for the whole batch, so that early stop or not, the same seed gives
            # the same starts (and hence the same trajectories).
            start = self.threat.random_start(x, generator) if self.random_start else x.clone()
            idx = None
            if self.early_stop:
                idx = best.pending()
                if idx.numel() == 0:
                    break
            # Plain PGD: the last restart leaves its final iterate unscored; samples fooled by an
            # earlier restart keep that point, all others get the final iterate. Earlier
            # restarts are scored, or a success could be lost to the next one.
            unscored = not self.track_best and r == self.restarts - 1
            self._run_once(model, x, y, target, start, idx, best, best.succ.clone() if unscored else None)
        return Crafted(best.x, None, best.succ if self.track_best else None)

    def _run_once(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        start: torch.Tensor,
        idx: torch.Tensor | None,
        best: BestPoints,
        keep_final: torch.Tensor | None = None,
    ) -> None:
        def sub(t: torch.Tensor | None) -> torch.Tensor | None:
            return t if (t is None or idx is None) else t[idx]

        xs, ys, ts, xa = sub(x), sub(y), sub(target), sub(start)
        assert xs is not None and ys is not None and xa is not None
        state = self._init_state(xa)
        # An unscored run without early stop returns its final iterate whatever it sees: no
        # per-step bookkeeping at all, only the forward+backward and the projected step.
        track = keep_final is None or self.early_stop
        for _ in range(self.steps):
            loss, grad, logits = self._loss_and_grad(model, xa, ys, ts)
            if not track:
                direction, state = self._direction(self._movable(grad, xa), state)
                xa = self.threat.project(xa.add(direction, alpha=self.step_size), xs)
                continue
            succ = is_adversarial(logits, ys, ts)
            best.update(xa, loss, succ, idx)
            if self.early_stop:
                assert idx is not None
                keep = ~succ
                if not bool(keep.all()):  # host sync: only in early-stop mode
                    idx = idx[keep]
                    if idx.numel() == 0:
                        return
                    xa, grad, xs, ys = xa[keep], grad[keep], xs[keep], ys[keep]
                    ts = None if ts is None else ts[keep]
                    state = None if state is None else state[keep]
            direction, state = self._direction(self._movable(grad, xa), state)
            xa = self.threat.project(xa.add(direction, alpha=self.step_size), xs)
        if keep_final is not None:
            # No scoring forward pass: samples marked in keep_final keep their best point, all
            # others get the last iterate.
            keep = keep_final if idx is None else keep_final[idx]
            if idx is None:
                torch.where(per_sample(keep, xa), best.x, xa, out=best.x)
            else:
                best.x[idx] = torch.where(per_sample(keep, xa), best.x[idx], xa)
            return
        with torch.no_grad():
            logits = self._logits(model, xa)
            loss = self.loss_fn(logits, ys, ts)
        best.update(xa, loss, is_adversarial(logits, ys, ts), idx)
