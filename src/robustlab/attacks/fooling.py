"""Fooling images (the course notes' "from scratch" attack; Nguyen, Yosinski & Clune 2015):
inputs that the model assigns to a chosen class with high confidence although they look like
nothing of the kind.

Per sample, start from uniform noise inside the bounds and let Adam minimise the same squared
error as :mod:`.mse_penalty`, ``0.5 * ||softmax(f(x')) - onehot(target)||_2^2``, with no closeness
term, clipping every iterate to the bounds, until the model gives the target a probability of at
least ``confidence`` (that sample then stops moving) or the steps run out.

The output does not depend on ``x`` except through its shape (and the seed): it is **not** an
eps-ball attack (``eps_ball = False``). The base class only clips it to the bounds, evaluations
refuse it (robust accuracy is about the ball), and it needs ``target=``: it has no untargeted form.
Use it alone: ``robustlab attack RUN --attack fooling-image --target K --out DIR``.
"""

from __future__ import annotations

import torch
from torch import nn

from .._rng import rand
from .._torch import check_float, check_fraction, check_int
from ..threat import ThreatModel
from .base import Attack, Crafted, OptGen, OptTensor, is_adversarial
from .mse_penalty import Adam, softmax_mse_objective


class FoolingImage(Attack):
    """Images of class ``target`` synthesised from uniform noise (see the module docstring).

    Args:
        threat: only its bounds matter (the noise and every iterate stay inside them); eps and
            the norm (Linf or L2, the default ``norms``) play no role.
        steps: at most this many Adam iterations (each one forward+backward on the samples).
        lr: Adam's learning rate, in input units.
        confidence: stop a sample once the target's softmax probability reaches this (0 < c < 1)
            and the target is the prediction.
        eval_mode, seed: see :class:`~robustlab.attacks.base.Attack`; ``seed`` fixes the noise.
        eot: average every gradient and decision over this many passes (randomised models).
    """

    name = "fooling-image"
    eps_ball = False
    needs_target = True
    per_sample_rng = True  # one uniform draw per call, through robustlab._rng

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 200,
        lr: float = 0.05,
        confidence: float = 0.9,
        eval_mode: bool = True, seed: int | None = None, eot: int = 1,
    ) -> None:
        super().__init__(threat, loss="ce", eval_mode=eval_mode, seed=seed, eot=eot)
        self.loss_name = "softmax-mse"
        self.loss_fn = softmax_mse_objective
        self.steps = check_int("steps", steps, 1)
        self.lr = check_float("lr", lr, 0.0, strict=True)
        self.confidence = check_fraction("confidence", confidence, open_low=True, open_high=True)

    def __repr__(self) -> str:
        return (f"FoolingImage(bounds={self.threat.bounds}, steps={self.steps}, lr={self.lr:g}, "
                f"confidence={self.confidence:g}{self._eot_repr()})")

    def _confident(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per sample: the target is predicted with probability >= ``confidence``."""
        p = logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
        return (logits.argmax(1) == target) & (p >= self.confidence)

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: OptTensor, generator: OptGen) -> Crafted:
        assert target is not None  # the base class refuses a call without one (needs_target)
        lo, hi = self.threat.bounds
        xa = lo + (hi - lo) * rand(generator, x.shape, dtype=x.dtype, device=x.device)
        adam = Adam(xa, self.lr)
        for _ in range(self.steps):
            _, grad, logits = self._loss_and_grad(model, xa, y, target)
            done = self._confident(logits, target)
            if bool(done.all()):
                return Crafted(xa, None, is_adversarial(logits, y, target))
            xa = self.threat.clip_bounds(adam.step(xa, grad, ~done))
        with torch.no_grad():
            logits = self._logits(model, xa)
        return Crafted(xa, None, is_adversarial(logits, y, target))
