"""The course notes' optimisation attack: squared error on the softmax plus a closeness penalty.

Per sample, Adam minimises over ``x'`` (starting at ``x``; every iterate projected onto the
eps-ball and the bounds, so the attack is projected gradient descent on a penalised objective)

    targeted:     0.5 * ||softmax(f(x')) - onehot(target)||_2^2 + lam * ||x' - x||_2^2
    untargeted:  -0.5 * ||softmax(f(x')) - onehot(y)||_2^2      + lam * ||x' - x||_2^2

Untargeted, the squared error to the *true* class's one-hot is maximised (it peaks at 1, when the
softmax is the one-hot of some other class); no wrong class is singled out. ``lam`` trades
closeness for success: a larger ``lam`` gives smaller perturbations (and fewer successes); with
``lam = 0`` only the eps-ball limits the perturbation. The squared error on probabilities
saturates where the model is confident (its gradient shrinks with ``1 - p``), which is why the
notes' later attacks use logits or cross-entropy; Adam's per-coordinate scaling offsets part of it.

The returned point is, per sample, the best one seen: a successful point beats an unsuccessful
one, and among equals the lower objective wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._torch import check_float, check_int, per_sample
from ..threat import ThreatModel
from ._best import BestPoints
from .base import Attack, Crafted, OptGen, OptTensor, is_adversarial


def softmax_squared_error(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Per sample ``0.5 * ||softmax(logits) - onehot(cls)||_2^2``, shape (N,), in [0, 1]."""
    p = logits.softmax(dim=1)
    onehot = F.one_hot(cls, logits.shape[1]).to(p.dtype)
    return 0.5 * (p - onehot).pow(2).sum(dim=1)


def softmax_mse_objective(logits: torch.Tensor, y: torch.Tensor, target: OptTensor) -> torch.Tensor:
    """The data term the attacks here *minimise*: the squared error to ``onehot(target)``, or
    untargeted minus the squared error to ``onehot(y)``."""
    if target is None:
        return -softmax_squared_error(logits, y)
    return softmax_squared_error(logits, target)


class Adam:
    """Adam (Kingma & Ba 2015) on one tensor of inputs, with a per-sample mask of who may move."""

    def __init__(self, like: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0

    def step(self, x: torch.Tensor, grad: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` after one descent step along ``grad`` (samples with ``active`` False stay put)."""
        b1, b2 = self.betas
        self.t += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        update = self.lr * m_hat / (v_hat.sqrt() + self.eps)
        if active is not None:
            update = update * per_sample(active, update).to(update.dtype)
        return x - update


class MSEPenalty(Attack):
    """Minimise the softmax squared error (to the target, or away from ``y``) plus ``lam`` times
    the squared L2 distance, by projected Adam steps inside the threat model.

    Args:
        threat: the perturbation set (Linf or L2); every iterate is projected onto it.
        steps: Adam iterations (each one forward+backward), plus one forward to score the last.
        lr: Adam's learning rate, in input units (a step moves a coordinate by about ``lr``).
        lam: weight of ``||x' - x||_2^2`` (>= 0): larger gives smaller perturbations.
        early_stop: freeze a sample once it succeeds, and stop when all have (one host sync a step).
        eval_mode, seed: see :class:`~robustlab.attacks.base.Attack` (the attack is deterministic).
        eot: average every gradient and success decision over this many passes (randomised models).
    """

    name = "mse-penalty"

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 100,
        lr: float = 0.01,
        lam: float = 0.05,
        early_stop: bool = False, eval_mode: bool = True, seed: int | None = None, eot: int = 1,
    ) -> None:
        super().__init__(threat, loss="ce", eval_mode=eval_mode, seed=seed, early_stop=early_stop, eot=eot)
        self.loss_name = "softmax-mse"
        self.loss_fn = softmax_mse_objective
        self.steps = check_int("steps", steps, 1)
        self.lr = check_float("lr", lr, 0.0, strict=True)
        self.lam = check_float("lam", lam, 0.0)

    def __repr__(self) -> str:
        t = self.threat
        return (f"MSEPenalty(norm={t.norm}, eps={t.eps:g}, steps={self.steps}, lr={self.lr:g}, "
                f"lam={self.lam:g}{self._eot_repr()})")

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: OptTensor, generator: OptGen) -> Crafted:
        xa = x.clone()
        best = BestPoints.unscored(x)
        adam = Adam(x, self.lr)
        for _ in range(self.steps):
            data, grad, logits = self._loss_and_grad(model, xa, y, target)
            delta = xa - x
            objective = data + self.lam * delta.flatten(1).pow(2).sum(dim=1)
            best.update(xa, -objective, is_adversarial(logits, y, target))
            active = None
            if self.early_stop:
                active = ~best.succ
                if not bool(active.any()):
                    return Crafted(best.x, None, best.succ)
            xa = self.threat.project(adam.step(xa, grad + 2 * self.lam * delta, active), x)
        with torch.no_grad():
            logits = self._logits(model, xa)
        objective = self.loss_fn(logits, y, target) + self.lam * (xa - x).flatten(1).pow(2).sum(dim=1)
        best.update(xa, -objective, is_adversarial(logits, y, target))
        return Crafted(best.x, None, best.succ)
