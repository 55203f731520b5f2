"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"), Linf, L2 and L1, untargeted and targeted (FAB-T).

FAB looks for the *smallest* perturbation that changes the decision. At the current iterate
``x_k`` it linearises the classifier: for each class ``j`` the boundary between ``j`` and the true
class ``y`` is approximated by the hyperplane ``f_j(x_k) - f_y(x_k) + <grad(f_j - f_y)(x_k), z - x_k> = 0``,
and the closest of them (distance ``|f_j - f_y| / ||grad||_*``, the dual norm) is taken. Both the
iterate and the original point ``x_0`` are projected, in the threat model's norm, onto that
hyperplane intersected with the box of valid inputs (:func:`project_hyperplane_box`: a sort and a
cumulative sum, exact). The next iterate is a convex combination biased toward ``x_0``::

    x_{k+1} = clip((1 - a) (x_k + eta d_k) + a (x_0 + eta d_0)),   a = min(|d_k| / (|d_k| + |d_0|), alpha_max)

``eta > 1`` extrapolates slightly past the linearised boundary. Whenever ``x_{k+1}`` is adversarial
it is recorded if it is the closest one so far and the iterate is pulled back toward the original,
``x_0 + beta (x_{k+1} - x_0)``, so the search keeps tracking the boundary from the inside.

The first run starts at ``x_0``; every further restart starts at a random point at distance
``0.5 * min(best distance so far, eps)`` from it. With ``targeted_classes = k > 0`` (FAB-T, as
AutoAttack's ``fab-t``) a run is made for each of the ``k`` highest-scoring non-true classes (by
the clean logits), linearising only the boundary between ``y`` and that class, and a sample counts
as broken as soon as it is misclassified; only samples not broken yet are attacked again. With
``target=`` the attack is a plain targeted one (success: the prediction equals the target).

After each run an optional binary search along the segment from ``x_0`` to the closest adversarial
point found (``final_search`` forward passes) moves it onto the decision boundary.

**Within the threat model.** FAB minimises the norm and may end beyond ``eps``; such points are not
successes. As in AutoAttack's protocol, the attack returns, per sample, the closest adversarial
point found if its distance is at most ``eps``, else the clean input. Its iterates are kept inside
the bounds but, like C&W's, not inside the eps-ball.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _rng
from .._torch import check_float, check_fraction, check_int, per_sample
from ..threat import ThreatModel
from .base import Attack, Crafted, OptGen, OptTensor, is_adversarial, refuse_target, target_runs

#: The dual of each norm (for the distance to a hyperplane, ``|f| / ||w||_dual``).
_DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}


def _flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Row norms of a 2-D or (N, M, D) tensor over its last dimension."""
    if norm == "linf":
        return t.abs().amax(dim=-1)
    if norm == "l1":
        return t.abs().sum(dim=-1)
    return t.norm(p=2, dim=-1)


def project_hyperplane_box(
    t: torch.Tensor, w: torch.Tensor, r: torch.Tensor, bounds: tuple[float, float], norm: str
) -> torch.Tensor:
    """Per row, the minimal-norm step ``d`` with ``<w, d> = r`` and ``t + d`` inside ``bounds``.

    ``t`` and ``w`` are (N, D), ``r`` is (N,); ``norm`` is ``"linf"``, ``"l2"`` or ``"l1"``. Where
    the box makes ``r`` unreachable, the step goes as far toward it as the box allows (the box
    corner maximising ``sign(r) <w, d>``).

    Each coordinate moves only in the direction that helps (``sign(w_i r)``), by at most its room
    ``u_i`` to the box. The gain ``<w, d>`` as a function of the norm of the step is piecewise linear
    in each case, so one sort and a cumulative sum locate the exact solution:

    * Linf: ``d_i = s_i min(lam, u_i)``; the smallest ``lam`` reaching ``r``.
    * L2: ``d_i = s_i min(lam |w_i|, u_i)`` (KKT of the box-constrained least-norm problem).
    * L1: fill the coordinates by decreasing ``|w_i|`` (most gain per unit of L1 norm first).
    """
    lo, hi = bounds
    r = r.to(w.dtype)
    sgn = torch.where(r < 0, -1.0, 1.0).to(w.dtype)
    w = w * sgn[:, None]
    r = r.abs()
    a = w.abs()
    s = w.sign()
    room = torch.where(w > 0, hi - t, t - lo).clamp_min(0.0)
    room = torch.where(a > 0, room, torch.zeros_like(room))
    n, dim = t.shape
    if norm == "l1":
        a_sorted, order = a.sort(dim=1, descending=True)
        u_sorted = room.gather(1, order)
        full = torch.cumsum(a_sorted * u_sorted, dim=1)  # gain with the first k+1 coordinates full
        k = (full < r[:, None]).sum(1)  # the coordinate that is filled only partly
        kc = k.clamp_max(dim - 1)[:, None]
        before = (full - a_sorted * u_sorted).gather(1, kc).squeeze(1)
        part = ((r - before) / a_sorted.gather(1, kc).squeeze(1).clamp_min(1e-30)).clamp_min(0.0)
        pos = torch.arange(dim, device=t.device)[None, :]
        step_sorted = torch.where(pos < k[:, None], u_sorted, torch.zeros_like(u_sorted))
        step_sorted = torch.where(pos == k[:, None], torch.minimum(part[:, None], u_sorted), step_sorted)
        step = torch.zeros_like(room).scatter(1, order, step_sorted)
        return s * step
    gain_rate = a
    if norm == "linf":
        breaks, weight = room, a  # g(lam) = sum a_i min(lam, u_i)
    else:
        # g(lam) = sum min(lam w_i^2, a_i u_i), breakpoints u_i / a_i (0 where w_i = 0: no effect)
        breaks = torch.where(a > 0, room / a.clamp_min(1e-30), torch.zeros_like(room))
        weight = a * a
    b_sorted, order = breaks.sort(dim=1)
    wt = weight.gather(1, order)
    sat = wt * b_sorted  # gain of a coordinate once saturated (a_i u_i)
    full = torch.cumsum(sat, dim=1)  # gain from the coordinates saturated up to k
    tail = wt.sum(1, keepdim=True) - torch.cumsum(wt, dim=1)  # slope from those not saturated
    g = full + b_sorted * tail  # g at each breakpoint, nondecreasing
    k = (g < r[:, None]).sum(1)  # r is reached on the segment before breakpoint k
    reachable = k < dim
    kc = k.clamp_max(dim - 1)[:, None]
    full_before = (full - sat).gather(1, kc).squeeze(1)
    slope_before = (tail + wt).gather(1, kc).squeeze(1)
    lam = ((r - full_before) / slope_before.clamp_min(1e-30)).clamp_min(0.0)
    lam = torch.where(reachable, lam, torch.full_like(lam, float("inf")))
    lam = torch.where(r > 0, lam, torch.zeros_like(lam))
    move = lam[:, None] * gain_rate if norm == "l2" else lam[:, None].expand_as(room)
    step = torch.where(a > 0, torch.minimum(move, room), torch.zeros_like(room))
    return s * step


class FAB(Attack):
    """Fast Adaptive Boundary attack: minimum-norm, returned only where within eps.

    Args:
        threat: the perturbation set (Linf, L2, or L1 where the threat model offers it).
        steps: iterations per run (each one forward+backward, ``classes`` backward passes for the
            untargeted form, and one forward to check the new iterate).
        restarts: runs per target; the first starts at the clean input, the others at random
            points around it (each only on samples not broken yet).
        targeted_classes: 0 for the untargeted attack (all boundaries linearised); ``k > 0`` for
            FAB-T over the top-k non-true classes (capped at classes - 1).
        alpha_max: the largest weight of the step from the original point.
        eta: overshoot of the projection onto the linearised boundary (> 1 crosses it).
        beta: pull-back toward the original point after an adversarial iterate.
        final_search: binary-search steps along the segment to the best point after each run
            (0: none, as AutoAttack).
        seed, early_stop, eval_mode, eot: see :class:`~robustlab.attacks.base.Attack`; with
            ``early_stop`` a sample stops once it has an adversarial point within eps; with
            ``eot > 1`` logits and gradients are averages over ``eot`` passes.
    """

    per_sample_rng = True

    name = "fab"
    norms = ("linf", "l2", "l1")
    minimum_norm = True

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 100,
        restarts: int = 1,
        targeted_classes: int = 0,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        final_search: int = 10,
        seed: int | None = None, early_stop: bool = False, eval_mode: bool = True, eot: int = 1,
    ) -> None:
        super().__init__(threat, loss="ce", eval_mode=eval_mode, seed=seed, early_stop=early_stop, eot=eot)
        self.steps = check_int("steps", steps, 1)
        self.restarts = check_int("restarts", restarts, 1)
        self.targeted_classes = check_int("targeted_classes", targeted_classes, 0)
        self.alpha_max = check_fraction("alpha_max", alpha_max)
        self.eta = check_float("eta", eta, 0.0, strict=True)
        self.beta = check_fraction("beta", beta, open_high=True)
        self.final_search = check_int("final_search", final_search, 0)
        self.loss_name = "boundary"
        self.name = "fab-t" if self.targeted_classes else "fab"

    def __repr__(self) -> str:
        t = self.threat
        return (
            f"{type(self).__name__}(norm={t.norm}, eps={t.eps:g}, steps={self.steps}, restarts={self.restarts}"
            f"{self._targets_repr()}, alpha_max={self.alpha_max:g}, eta={self.eta:g}, beta={self.beta:g}, "
            f"final_search={self.final_search})"
        )

    # --- the attack ---------------------------------------------------------------------------
    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: OptTensor, generator: OptGen) -> Crafted:
        refuse_target("FAB", target, self.targeted_classes)
        with torch.no_grad():
            logits0 = self._logits(model, x)
        best_x = x.clone()
        # samples already misclassified (or at the target) are adversarial at distance 0
        best_n = torch.where(is_adversarial(logits0, y, target), 0.0, float("inf")).to(x.dtype)
        runs = target_runs(logits0, y, target, self.targeted_classes)  # (linearised class, success target)
        eps = self.threat.eps
        for lin_target, succ_target in runs:
            for restart in range(self.restarts):
                start = None if restart == 0 else self._random_direction(x, generator)
                idx = (best_n > eps).nonzero().squeeze(1)  # host sync between runs only
                if idx.numel() == 0:
                    break
                self._run_once(model, x, y, lin_target, succ_target, start, idx, best_x, best_n)
        within = best_n <= eps
        x_out = torch.where(per_sample(within, x), best_x, x)
        return Crafted(x_out, None, within)

    def _random_direction(self, x: torch.Tensor, generator: _rng.Generator) -> torch.Tensor:
        """Random directions of unit norm, drawn for the whole batch (same seed, same starts)."""
        if self.threat.norm == "linf":
            t = 2 * _rng.rand(generator, x.shape, dtype=x.dtype, device=x.device) - 1
        else:
            t = _rng.randn(generator, x.shape, dtype=x.dtype, device=x.device)
        return t / per_sample(_flat_norm(t.flatten(1), self.threat.norm).clamp_min(1e-12), t)

    def _linearise(
        self,
        model: nn.Module,
        z: torch.Tensor,
        y: torch.Tensor,
        lin_target: torch.Tensor | None,
        to_target: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits at ``z``; the logit differences ``f_j - f_y`` (N, M) and their input gradients
        (N, M, D). Untargeted: every class ``j`` (``j = y`` excluded by an infinite difference).
        With ``lin_target`` (M = 1): ``f_t - f_y`` (FAB-T), or with ``to_target`` (a plain targeted
        attack, success = reaching ``t``) ``f_t - max_{j != t} f_j``, the boundary that keeps the
        prediction from ``t`` now (the rival class read from the first pass). With ``eot > 1``
        all three are averages over ``eot`` passes."""
        rows = torch.arange(z.shape[0], device=z.device)
        rival: torch.Tensor | None = None
        total: list[torch.Tensor] = []
        for _ in range(self.eot):
            zg = z.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(zg)
                if lin_target is not None:
                    if rival is None:
                        rival = (logits.detach().scatter(1, lin_target[:, None], float("-inf")).argmax(1)
                                 if to_target else y)
                    diff = logits[rows, lin_target] - logits[rows, rival]
                    (grad,) = torch.autograd.grad(diff.sum(), zg)
                    jac = grad.flatten(1)[:, None]
                else:
                    k = logits.shape[1]
                    grads = [
                        torch.autograd.grad(logits[:, j].sum(), zg, retain_graph=j < k - 1)[0].flatten(1)
                        for j in range(k)
                    ]
                    jac = torch.stack(grads, dim=1)  # (N, K, D)
            part = [logits.detach(), jac.detach()]
            total = part if not total else [a + b for a, b in zip(total, part)]
        logits, jac = (t / self.eot for t in total) if self.eot > 1 else total
        if lin_target is not None:
            assert rival is not None
            return logits, (logits[rows, lin_target] - logits[rows, rival])[:, None], jac
        df = logits - logits[rows, y][:, None]
        dg = jac - jac[rows, y][:, None]
        df[rows, y] = float("inf")
        return logits, df, dg

    def _run_once(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        lin_target: torch.Tensor | None,
        succ_target: torch.Tensor | None,
        start: torch.Tensor | None,
        idx: torch.Tensor,
        best_x: torch.Tensor,
        best_n: torch.Tensor,
    ) -> None:
        """One FAB run on the samples ``idx``; updates ``best_x`` / ``best_n`` in place."""
        threat, norm, eps = self.threat, self.threat.norm, self.threat.eps
        x0, ys = x[idx], y[idx]
        lt = None if lin_target is None else lin_target[idx]
        st = None if succ_target is None else succ_target[idx]
        bx, bn = best_x[idx], best_n[idx]
        if start is None:
            x1 = x0.clone()
        else:
            radius = 0.5 * torch.clamp(bn, max=eps)
            x1 = threat.clip_bounds(x0 + start[idx] * per_sample(radius, x0))
        pos = torch.arange(len(idx), device=x.device)  # positions of the active rows in idx

        def record(z: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            """Keep ``z`` where it is adversarial and closer than the best; return adversarial."""
            adv = is_adversarial(logits, ys[rows], None if st is None else st[rows])
            dist = _flat_norm((z - x0[rows]).flatten(1), norm)
            better = adv & (dist < bn[rows])
            bx[rows] = torch.where(per_sample(better, z), z, bx[rows])
            bn[rows] = torch.where(better, dist, bn[rows])
            return adv

        x0a, ysa, lta = x0, ys, lt
        for i in range(self.steps):
            logits, df, dg = self._linearise(model, x1, ysa, lta, st is not None)
            record(x1, logits, pos)  # a free check of the current iterate
            dist = df.abs() / _flat_norm(dg, _DUAL[norm]).clamp_min(1e-12)
            j = dist.argmin(dim=1)
            rows = torch.arange(len(pos), device=x.device)
            w, f = dg[rows, j], df[rows, j]
            flat1, flat0 = x1.flatten(1), x0a.flatten(1)
            # the hyperplane f + <w, z - x1> = 0, reached from x1 and from x0
            d = project_hyperplane_box(
                torch.cat((flat1, flat0)),
                torch.cat((w, w)),
                torch.cat((-f, -f - (w * (flat0 - flat1)).sum(1))),
                threat.bounds,
                norm,
            )
            d1, d0 = d[: len(pos)], d[len(pos) :]
            a = _flat_norm(d, norm).clamp_min(1e-8)
            a1, a0 = a[: len(pos)], a[len(pos) :]
            alpha = (a1 / (a1 + a0)).clamp(0.0, self.alpha_max)[:, None]
            nxt = ((flat1 + self.eta * d1) * (1 - alpha) + (flat0 + self.eta * d0) * alpha).view(x1.shape)
            x1 = threat.clip_bounds(nxt)
            with torch.no_grad():
                adv = record(x1, self._logits(model, x1), pos)
            x1 = torch.where(per_sample(adv, x1), x0a + self.beta * (x1 - x0a), x1)
            if self.early_stop and i + 1 < self.steps:
                keep = bn[pos] > eps
                if not bool(keep.all()):  # host sync: only in early-stop mode
                    pos, x1, x0a, ysa = pos[keep], x1[keep], x0a[keep], ysa[keep]
                    lta = None if lta is None else lta[keep]
                    if pos.numel() == 0:
                        break
        if self.final_search:
            self._search(model, x0, ys, st, bx, bn)
        best_x[idx] = bx
        best_n[idx] = bn

    def _search(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        ys: torch.Tensor,
        st: torch.Tensor | None,
        bx: torch.Tensor,
        bn: torch.Tensor,
    ) -> None:
        """Binary search on the segment from ``x0`` to the best point (in place), for samples
        with an adversarial point (beyond eps only, under ``early_stop``)."""
        todo = torch.isfinite(bn) & (bn > 0)
        if self.early_stop:
            todo &= bn > self.threat.eps
        rows = todo.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        o, b = x0[rows], bx[rows]
        ys_r = ys[rows]
        st_r = None if st is None else st[rows]
        lo = torch.zeros(len(rows), dtype=x0.dtype, device=x0.device)
        hi = torch.ones_like(lo)
        for _ in range(self.final_search):
            mid = (lo + hi) / 2
            z = o + per_sample(mid, o) * (b - o)
            with torch.no_grad():
                adv = is_adversarial(self._logits(model, z), ys_r, st_r)
            hi = torch.where(adv, mid, hi)
            lo = torch.where(adv, lo, mid)
        z = o + per_sample(hi, o) * (b - o)
        dist = _flat_norm((z - o).flatten(1), self.threat.norm)
        better = (hi < 1) & (dist < bn[rows])
        bx[rows] = torch.where(per_sample(better, z), z, b)
        bn[rows] = torch.where(better, dist, bn[rows])
