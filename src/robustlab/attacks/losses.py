"""Per-sample losses that gradient attacks ascend.

Every loss returns shape (N,) and is written so that *larger means closer to the attacker's
goal*: untargeted losses grow as the true class loses, targeted ones as the target class wins.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _other_max(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Largest logit among the classes other than ``cls``."""
    masked = logits.scatter(1, cls[:, None], float("-inf"))
    return masked.amax(dim=1)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Untargeted: CE(y). Targeted: -CE(target) (ascending it moves toward the target)."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def margin(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Carlini-Wagner margin. Untargeted: max_{j!=y} z_j - z_y. Targeted: z_t - max_{j!=t} z_j.

    Positive exactly when the attack has succeeded.
    """
    if target is None:
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        return _other_max(logits, y) - z_y
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return z_t - _other_max(logits, target)


def dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020): the margin divided by the spread of the
    top logits, so it is invariant to shifting and rescaling the logits (defeats the
    'scale the logits until softmax saturates' kind of gradient masking).

    Needs at least 3 classes (4 for the targeted form).
    """
    srt = logits.sort(dim=1, descending=True).values
    if target is None:
        if logits.shape[1] < 3:
            raise ValueError(f"the DLR loss needs >= 3 classes, the model gives {logits.shape[1]}")
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        top_is_y = logits.argmax(1) == y
        z_other = torch.where(top_is_y, srt[:, 1], srt[:, 0])
        return -(z_y - z_other) / (srt[:, 0] - srt[:, 2] + 1e-12)
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs >= 4 classes, the model gives {logits.shape[1]}")
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12)


def target_difference(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """A targeted objective that also pushes away from the true class: maximise CE(y) - CE(target)
    (the other targeted objective, ``"ce"`` with ``target=``, only minimises CE(target))."""
    if target is None:
        raise ValueError("the 'ce-difference' loss is targeted: pass target=")
    return F.cross_entropy(logits, y, reduction="none") - F.cross_entropy(logits, target, reduction="none")


LOSSES: dict[str, LossFn] = {
    "ce": cross_entropy,
    "margin": margin,
    "cw": margin,
    "dlr": dlr,
    "ce-difference": target_difference,
}


def get_loss(name: str | LossFn) -> LossFn:
    """Look a loss up by name (ce, margin/cw, dlr, ce-difference) or pass a callable through."""
    if callable(name):
        return name
    key = str(name).lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: expected one of {', '.join(sorted(LOSSES))}")
    return LOSSES[key]
