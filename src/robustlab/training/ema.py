"""Weight averaging: an exponential moving average (EMA) of a model's weights during training.

After every optimiser step ``t`` (1, 2, ...) each floating-point parameter of the average moves
toward the live one, ``avg = d_t * avg + (1 - d_t) * w`` with ``d_t = min(decay, (1 + t) / (10 + t))``
(the usual warm-up, so the average forgets the random initial weights within the first few
hundred steps instead of dominating the first epochs at decay 0.999); buffers (BatchNorm running
statistics) are copied from the live model. The average is what a run evaluates each epoch and
saves as its model; the live weights keep training. Averaged weights are flatter minima and more
robust (Izmailov et al. 2018; Gowal et al. 2020 use decay 0.995-0.999 for adversarial training).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..distributed import unwrap


def ema_decay(decay: float, step: int) -> float:
    """The decay used at optimiser step ``step`` (1-based): ``min(decay, (1 + step) / (10 + step))``."""
    return min(float(decay), (1.0 + step) / (10.0 + step))


class WeightEMA:
    """An averaged copy of ``model`` (in eval mode, no gradients), updated by :meth:`update`."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not (0.0 < decay < 1.0 and math.isfinite(decay)):
            raise ValueError(f"ema decay must be in (0, 1), e.g. 0.999, got {decay}")
        self.decay = float(decay)
        self.steps = 0
        self.model = copy.deepcopy(unwrap(model))
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
            p.grad = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step toward ``model``'s current weights; buffers copied."""
        self.steps += 1
        d = ema_decay(self.decay, self.steps)
        live = dict(unwrap(model).named_parameters())
        for name, p in self.model.named_parameters():
            if p.dtype.is_floating_point:
                p.mul_(d).add_(live[name].detach(), alpha=1.0 - d)
            else:
                p.copy_(live[name])
        self.copy_buffers(model)

    @torch.no_grad()
    def copy_buffers(self, model: nn.Module) -> None:
        """Copy every buffer (BatchNorm statistics) of ``model`` into the average."""
        live = dict(unwrap(model).named_buffers())
        for name, b in self.model.named_buffers():
            b.copy_(live[name])

    def state(self) -> dict[str, torch.Tensor]:
        """The average's tensors and step count, for a training state (resume)."""
        return {**{f"weights.{k}": v.detach().clone() for k, v in self.model.state_dict().items()},
                "steps": torch.tensor(self.steps)}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` returned (a ValueError when it does not fit the model)."""
        weights = {k[len("weights."):]: v for k, v in state.items() if k.startswith("weights.")}
        if "steps" not in state or set(weights) != set(self.model.state_dict()):
            raise ValueError("the training state's EMA weights do not fit the model (was it trained with --ema?)")
        self.model.load_state_dict(weights)
        self.steps = int(state["steps"])

    def hook(self, model: nn.Module):
        """An optimiser step post-hook that updates the average after every step
        (``opt.register_step_post_hook(ema.hook(model))``)."""
        def after_step(_opt, _args, _kwargs) -> None:
            self.update(model)

        return after_step
