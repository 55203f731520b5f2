"""Speed levers (``--levers``): proposed changes to robustlab, measured by monkeypatch or wrapper
(nothing under src/ changes). Every variant is a ``Builder`` (see :mod:`peerbench.adapters`)."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks import PGD

from .adapters import Builder, Call, build_robustlab, build_torchattacks, peer_eval, robustlab_attack
from .common import Spec, predict


class Wrapped(nn.Module):
    """What the proposed ``precision="bf16"`` / channels-last option of the attacks would do in
    ``Attack._loss_and_grad`` (and APGD's local ``loss_and_grad``): feed channels-last inputs
    and run the forward under CPU bf16 autocast; logits come back as float32."""

    def __init__(self, model: nn.Module, channels_last: bool, bf16: bool) -> None:
        super().__init__()
        self.inner, self.cl, self.bf16 = model, channels_last, bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cl and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.inner(x)
        return out.float()


def lean_call(attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Attack.run`` minus the success forward and the distance (proposed for ``__call__``,
    which discards both): a local copy of robustlab/attacks/base.py ``Attack.run``."""
    from robustlab._torch import model_guard
    from robustlab.attacks.base import Crafted
    from robustlab.validation import check_images, check_labels, check_logits, check_same_device

    check_images(x, attack.threat)
    check_same_device(model, x=x, y=y)
    x0 = x.detach().clone()
    with model_guard(model, attack.eval_mode):
        with torch.no_grad():
            logits = check_logits(model(x0[:1]), 1)
        check_labels(y, x0.shape[0], logits.shape[1], "y")
        out = attack._attack(model, x0, y, None, attack._generator(x0.device))
        x_adv = out.x_adv if isinstance(out, Crafted) else (out[0] if isinstance(out, tuple) else out)
        return attack.threat.project(x_adv.detach(), x0)


def build_lever(early_stop: bool = False, cl: bool = False, bf16: bool = False, lean: bool = False) -> Builder:
    """A robustlab variant. With bf16 the timed call ends with one float32 forward on the result:
    the proposed design re-scores success in float32, so no claim rests on bf16 logits."""

    def build(spec: Spec, model: nn.Module, shape, n: int) -> Call | None:
        target = Wrapped(model, cl, bf16) if (cl or bf16) else model
        if spec.key == "eval":
            if not (early_stop and (cl or bf16)):
                return None
            pgd = PGD(spec.threat, steps=spec.steps, step_size=spec.step, random_start=True, early_stop=True)
            # evaluate() with the attack on the wrapped model, success in float32
            return lambda x, y: peer_eval(model, lambda xs, ys: pgd.run(target, xs, ys).x_adv, x, y)
        a = robustlab_attack(spec, early_stop)
        if a is None or (spec.key == "fgsm" and early_stop) or (lean and spec.key != "fgsm"):
            return None
        call = (lambda x, y: lean_call(a, target, x, y)) if lean else (lambda x, y: a(target, x, y))
        if not bf16:
            return call

        def rescored(x, y):
            x_adv = call(x, y)
            predict(model, x_adv)  # the float32 success check of the proposed design
            return x_adv

        return rescored

    return build


def build_all_levers(spec: Spec, model: nn.Module, shape, n: int) -> Call | None:
    """L1-L4 together: lean call + channels-last + bf16 for FGSM, early stop + channels-last +
    bf16 for the iterative attacks and the evaluation."""
    if spec.key == "fgsm":
        return build_lever(cl=True, bf16=True, lean=True)(spec, model, shape, n)
    return build_lever(early_stop=True, cl=True, bf16=True)(spec, model, shape, n)


LEVERS: dict[str, Builder] = {
    "robustlab": build_robustlab,
    "torchattacks": build_torchattacks,
    "L1 lean __call__": build_lever(lean=True),
    "L2 early stop": build_lever(early_stop=True),
    "L3 channels-last": build_lever(cl=True),
    "L4 bf16 autocast": build_lever(bf16=True),
    "L1-4 together": build_all_levers,
}
