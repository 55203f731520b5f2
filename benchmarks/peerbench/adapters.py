"""One adapter per library, all behind one interface.

A ``Builder`` is ``builder(spec, model, shape, n) -> call | None``: ``shape`` is one input's
shape, ``n`` the batch size; ``call(x, y)`` returns the adversarial examples, or for the ``eval``
spec the robust accuracy. ``None`` means the library has no equivalent of that attack. The model
is frozen (eval mode, no parameter gradients) before any builder sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from robustlab.attacks import APGD, FGSM, MIM, PGD
from robustlab.evaluation.evaluate import evaluate

from .common import Spec, predict

Call = Callable[[torch.Tensor, torch.Tensor], Any]
Builder = Callable[[Spec, nn.Module, tuple, int], "Call | None"]


def peer_eval(model: nn.Module, attack: Callable, x: torch.Tensor, y: torch.Tensor) -> float:
    """A plain fixed-budget evaluation: attack only the correctly classified samples, count
    those still classified correctly afterwards. ``attack`` returns the examples, or foolbox's
    ``(examples, success)``."""
    idx = (predict(model, x) == y).nonzero().squeeze(1)
    if idx.numel() == 0:
        return 0.0
    out = attack(x[idx], y[idx])
    if isinstance(out, tuple):  # foolbox hands back its own success flags
        robust = int((~out[1]).sum())
    else:
        robust = int((predict(model, out) == y[idx]).sum())
    return robust / len(x)


def _call(spec: Spec, model: nn.Module, run: Callable) -> Call:
    """A peer's attack as the call for ``spec``: for ``eval`` inside :func:`peer_eval`."""
    if spec.key == "eval":
        return lambda x, y: peer_eval(model, run, x, y)
    return run


# ------------------------------------------------------------------------------------------
# robustlab
# ------------------------------------------------------------------------------------------
def robustlab_attack(spec: Spec, early_stop: bool = False):
    """robustlab's attack for every spec but ``eval`` (None there)."""
    t = spec.threat
    if spec.key == "fgsm":
        return FGSM(t)
    if spec.key in ("pgd-linf", "pgd-l2"):
        return PGD(t, steps=spec.steps, step_size=spec.step, random_start=True, early_stop=early_stop)
    if spec.key == "mim":
        return MIM(t, steps=spec.steps, step_size=spec.step, decay=1.0, random_start=False, early_stop=early_stop)
    if spec.key == "apgd-ce":
        return APGD(t, steps=spec.steps, restarts=1, loss="ce", early_stop=early_stop)
    return None


def build_robustlab(spec: Spec, model: nn.Module, shape, n: int, early_stop: bool = True) -> Call | None:
    """The attacks as robustlab's users call them; ``eval`` is ``evaluate(..., early_stop)``."""
    if spec.key == "eval":
        t = spec.threat
        pgd = PGD(t, steps=spec.steps, step_size=spec.step, random_start=True)
        return lambda x, y: evaluate(model, x, y, t, [pgd], batch_size=len(x), early_stop=early_stop).robust_accuracy
    a = robustlab_attack(spec)
    return None if a is None else (lambda x, y: a(model, x, y))


def build_robustlab_no_es(spec: Spec, model: nn.Module, shape, n: int) -> Call | None:
    """``evaluate`` without early stop, for reference (``eval`` only)."""
    return build_robustlab(spec, model, shape, n, early_stop=False) if spec.key == "eval" else None


# ------------------------------------------------------------------------------------------
# peers
# ------------------------------------------------------------------------------------------
def build_torchattacks(spec: Spec, model: nn.Module, shape, n: int) -> Call | None:
    import torchattacks as ta

    if spec.key == "fgsm":
        a = ta.FGSM(model, eps=spec.eps)
    elif spec.key in ("pgd-linf", "eval"):
        a = ta.PGD(model, eps=spec.eps, alpha=spec.step, steps=spec.steps, random_start=True)
    elif spec.key == "pgd-l2":
        a = ta.PGDL2(model, eps=spec.eps, alpha=spec.step, steps=spec.steps, random_start=True)
    elif spec.key == "mim":
        a = ta.MIFGSM(model, eps=spec.eps, alpha=spec.step, steps=spec.steps, decay=1.0)
    elif spec.key == "apgd-ce":
        a = ta.APGD(model, norm="Linf", eps=spec.eps, steps=spec.steps, n_restarts=1, loss="ce", seed=0)
    else:
        return None
    return _call(spec, model, lambda x, y: a(x, y))


def build_foolbox(spec: Spec, model: nn.Module, shape, n: int) -> Call | None:
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device="cpu")
    if spec.key == "fgsm":
        a = fb.attacks.FGSM()
    elif spec.key in ("pgd-linf", "eval"):
        a = fb.attacks.LinfPGD(abs_stepsize=spec.step, steps=spec.steps, random_start=True)
    elif spec.key == "pgd-l2":
        a = fb.attacks.L2PGD(abs_stepsize=spec.step, steps=spec.steps, random_start=True)
    elif spec.key == "mim":
        a = fb.attacks.LinfMomentumIterativeFastGradientMethod(
            momentum=1.0, abs_stepsize=spec.step, steps=spec.steps, random_start=False
        )
    else:
        return None  # no APGD in foolbox 3

    def run(x, y):
        _, clipped, success = a(fmodel, x, y, epsilons=spec.eps)
        return clipped, success

    if spec.key == "eval":
        return _call(spec, model, run)
    return lambda x, y: run(x, y)[0]


def build_art(spec: Spec, model: nn.Module, shape, n: int) -> Call | None:
    import numpy as np
    from art.attacks.evasion import (
        AutoProjectedGradientDescent,
        FastGradientMethod,
        MomentumIterativeMethod,
        ProjectedGradientDescentPyTorch,
    )
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(shape), nb_classes=10,
        clip_values=(0.0, 1.0), device_type="cpu",
    )
    norm = np.inf if spec.norm == "linf" else 2
    if spec.key == "fgsm":
        a = FastGradientMethod(clf, norm=norm, eps=spec.eps, batch_size=n)
    elif spec.key in ("pgd-linf", "pgd-l2", "eval"):
        a = ProjectedGradientDescentPyTorch(
            clf, norm=norm, eps=spec.eps, eps_step=spec.step, max_iter=spec.steps, num_random_init=1,
            batch_size=n, verbose=False,
        )
    elif spec.key == "mim":
        a = MomentumIterativeMethod(
            clf, norm=norm, eps=spec.eps, eps_step=spec.step, decay=1.0, max_iter=spec.steps, batch_size=n,
            verbose=False,
        )
    elif spec.key == "apgd-ce":
        a = AutoProjectedGradientDescent(
            clf, norm=norm, eps=spec.eps, eps_step=2 * spec.eps, max_iter=spec.steps, nb_random_init=1,
            batch_size=n, loss_type=None, verbose=False,
        )
    else:
        return None
    return _call(spec, model, lambda x, y: torch.from_numpy(a.generate(x.numpy(), y.numpy())))


BUILDERS: dict[str, Builder] = {
    "robustlab": build_robustlab,
    "robustlab-noES": build_robustlab_no_es,
    "torchattacks": build_torchattacks,
    "foolbox": build_foolbox,
    "art": build_art,
}
