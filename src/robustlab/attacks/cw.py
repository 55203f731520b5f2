"""Carlini-Wagner L2 attack (Carlini & Wagner 2017): a minimum-distance attack.

The box constraint is removed by the tanh reparameterisation
``x' = lo + (hi - lo) * (tanh(w) + 1) / 2``; Adam minimises, per sample,

    ||x' - x||_2^2 + c * f(x'),
    f = max(z_y - max_{j != y} z_j, -kappa)          (untargeted)
    f = max(max_{j != t} z_j - z_t, -kappa)          (targeted)

and a binary search over ``c`` (per sample) trades distance for success: success lowers the upper
bound, failure raises the lower bound, and ``c`` grows tenfold while no upper bound is known.
The attack keeps each sample's closest successful example.

Two ways to get results:

* :meth:`CW.minimal` returns those closest examples *unprojected*, with ``distance`` their L2
  distance to ``x`` (the threat model's eps plays no role; its bounds do). Samples never fooled
  come back as ``x`` with ``success=False``.
* ``CW(threat)(model, x, y)`` / :meth:`run` keep the common attack contract: the closest
  examples are projected onto the threat model's ball. For an L2 threat this scales any example
  farther than eps back onto the sphere of radius eps (where it may no longer fool the model);
  for an Linf threat it clips the perturbation to the Linf ball.
"""

from __future__ import annotations

import torch
from torch import nn

from .._torch import check_float, check_int, model_guard, per_sample
from ..threat import ThreatModel
from ..validation import check_logits
from .base import Attack, AttackResult, OptGen, OptTensor, attack_labels, is_adversarial
from .losses import LossFn, margin


class CW(Attack):
    """Carlini-Wagner L2.

    Args:
        threat: bounds for the box constraint; eps only matters for :meth:`run` (projection).
        steps: Adam iterations per binary-search step.
        lr: Adam learning rate in the tanh space.
        confidence: kappa, the margin an example must reach to count as found.
        initial_const: starting trade-off constant ``c``.
        binary_search_steps: number of rounds of the search over ``c``.
        abort_early: stop a round when the objective has not improved for ``steps // 10``
            iterations (a host sync every ``steps // 10`` iterations).
        eval_mode, seed: see :class:`~robustlab.attacks.base.Attack` (the attack is deterministic).
        eot: average the gradient of ``f`` (and the logits that decide success) over this many
            forward+backward passes (EOT, for randomised models; 1 = plain CW).
    """

    per_sample_rng = True

    name = "cw"
    minimum_norm = True

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 100,
        lr: float = 0.01,
        confidence: float = 0.0,
        initial_const: float = 1.0,
        binary_search_steps: int = 5,
        abort_early: bool = True,
        eval_mode: bool = True, seed: int | None = None, eot: int = 1,
    ) -> None:
        super().__init__(threat, loss="margin", eval_mode=eval_mode, seed=seed, eot=eot)
        self.steps = check_int("steps", steps, 1)
        self.lr = check_float("lr", lr, 0.0, strict=True)
        self.confidence = check_float("confidence", confidence, 0.0)
        self.initial_const = check_float("initial_const", initial_const, 0.0, strict=True)
        self.binary_search_steps = check_int("binary_search_steps", binary_search_steps, 1)
        self.abort_early = bool(abort_early)

    def __repr__(self) -> str:
        t = self.threat
        return (
            f"CW(norm={t.norm}, eps={t.eps:g}, steps={self.steps}, lr={self.lr:g}, "
            f"confidence={self.confidence:g}, binary_search_steps={self.binary_search_steps})"
        )

    # --- public -------------------------------------------------------------------------------
    def minimal(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, target: torch.Tensor | None = None
    ) -> AttackResult:
        """The closest successful examples found, not projected onto the threat ball.

        Same input checks and model guarantees as :meth:`run`. ``success`` is re-checked with a
        forward pass on the returned examples; ``distance`` is the L2 distance to ``x``;
        ``extra["const"]`` holds the final trade-off constant per sample.
        """
        x0 = self._checked_copy(model, x, y, target)
        with model_guard(model, self.eval_mode):
            with torch.no_grad():
                logits = check_logits(self._logits(model, x0), x0.shape[0])
            y = attack_labels(logits, x0.shape[0], y, target)
            x_best, const = self._search(model, x0, y, target)
            x_best = self.threat.clip_bounds(x_best.detach())
            with torch.no_grad():
                success = is_adversarial(self._logits(model, x_best), y, target)
        return AttackResult(
            x_adv=x_best,
            success=success,
            distance=(x_best - x0).flatten(1).norm(p=2, dim=1),
            extra={"const": const},
        )

    # --- internals ----------------------------------------------------------------------------
    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: OptTensor, generator: OptGen) -> torch.Tensor:
        return self._search(model, x, y, target)[0]

    def _found(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """Fools the model with a margin of at least kappa."""
        return is_adversarial(logits, y, target) & (margin(logits, y, target) >= self.confidence)

    def _search(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.threat.bounds
        n = x.shape[0]
        dev, dt = x.device, x.dtype

        def to_x(w: torch.Tensor) -> torch.Tensor:
            return lo + (hi - lo) * (torch.tanh(w) + 1) / 2

        limit = 1 - 1e-6
        w0 = torch.atanh(((x - lo) / (hi - lo) * 2 - 1).clamp(-limit, limit))

        best_x = x.clone()
        best_l2 = torch.full((n,), float("inf"), dtype=dt, device=dev)
        with torch.no_grad():
            already = self._found(self._logits(model, x), y, target)  # distance 0: keep x itself
        best_l2 = torch.where(already, torch.zeros_like(best_l2), best_l2)

        const = torch.full((n,), self.initial_const, dtype=dt, device=dev)
        lower = torch.zeros(n, dtype=dt, device=dev)
        upper = torch.full((n,), float("inf"), dtype=dt, device=dev)
        patience = max(1, self.steps // 10)

        for _ in range(self.binary_search_steps):
            weighted_f = self._weighted_f(const)
            delta = torch.zeros_like(w0, requires_grad=True)
            opt = torch.optim.Adam([delta], lr=self.lr)
            found = torch.zeros(n, dtype=torch.bool, device=dev)
            prev = float("inf")
            for it in range(self.steps):
                with torch.enable_grad():
                    xa = to_x(w0 + delta)
                    l2sq = (xa - x).flatten(1).pow(2).sum(dim=1)
                # c * f and its input gradient through the shared (EOT-aware) gradient path; the
                # chain rule through tanh then adds the distance term's gradient
                cf, grad_cf, logits = self._loss_and_grad(model, xa, y, target, weighted_f)
                with torch.enable_grad():
                    objective = (l2sq + cf).sum()
                    opt.zero_grad(set_to_none=True)
                    (l2sq.sum() + (xa * grad_cf).sum()).backward()
                opt.step()
                with torch.no_grad():
                    ok = self._found(logits.detach(), y, target)
                    l2 = l2sq.detach().sqrt()
                    closer = ok & (l2 < best_l2)
                    best_l2 = torch.where(closer, l2, best_l2)
                    best_x = torch.where(per_sample(closer, x), xa.detach(), best_x)
                    found |= ok
                if self.abort_early and (it + 1) % patience == 0:
                    value = float(objective.detach())
                    if value > prev * 0.9999:
                        break
                    prev = value
            # binary search on c, per sample
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            bounded = upper < 1e9
            const = torch.where(bounded, (lower + upper) / 2, const * 10)
        return best_x, const

    def _weighted_f(self, const: torch.Tensor) -> LossFn:
        """The per-sample loss ``c * f(logits)`` the attack minimises besides the distance."""

        def loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
            return const * (-margin(logits, y, target)).clamp_min(-self.confidence)

        return loss
