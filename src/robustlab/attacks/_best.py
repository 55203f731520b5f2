"""The best point seen so far, per sample: the rule every iterative attack keeps.

A successful point (one that fools the model, or reaches the target) beats an unsuccessful one;
among equals the higher loss wins. Updates are elementwise ``torch.where`` on the device: they
never synchronise with the host, so a step loop that updates every step stays sync-free.
"""

from __future__ import annotations

import torch

from .._torch import per_sample


class BestPoints:
    """Per-sample best point, its loss and whether it succeeds.

    Args:
        x: the starting points (kept by reference: pass a copy the tracker may overwrite).
        loss: their losses, shape (N,).
        succ: whether they already succeed, shape (N,) bool.
    """

    def __init__(self, x: torch.Tensor, loss: torch.Tensor, succ: torch.Tensor) -> None:
        self.x, self.loss, self.succ = x, loss, succ

    @classmethod
    def unscored(cls, x: torch.Tensor, succ: torch.Tensor | None = None) -> BestPoints:
        """Start from a copy of ``x`` with loss -inf (any scored point replaces it) and success
        ``succ`` (default: none)."""
        n = x.shape[0]
        loss = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
        if succ is None:
            succ = torch.zeros(n, dtype=torch.bool, device=x.device)
        return cls(x.clone(), loss, succ)

    def pending(self) -> torch.Tensor:
        """Indices of the samples not successful yet (a host sync)."""
        return (~self.succ).nonzero().squeeze(1)

    def update(
        self, x_new: torch.Tensor, loss: torch.Tensor, succ: torch.Tensor, idx: torch.Tensor | None = None
    ) -> None:
        """Offer new points for the samples ``idx`` (all samples, updated in place, when None)."""
        if idx is None:
            b_x, b_loss, b_succ = self.x, self.loss, self.succ
        else:
            b_x, b_loss, b_succ = self.x[idx], self.loss[idx], self.succ[idx]
        loss = loss.to(b_loss.dtype)
        better = (succ & ~b_succ) | ((succ == b_succ) & (loss > b_loss))
        if idx is None:  # in place, elementwise (out= aliasing an input is safe here)
            torch.where(per_sample(better, x_new), x_new, b_x, out=b_x)
            torch.where(better, loss, b_loss, out=b_loss)
            b_succ |= succ
        else:
            self.x[idx] = torch.where(per_sample(better, x_new), x_new, b_x)
            self.loss[idx] = torch.where(better, loss, b_loss)
            self.succ[idx] = b_succ | succ
