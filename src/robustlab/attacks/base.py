"""The contract every attack keeps.

``attack(model, x, y, target=None)`` returns a new, detached tensor of ``x``'s shape, dtype and
device, inside the threat model's eps-ball and bounds. The model is left exactly as found
(train/eval mode of every submodule, parameters, buffers, ``requires_grad`` flags, ``.grad``) and
the caller's ``x`` is never written to. Subclasses implement ``_attack`` as one short loop.
The one exception to the ball is an attack with ``eps_ball = False`` (a fooling image made from
noise): its output is only clipped to the bounds, and evaluations refuse it.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

import torch
from torch import nn

from .._rng import SampleRNG
from .._torch import check_float, check_int, model_guard
from ..threat import ThreatModel
from ..validation import check_images, check_labels, check_logits, check_same_device
from .losses import LossFn, get_loss

#: Short names for the optional arguments of the attack hooks (``target``, ``generator``).
OptTensor: TypeAlias = torch.Tensor | None
OptGen: TypeAlias = torch.Generator | SampleRNG | None


@contextlib.contextmanager
def channels_last_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Run the body with the model's 4-D parameters (convolution kernels) in channels_last
    memory layout -- on CPU oneDNN's convolutions are much faster that way -- then put the
    very same tensors back (values, strides and storage exactly as found)."""
    saved: list[tuple[nn.Parameter, torch.Tensor]] = []
    try:
        for p in model.parameters():
            if p.dim() != 4:
                continue
            # Canonical channels_last strides even where a size-1 dimension makes the plain
            # layout count as channels_last too (a 1-channel first kernel): oneDNN picks the
            # layout of the whole network from the strides it sees.
            cl = torch.empty_like(p.data, memory_format=torch.channels_last)
            if cl.stride() != p.stride():
                saved.append((p, p.data))
                p.data = cl.copy_(p.data)
        yield model
    finally:
        for p, data in saved:
            p.data = data


@dataclass
class AttackResult:
    """What an attack produced, per sample.

    ``success``: the final example fools the model (untargeted: prediction != y; targeted:
    prediction == target). ``distance``: perturbation size in the threat model's norm.
    ``queries``: forward passes spent per sample where the attack counts them (black-box attacks).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    distance: torch.Tensor
    queries: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


class Crafted(NamedTuple):
    """What ``_attack`` may return instead of a bare tensor: the examples, optional per-sample
    query counts, and optional per-sample success when the attack already measured it on the
    returned points (saves the base class one forward pass)."""

    x_adv: torch.Tensor
    queries: torch.Tensor | None = None
    success: torch.Tensor | None = None


def is_adversarial(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Per-sample success: the prediction differs from y (untargeted) or equals target.

    Untargeted, a row of NaN or infinite logits counts as a success: the model gives no valid
    prediction there (argmax would read a NaN row as class 0 and could call it correct)."""
    pred = logits.argmax(1)
    if target is not None:
        return pred == target
    return (pred != y) | ~torch.isfinite(logits).all(dim=1)


def refuse_target(attack: str, target: OptTensor, targeted_classes: int) -> None:
    """An attack that picks its own targets (``targeted_classes > 0``) takes no ``target=``."""
    if target is not None and targeted_classes:
        raise ValueError(f"{attack} with targeted_classes > 0 chooses its own targets: do not pass target=")


def target_runs(logits: torch.Tensor, y: torch.Tensor, target: OptTensor, targeted_classes: int) -> list[tuple[OptTensor, OptTensor]]:
    """The runs of an attack with ``targeted_classes`` (APGD-T, FAB-T), each a pair (class the run
    aims at, success target): one run per ``targeted_classes`` highest-scoring non-true classes in
    the clean ``logits`` (capped at classes - 1; success = misclassified), or with 0 the one run
    at ``target``."""
    if not targeted_classes:
        return [(target, target)]
    k = min(targeted_classes, logits.shape[1] - 1)
    ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
    return [(ranked[:, j].contiguous(), None) for j in range(k)]


def require_eps_ball(attack: Attack) -> None:
    """Refuse an attack whose examples do not lie in the eps-ball (``eps_ball = False``, e.g. a
    fooling image synthesised from noise): robust accuracy is a statement about the ball, so
    evaluations call this for every attack before any work."""
    if not getattr(attack, "eps_ball", True):
        name = getattr(attack, "name", type(attack).__name__)
        raise ValueError(
            f"{name} is not an eps-ball attack: it synthesises images of a target class from scratch, so it has "
            f"no place in a robustness evaluation (evaluate, --attacks, suites); run it alone with a target "
            f"(robustlab attack --attack {name} --target K)"
        )


def attack_labels(logits: torch.Tensor, n: int, y: torch.Tensor | None, target: torch.Tensor | None) -> torch.Tensor:
    """The labels of a batch of ``n`` to attack: ``y``, or the predictions in ``logits`` when None;
    ``y`` and ``target`` are checked against the model's class count (``logits.shape[1]``)."""
    num_classes = logits.shape[1]
    if y is None:
        y = logits.argmax(1)
    check_labels(y, n, num_classes, "y")
    if target is not None:
        check_labels(target, n, num_classes, "target")
    return y


class Attack(ABC):
    """Base class: input checks, model-state guard, seeding, success bookkeeping.

    Args:
        threat: the perturbation set.
        loss: name of a loss in :mod:`robustlab.attacks.losses` or a callable
            ``(logits, y, target) -> (N,)`` that the attack ascends.
        eval_mode: run the model in eval mode (default); restored afterwards either way.
        seed: seed for the attack's own randomness (random starts, noise); None uses torch's
            global generator.
        early_stop: stop attacking a sample as soon as it is misclassified (for fixed-budget
            robust-accuracy evaluation; it changes nothing about the accuracy, only the cost).
        eot: Expectation over Transformation (Athalye et al. 2018) for randomised models: every
            gradient, loss and logit the attack uses is the average over ``eot`` forward(+backward)
            passes of the same input, and so is every success decision it makes (a point counts as
            adversarial when the prediction of the averaged logits is). 1 (default): one pass, the
            plain attack. Cost scales by ``eot``. Only meaningful for models whose forward is
            random in eval mode (input noise, random resizing, dropout left on).
    """

    name: str = "attack"
    uses_gradients: bool = True
    #: Memory layout the attack runs the model in: ``None`` (auto: channels_last for image
    #: batches on CPU through a model with 2-D convolutions, about 1.4-1.6x faster per
    #: forward+backward with oneDNN; a model that cannot run that way, e.g. one that calls
    #: ``.view`` on feature maps, falls back to the default layout), ``True`` or ``False``.
    #: The returned examples keep the input's layout either way; the model is left as found.
    channels_last: bool | None = None
    #: EOT draws per gradient / logit evaluation (see ``eot`` below); 1 for attacks without it.
    eot: int = 1
    _early_stop: bool = False
    #: A minimum-norm attack (CW, FAB): its ``steps`` drive a search for the closest example, not
    #: a fixed-budget ascent, so robust accuracy vs its steps is no convergence evidence.
    minimum_norm: bool = False
    #: The threat-model norms the attack supports; any other is refused with a ValueError at
    #: construction (an attack must opt in to L1, whose geometry Linf/L2 code gets wrong).
    norms: tuple[str, ...] = ("linf", "l2")
    #: The attack draws its randomness through :mod:`robustlab._rng` (so it accepts per-sample
    #: generators); attacks written against ``torch.Generator`` keep False and get one.
    per_sample_rng: bool = False
    #: The examples lie in the eps-ball around ``x`` (the contract above). False for an attack that
    #: synthesises inputs from scratch (``fooling-image``): the base class then only clips its
    #: output to the bounds, and robustness evaluations refuse it (:func:`require_eps_ball`).
    eps_ball: bool = True
    #: The attack has no untargeted form: a call without ``target=`` is a ValueError.
    needs_target: bool = False

    def __init__(
        self,
        threat: ThreatModel,
        *,
        loss: str | LossFn = "ce",
        eval_mode: bool = True,
        seed: int | None = None,
        early_stop: bool = False,
        eot: int = 1,
    ) -> None:
        if not isinstance(threat, ThreatModel):
            raise ValueError(f"threat must be a robustlab.ThreatModel, got {type(threat).__name__}")
        if threat.norm not in self.norms:
            raise ValueError(
                f"{type(self).__name__} does not support the {threat.norm} threat model "
                f"(supported: {', '.join(self.norms)})"
            )
        self.threat = threat
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn = get_loss(loss)
        self.eval_mode = bool(eval_mode)
        self.seed = seed
        self.eot = check_int("eot", eot, 1)
        self.early_stop = early_stop

    @property
    def early_stop(self) -> bool:
        """Stop attacking a sample once it is misclassified; always False with ``eot > 1``: a
        randomised model misclassifies with some probability, so freezing a sample at its first
        success would return a point just across the (averaged) boundary, which fresh draws
        often classify correctly. The attack then keeps its best point over the full budget."""
        return self._early_stop and self.eot == 1

    @early_stop.setter
    def early_stop(self, value: bool) -> None:
        """Set the requested early stop (stored as a bool; the getter still returns False with ``eot > 1``)."""
        self._early_stop = bool(value)

    def __repr__(self) -> str:
        t = self.threat
        return f"{type(self).__name__}(norm={t.norm}, eps={t.eps:g}{self._eot_repr()})"

    def _targets_repr(self) -> str:
        """``", targeted_classes=K"`` for an attack that picks its own K targets, else nothing."""
        k = getattr(self, "targeted_classes", 0)
        return f", targeted_classes={k}" if k else ""

    def _eot_repr(self) -> str:
        """``", eot=N"`` when the attack averages N draws (part of its budget), else nothing."""
        return f", eot={self.eot}" if getattr(self, "eot", 1) != 1 else ""

    # --- public ---------------------------------------------------------------------------
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, target: torch.Tensor | None = None,
        sample_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Adversarial examples for ``x``. With ``y=None`` the model's own predictions are used
        as labels (no label leaking); with ``target`` the attack is targeted. ``sample_ids``
        (one integer per sample, e.g. its index in the data set) make a seeded attack's random
        draws per sample (:mod:`robustlab._rng`): a sample then gets the same result in any batch.

        Only the examples are wanted here, so the forward pass that ``run`` spends on measuring
        success is skipped; the examples are the same as ``run(...).x_adv``."""
        return self._execute(model, x, y, target, measure=False, sample_ids=sample_ids)[0]

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, target: torch.Tensor | None = None,
        sample_ids: torch.Tensor | None = None,
    ) -> AttackResult:
        """Like ``__call__`` but returns an :class:`AttackResult` with per-sample success and size."""
        x_adv, success, distance, queries = self._execute(model, x, y, target, measure=True, sample_ids=sample_ids)
        assert success is not None
        return AttackResult(x_adv=x_adv, success=success, distance=distance, queries=queries)

    def _execute(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, target: torch.Tensor | None, measure: bool,
        sample_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        x0 = self._checked_copy(model, x, y, target)
        if sample_ids is not None and (not isinstance(sample_ids, torch.Tensor) or sample_ids.shape != (len(x0),)
                                       or sample_ids.is_floating_point() or sample_ids.is_complex()):
            raise ValueError(f"sample_ids must be an integer tensor of shape ({len(x0)},), one id per sample")
        with model_guard(model, self.eval_mode), contextlib.ExitStack() as layout:
            use_cl = self._wants_channels_last(model, x0)
            xw = x0
            if use_cl:
                layout.enter_context(channels_last_weights(model))
                xw = x0.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                # With labels given, one sample suffices to learn the number of classes; in train
                # mode (eval_mode=False) BatchNorm needs more than one sample, so the whole batch.
                one = y is not None and self.eval_mode
                try:
                    probe = xw[:1] if one else xw
                    out = self._logits(model, probe)
                except RuntimeError:
                    if not use_cl or self.channels_last:
                        raise
                    layout.close()  # auto mode: this model needs the default layout
                    use_cl, xw = False, x0
                    probe = xw[:1] if one else xw
                    out = self._logits(model, probe)
                logits = check_logits(out, probe.shape[0])
            y = attack_labels(logits, x0.shape[0], y, target)
            if target is None and self.needs_target:
                require_eps_ball(self)
                raise ValueError(f"the {self.name} attack needs target= (a class to aim at): it has no untargeted form")
            generator = self._generator(x0.device, sample_ids)
            success = None
            if self.threat.eps == 0 and self.eps_ball:
                x_adv, queries = x0.clone(), None
            else:
                crafted = self._attack(model, xw, y, target, generator)
                if isinstance(crafted, Crafted):
                    x_adv, queries, success = crafted
                elif isinstance(crafted, tuple):
                    (x_adv, queries), success = crafted, None
                else:
                    x_adv, queries = crafted, None
            x_adv = x_adv.detach()
            projected = self.threat.project(x_adv, x0) if self.eps_ball else self.threat.clip_bounds(x_adv)
            bad = ~torch.isfinite(projected.flatten(1)).all(dim=1)
            if bool(bad.any()):  # one check per call, never per step
                raise ValueError(
                    f"{type(self).__name__} produced non-finite examples for {int(bad.sum())} of {len(bad)} inputs: "
                    "the model's outputs or input gradients are NaN or infinite there"
                )
            if measure and (success is None or not torch.equal(projected, x_adv)):
                with torch.no_grad():
                    success = is_adversarial(self._logits(model, projected), y, target)
            x_adv = projected.contiguous(memory_format=torch.contiguous_format) if use_cl else projected
        return x_adv, (success if measure else None), self.threat.distance(x_adv, x0), queries

    def _checked_copy(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, target: torch.Tensor | None
    ) -> torch.Tensor:
        """Check a call's model, images and devices; return a private detached copy of ``x``."""
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_images(x, self.threat)
        check_same_device(model, x=x, y=y, target=target)
        return x.detach().clone()

    def _wants_channels_last(self, model: nn.Module, x: torch.Tensor) -> bool:
        if self.channels_last is not None:
            return bool(self.channels_last) and x.dim() == 4
        return (
            x.dim() == 4
            and x.device.type == "cpu"
            and any(isinstance(m, nn.Conv2d) for m in model.modules())
        )

    # --- for subclasses -------------------------------------------------------------------
    @abstractmethod
    def _attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: OptTensor, generator: OptGen
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | Crafted:
        """Return adversarial examples (optionally with per-sample query counts, or a
        :class:`Crafted` that also carries per-sample success measured on those points).

        ``x`` is a private detached copy; ``y`` and ``target`` are validated; the model is
        already guarded. The result is projected onto the ball and bounds afterwards anyway.
        """

    def _generator(self, device: torch.device, sample_ids: torch.Tensor | None = None) -> OptGen:
        """The attack's randomness: None (torch's global generator) without a seed; with one, per-sample
        draws when ``sample_ids`` are given and the attack draws through :mod:`robustlab._rng`, else
        a torch.Generator seeded once per call."""
        if self.seed is None:
            return None
        if sample_ids is not None and self.per_sample_rng:
            return SampleRNG(int(self.seed), sample_ids.to(device))
        g = torch.Generator(device=device)
        g.manual_seed(int(self.seed))
        return g

    def _logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The model's logits for ``x`` (call under ``torch.no_grad()``): one forward pass, or with
        ``eot > 1`` the average over ``eot`` passes (the expected logits of a randomised model)."""
        logits = model(x)
        if self.eot == 1:
            return logits
        for _ in range(self.eot - 1):
            logits = logits + model(x)
        return logits / self.eot

    def _loss_and_grad(
        self,
        model: nn.Module,
        x_adv: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        loss_fn: LossFn | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward+backward: per-sample loss (``loss_fn``, default the attack's), its input
        gradient, and the logits (detached), so the same pass serves the update and the success
        check. With ``eot > 1`` all three are averages over ``eot`` forward+backward passes (EOT);
        each pass holds its own graph only until its backward, so memory does not grow."""
        fn = self.loss_fn if loss_fn is None else loss_fn
        x_adv = x_adv.detach().requires_grad_(True)
        loss, grad, logits = _forward_backward(model, x_adv, y, target, fn)
        if self.eot == 1:
            return loss, grad, logits
        for _ in range(self.eot - 1):
            more = _forward_backward(model, x_adv, y, target, fn)
            loss, grad, logits = loss + more[0], grad + more[1], logits + more[2]
        return loss / self.eot, grad / self.eot, logits / self.eot


def _forward_backward(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, loss_fn: LossFn
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward+backward at the leaf ``x_adv``: detached per-sample loss, input gradient, logits."""
    with torch.enable_grad():
        logits = model(x_adv)
        loss = loss_fn(logits, y, target)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return loss.detach(), grad.detach(), logits.detach()


def resolve_step_size(step_size: float | None, rel_step_size: float | None, eps: float, default_rel: float) -> float:
    """An absolute step size from either an absolute value or a fraction of eps (each, when
    given, a finite number > 0; ``default_rel`` when neither is)."""
    if step_size is not None and rel_step_size is not None:
        raise ValueError("give step_size or rel_step_size, not both")
    if step_size is not None:
        return check_float("step_size", step_size, 0.0, strict=True)
    rel = default_rel if rel_step_size is None else check_float("rel_step_size", rel_step_size, 0.0, strict=True)
    return float(rel) * eps
