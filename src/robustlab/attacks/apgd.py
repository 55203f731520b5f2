"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"), Linf, L2 and L1, untargeted and targeted (APGD-T).

APGD is PGD without a step size to tune: it starts with a step of ``2 * eps`` and halves it, per
sample, at checkpoints ``w_j ~ p_j * steps`` with ``p_0 = 0``, ``p_1 = 0.22`` and
``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` whenever

1. the loss increased in at most a fraction ``rho`` of the steps since the last checkpoint, or
2. the step was not halved at the last checkpoint and the best loss has not improved since,

and after halving it continues from the best point found so far. The update carries momentum::

    z_{k+1} = P(x_k + eta_k * direction(grad f(x_k)))
    x_{k+1} = P(x_k + alpha * (z_{k+1} - x_k) + (1 - alpha) * (x_k - x_{k-1}))

(``alpha = 1`` on the first step; ``direction`` = sign for Linf, ``g / ||g||_2`` for L2; ``P`` the
projection onto the ball and the bounds). Integer checkpoint spacing follows the reference
implementation (first interval ``max(int(0.22 N), 1)``, shrinking by ``max(int(0.03 N), 1)`` down
to ``max(int(0.06 N), 1)``). One deliberate difference: the "loss increased" count for the first
interval compares the first iterate with the starting point's loss (the reference compares it
with 0).

Untargeted runs ascend CE or DLR; ``targeted_classes = k > 0`` gives APGD-T: for each of the
``k`` highest-scoring non-true classes (by the clean logits) a separate run ascends the targeted
loss (targeted DLR for ``loss="dlr"``, ``-CE(target)`` for ``"ce"``), and a sample counts as broken
as soon as it is *misclassified* (AutoAttack's semantics: the targets are a means to an
untargeted end). Passing ``target=`` to the attack instead makes it a plain targeted attack
(success = prediction equals the target).

APGD-L1 (Croce & Hein 2021, "Mind the box: l1-APGD for sparse adversarial attacks on image
classifiers") differs as in the reference: no momentum; the step is ``eta`` times the sign of the
gradient on its top-k coordinates (those the box lets move), normalised to unit L1 norm, then the
exact projection onto the L1 ball intersected with the box; every ``max(int(0.04 N), 1)``
iterations k is set to ``||x_best - x||_0 / 1.5`` (starting at 20% of the coordinates) and, per
sample, if that sparsity fell by more than 5% the step is reset to ``eps`` and the run continues
from the best point, otherwise the step shrinks by 1.5 (within ``[eps / 10, eps]``). With
``large_eps`` (AutoAttack's ``use_largereps``, on by default for L1) the iterations are split
30/30/40% over radii ``3 eps``, ``2 eps`` and ``eps``, each stage starting from the highest-loss
point of the previous one projected onto the smaller ball; only the last stage (radius ``eps``)
can declare a sample broken.

Per sample the attack keeps the best point it has seen: any misclassified iterate beats every
correctly classified one; among equals, the higher loss wins. A sample the model already
misclassifies is returned as it is, except under EOT (``eot > 1``), where the first run attacks
every sample (any successful iterate then replaces the input; a correctly classified one never does). Restarts and target classes only
run on samples not broken yet. Without ``early_stop`` the step loop never synchronises with the
host (the checkpoint schedule is fixed in advance and the step-size logic is per-sample
``torch.where``); with ``early_stop=True`` fooled samples leave the active set after each step.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from .. import _rng
from .._torch import check_fraction, check_int, per_sample
from ..threat import ThreatModel
from ._best import BestPoints
from .base import Attack, OptGen, OptTensor, is_adversarial, refuse_target, target_runs
from .losses import LossFn, get_loss


def checkpoints(steps: int) -> dict[int, int]:
    """The iterations (0-based, after whose update the check runs) -> length of the interval
    they close, as in the reference implementation."""
    first = max(int(0.22 * steps), 1)
    minimum = max(int(0.06 * steps), 1)
    decrease = max(int(0.03 * steps), 1)
    out: dict[int, int] = {}
    k, counter = first, 0
    for i in range(steps):
        counter += 1
        if counter == k:
            out[i] = k
            k = max(k - decrease, minimum)
            counter = 0
    return out


def _rows(
    idx: OptTensor, x: torch.Tensor, y: torch.Tensor, loss_target: OptTensor, succ_target: OptTensor, start: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, OptTensor, OptTensor, torch.Tensor]:
    """The inputs of a run restricted to the samples ``idx`` (indices or a mask; all when None)."""
    if idx is None:
        return x, y, loss_target, succ_target, start
    lt = None if loss_target is None else loss_target[idx]
    stt = None if succ_target is None else succ_target[idx]
    return x[idx], y[idx], lt, stt, start[idx]


def _active(idx: OptTensor, keep: torch.Tensor, n: int) -> torch.Tensor:
    """The batch indices of the samples still active: those of ``idx`` (all ``n`` when None) where ``keep``."""
    return (torch.arange(n, device=keep.device) if idx is None else idx)[keep]


class APGD(Attack):
    """Auto-PGD: step-size-free PGD with momentum and per-sample step halving.

    Args:
        threat: the perturbation set (Linf or L2).
        steps: iterations per run (one forward+backward each, plus one for the start point).
        restarts: random starts per target (each only on samples not broken yet).
        loss: ``"ce"`` or ``"dlr"`` (any name of :mod:`.losses` or a callable works too). DLR needs
            3 classes (4 for the targeted form); with fewer the attack falls back to the margin
            loss and warns.
        targeted_classes: 0 for the untargeted attack; ``k > 0`` for APGD-T over the top-k
            non-true classes (capped at classes - 1).
        rho: the oscillation threshold of condition 1 (fraction of increasing steps).
        momentum: ``alpha`` in the update above (1 = no momentum).
        seed, early_stop, eval_mode: see :class:`~robustlab.attacks.base.Attack`.
        eot: average every gradient, loss and success decision (and the clean logits that pick
            the targets) over this many forward passes (EOT, for randomised models; AutoAttack's
            ``version='rand'`` uses 20). 1 = plain APGD.
        large_eps: L1 only: run the 3 eps / 2 eps / eps schedule described above. Default (None):
            on for L1 when ``steps >= 10``; True with Linf / L2 is an error.
    """

    per_sample_rng = True

    name = "apgd"
    norms = ("linf", "l2", "l1")

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 100,
        restarts: int = 1,
        loss: str | LossFn = "ce",
        targeted_classes: int = 0,
        rho: float = 0.75,
        momentum: float = 0.75,
        seed: int | None = None, early_stop: bool = False, eval_mode: bool = True, eot: int = 1,
        large_eps: bool | None = None,
    ) -> None:
        super().__init__(threat, loss=loss, eval_mode=eval_mode, seed=seed, early_stop=early_stop, eot=eot)
        self.steps = check_int("steps", steps, 1)
        if large_eps and threat.norm != "l1":
            raise ValueError(f"large_eps applies to the L1 threat model only, got large_eps=True for {threat.norm}")
        if large_eps and self.steps < 3:
            raise ValueError(f"large_eps needs steps >= 3 (one per stage), got steps={steps!r}")
        self.large_eps = (threat.norm == "l1" and self.steps >= 10) if large_eps is None else bool(large_eps)
        self.restarts = check_int("restarts", restarts, 1)
        self.targeted_classes = check_int("targeted_classes", targeted_classes, 0)
        self.rho = check_fraction("rho", rho)
        self.momentum = check_fraction("momentum", momentum, open_low=True)
        self.name = "apgd-" + ("t-" if self.targeted_classes else "") + str(self.loss_name).lower()

    def __repr__(self) -> str:
        t = self.threat
        return (
            f"{type(self).__name__}(norm={t.norm}, eps={t.eps:g}, steps={self.steps}, "
            f"restarts={self.restarts}, loss={self.loss_name}{self._targets_repr()}{self._eot_repr()})"
        )

    # --- the attack ---------------------------------------------------------------------------
    def _loss_for(self, num_classes: int, targeted: bool) -> LossFn:
        needed = 4 if targeted else 3
        if str(self.loss_name).lower() == "dlr" and num_classes < needed:
            warnings.warn(
                f"APGD: the {'targeted ' if targeted else ''}DLR loss needs >= {needed} classes, the model "
                f"gives {num_classes}; using the margin loss instead",
                RuntimeWarning,
                stacklevel=4,
            )
            return get_loss("margin")
        return self.loss_fn

    def _start(self, x: torch.Tensor, generator: _rng.Generator) -> torch.Tensor:
        """A random point on the sphere of the ball (as the reference), clipped to the bounds;
        for L1 a Gaussian point projected onto the (first stage's) ball and the box."""
        if self.threat.norm == "l1":
            t = _rng.randn(generator, x.shape, dtype=x.dtype, device=x.device)
            return self.threat.project(x + t, x, self._l1_stages()[0][0])
        if self.threat.norm == "linf":
            t = 2 * _rng.rand(generator, x.shape, dtype=x.dtype, device=x.device) - 1
        else:
            t = _rng.randn(generator, x.shape, dtype=x.dtype, device=x.device)
        scale = self.threat.magnitude(t).clamp_min(1e-12)
        return self.threat.clip_bounds(x + t * per_sample(self.threat.eps / scale, t))

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: OptTensor, generator: OptGen) -> torch.Tensor:
        n = x.shape[0]
        with torch.no_grad():
            logits0 = self._logits(model, x)
        refuse_target("APGD", target, self.targeted_classes)
        # Samples already misclassified (or already at the target) need no attack -- unless the
        # model is randomised (eot > 1): a wrong average prediction leaves single draws often
        # right, so the first run attacks those samples too (measured on a noisy digits CNN:
        # skipping them left the expected accuracy 0.55-1.75 points higher over 7 runs). x stays
        # their best point until a successful iterate replaces it: never a correct one.
        best = BestPoints.unscored(x, is_adversarial(logits0, y, target))
        attack_all = self.eot > 1
        runs = target_runs(logits0, y, target, self.targeted_classes)  # (loss target, success target)
        loss_fn = self._loss_for(logits0.shape[1], targeted=bool(self.targeted_classes) or target is not None)
        for loss_target, succ_target in runs:
            for _ in range(self.restarts):
                # Draw the start for the whole batch so the same seed gives the same starts
                # whichever samples are still active.
                start = self._start(x, generator)
                pending = torch.arange(n, device=x.device) if attack_all else best.pending()  # host sync between runs only
                attack_all = False
                if pending.numel() == 0:
                    return best.x
                idx = None if pending.numel() == n else pending
                run = self._run_l1 if self.threat.norm == "l1" else self._run_once
                run(model, loss_fn, x, y, loss_target, succ_target, start, idx, best)
        return best.x

    def _run_once(
        self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, loss_target: OptTensor, succ_target: OptTensor,
        start: torch.Tensor, idx: OptTensor, best: BestPoints,
    ) -> None:
        xs, ys, lt, stt, xa = _rows(idx, x, y, loss_target, succ_target, start)
        project = self.threat.project
        direction = self.threat.steepest_direction
        alpha = self.momentum

        loss, grad, logits = self._run_loss_and_grad(model, loss_fn, xa, ys, lt)
        best.update(xa, loss, is_adversarial(logits, ys, stt), idx)

        # per-sample state of this run
        x_prev = xa.clone()
        x_best, loss_best, grad_best = xa.clone(), loss.clone(), grad.clone()
        loss_prev = loss.clone()
        n_incr = torch.zeros_like(loss)
        loss_best_last = loss_best.clone()
        reduced_last = torch.ones_like(loss, dtype=torch.bool)
        eta = torch.full_like(loss, 2.0 * self.threat.eps)
        schedule = checkpoints(self.steps)

        for i in range(self.steps):
            a = 1.0 if i == 0 else alpha
            momentum_term = xa - x_prev
            x_prev = xa
            z = project(xa + per_sample(eta, xa) * direction(grad), xs)
            if a == 1.0:
                xa = z
            else:
                xa = project(xa + a * (z - xa) + (1 - a) * momentum_term, xs)
            loss, grad, logits = self._run_loss_and_grad(model, loss_fn, xa, ys, lt)
            succ = is_adversarial(logits, ys, stt)
            best.update(xa, loss, succ, idx)

            improved = loss > loss_best
            x_best = torch.where(per_sample(improved, xa), xa, x_best)
            grad_best = torch.where(per_sample(improved, xa), grad, grad_best)
            loss_best = torch.where(improved, loss, loss_best)
            n_incr = n_incr + (loss > loss_prev).to(n_incr.dtype)
            loss_prev = loss

            if i in schedule:
                k = schedule[i]
                oscillating = n_incr <= k * self.rho
                stalled = ~reduced_last & (loss_best_last >= loss_best)
                halve = oscillating | stalled
                reduced_last = halve
                loss_best_last = loss_best.clone()
                eta = torch.where(halve, eta / 2, eta)
                xa = torch.where(per_sample(halve, xa), x_best, xa)
                grad = torch.where(per_sample(halve, xa), grad_best, grad)
                n_incr = torch.zeros_like(n_incr)

            if self.early_stop and i + 1 < self.steps:
                keep = ~succ
                if not bool(keep.all()):  # host sync: only in early-stop mode
                    idx = _active(idx, keep, x.shape[0])
                    if idx.numel() == 0:
                        return
                    xs, ys, lt, stt, xa = _rows(keep, xs, ys, lt, stt, xa)
                    grad, x_prev, x_best, grad_best = grad[keep], x_prev[keep], x_best[keep], grad_best[keep]
                    loss_best, loss_prev, n_incr = loss_best[keep], loss_prev[keep], n_incr[keep]
                    loss_best_last, reduced_last, eta = loss_best_last[keep], reduced_last[keep], eta[keep]

    def _run_loss_and_grad(
        self, model: nn.Module, loss_fn: LossFn, xa: torch.Tensor, ys: torch.Tensor, lt: OptTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss (in ``xa``'s dtype), input gradient and logits at ``xa``: one step of a run."""
        loss, grad, logits = self._loss_and_grad(model, xa, ys, lt, loss_fn)
        return loss.to(xa.dtype), grad, logits

    # --- APGD-L1 --------------------------------------------------------------------------------
    def _l1_stages(self) -> list[tuple[float, int]]:
        """(radius, iterations) of each stage: AutoAttack's 3/2/1 x eps over 30/30/40% of the
        steps with ``large_eps``, else one stage."""
        eps = self.threat.eps
        if not self.large_eps:
            return [(eps, self.steps)]
        first = max(math.ceil(0.3 * self.steps), 1)
        second = max(min(math.ceil(0.3 * self.steps), self.steps - first - 1), 1)
        return [(3 * eps, first), (2 * eps, second), (eps, self.steps - first - second)]

    def _run_l1(
        self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, loss_target: OptTensor, succ_target: OptTensor,
        start: torch.Tensor, idx: OptTensor, best: BestPoints,
    ) -> None:
        """One APGD-L1 run (all its stages) on the samples ``idx``."""
        xs, ys, lt, stt, xa = _rows(idx, x, y, loss_target, succ_target, start)
        stages = self._l1_stages()
        for j, (eps, steps) in enumerate(stages):
            last = j == len(stages) - 1
            if j > 0:
                xa = self.threat.project(xa, xs, eps)
            # The reference starts k at 20% of the coordinates from a random start, and at the
            # sparsity of the given point / 1.5 when a stage continues from an earlier one.
            xa = self._l1_stage(
                model, loss_fn, xs, ys, lt, stt, xa, eps, steps, idx, best if last else None, j > 0 or self.large_eps
            )

    def _l1_stage(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        xs: torch.Tensor,
        ys: torch.Tensor,
        lt: torch.Tensor | None,
        stt: torch.Tensor | None,
        xa: torch.Tensor,
        eps: float,
        steps: int,
        idx: torch.Tensor | None,
        best: BestPoints | None,
        from_point: bool,
    ) -> torch.Tensor:
        """``steps`` APGD-L1 iterations at radius ``eps`` from ``xa``; returns the highest-loss
        point of every sample. Only with ``best`` given (the last stage, whose return value is
        not used) are successes recorded and early stop applied."""
        threat = self.threat
        dim = xs[0].numel()

        def l0(t: torch.Tensor) -> torch.Tensor:
            return (t != 0).flatten(1).sum(dim=1).to(xs.dtype)

        loss, grad, logits = self._run_loss_and_grad(model, loss_fn, xa, ys, lt)
        if best is not None:
            best.update(xa, loss, is_adversarial(logits, ys, stt), idx)
        x_best, loss_best, grad_best = xa.clone(), loss.clone(), grad.clone()
        if from_point:
            sp_old = l0(xa - xs)
            keep = sp_old / dim / 1.5
        else:
            sp_old = torch.full_like(loss, float(dim))
            keep = torch.full_like(loss, 0.2)
        eta = torch.full_like(loss, eps)
        check_every = max(int(0.04 * steps), 1)

        for i in range(steps):
            direction = threat.sparse_direction(threat.free_gradient(grad, xa), keep)
            xa = threat.project(xa + per_sample(eta, xa) * direction, xs, eps)
            loss, grad, logits = self._run_loss_and_grad(model, loss_fn, xa, ys, lt)
            succ = is_adversarial(logits, ys, stt)
            if best is not None:
                best.update(xa, loss, succ, idx)

            improved = loss > loss_best
            x_best = torch.where(per_sample(improved, xa), xa, x_best)
            grad_best = torch.where(per_sample(improved, xa), grad, grad_best)
            loss_best = torch.where(improved, loss, loss_best)

            if (i + 1) % check_every == 0:
                sp = l0(x_best - xs)
                sparser = sp / sp_old.clamp_min(1) < 0.95
                keep = sp / dim / 1.5
                eta = torch.where(sparser, torch.full_like(eta, eps), eta / 1.5).clamp(eps / 10, eps)
                sp_old = sp
                xa = torch.where(per_sample(sparser, xa), x_best, xa)
                grad = torch.where(per_sample(sparser, xa), grad_best, grad)

            if best is not None and self.early_stop and i + 1 < steps:
                active = ~succ
                if not bool(active.all()):  # host sync: only in early-stop mode
                    idx = _active(idx, active, best.x.shape[0])
                    if idx.numel() == 0:
                        break
                    xs, ys, lt, stt, xa = _rows(active, xs, ys, lt, stt, xa)
                    grad, x_best, grad_best, loss_best = grad[active], x_best[active], grad_best[active], loss_best[active]
                    keep, eta, sp_old = keep[active], eta[active], sp_old[active]
        return x_best
