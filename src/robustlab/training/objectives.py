"""Training objectives: what loss one batch contributes.

The training loop knows nothing about attacks; an objective turns (model, x, y) into a scalar loss
plus a few numbers to log. Adversarial objectives craft their examples through the public
``Attack`` call, which leaves the model's train mode and parameters exactly as it found them.

Registered names (``build_objective``): clean, fgsm-at, pgd-at, mix, fast-at, trades, alp,
adv-reg, noise, nsl-graph (:mod:`.nsl_graph`), advprop (:mod:`.advprop`). (``offline`` retraining is
a pipeline, see :mod:`.offline`.)
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import FGSM, FGV, PGD, Attack, build_attack
from ..distributed import unwrap
from ..registry import check_options, lookup
from ..threat import ThreatModel, canonical_norm
from .advprop import AdvProp
from .awp import awp_loss, check_gamma
from .nsl_graph import NSLGraph

Logs = dict[str, Any]


@runtime_checkable
class Objective(Protocol):
    """A per-batch training loss. ``name`` and ``config()`` are recorded in checkpoints.

    Optional: ``setup(model, train_data)`` is called once before the first batch.
    """

    name: str

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """Return (scalar loss to minimise, logs of detached tensors or floats)."""
        ...

    def config(self) -> dict[str, Any]:
        """The objective's name and settings, JSON-able, as recorded in checkpoints."""
        ...


def _acc(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(1) == y).float().mean()


def _pair_logits(model: nn.Module, x: torch.Tensor, x_other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``x`` and of ``x_other`` from one forward pass on both (so BatchNorm normalises
    the two halves with the same batch statistics)."""
    logits = model(torch.cat([x, x_other]))
    return logits[: len(x)], logits[len(x) :]


@torch.no_grad()
def _eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits in eval mode without gradients (BatchNorm statistics untouched); the mode is restored."""
    was = model.training
    model.eval()
    logits = model(x)
    model.train(was)
    return logits


def check_label_smoothing(value: float) -> float:
    """``value`` as a float; a ValueError unless 0 <= value < 1 (0 = plain cross-entropy)."""
    v = float(value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1) (the mass spread evenly over all classes, e.g. 0.1), got {value}")
    return v


class _Configured:
    """Records constructor arguments for ``config()``."""

    name = "objective"
    _options: dict[str, Any]

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self._options}


class Clean(_Configured):
    """Standard training: cross-entropy on the clean batch (``label_smoothing`` > 0: against
    targets that spread that mass evenly over all classes, Szegedy et al. 2016)."""

    name = "clean"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self._options = {"label_smoothing": self.label_smoothing} if self.label_smoothing else {}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss, {"loss": loss.detach(), "acc": _acc(logits, y)}


class _Adversarial(_Configured):
    """Shared plumbing: a threat model and the attack that crafts training examples."""

    def __init__(self, eps: float, norm: str, **options: Any) -> None:
        self.threat = ThreatModel(canonical_norm(norm), eps)
        if self.threat.norm == "l0":  # refused here, before any data or model is set up
            raise ValueError(f"{type(self).__name__} does not support the l0 threat model: adversarial training crafts "
                             "its examples with gradient steps, and L0 has none")
        self._options = {"eps": self.threat.eps, "norm": self.threat.norm, **options}

    def _labels(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, predicted: bool) -> torch.Tensor:
        return _eval_logits(unwrap(model), x).argmax(1) if predicted else y

    def _weight_perturbed(self, model: nn.Module, loss_fn: Callable[[nn.Module], tuple[torch.Tensor, Logs]]
                          ) -> tuple[torch.Tensor, Logs]:
        """``loss_fn(model)``, at adversarially perturbed weights when ``awp_gamma`` > 0 (:mod:`.awp`)."""
        gamma = getattr(self, "awp_gamma", 0.0)
        return awp_loss(model, loss_fn, gamma) if gamma > 0 else loss_fn(model)


class FGSMAT(_Adversarial):
    """FGSM adversarial training (Goodfellow et al. 2015, equal weights): gradient of CE on the
    clean batch plus gradient of CE on its FGSM batch (crafted with the current weights), one
    update with the sum. ``attack="fgv"`` crafts with the fast gradient value instead (the raw
    gradient scaled to the budget per sample, :class:`~robustlab.attacks.FGV`)."""

    name = "fgsm-at"
    ATTACKS = {"fgsm": FGSM, "fgv": FGV}

    def __init__(self, eps: float = 0.1, norm: str = "linf", attack: str = "fgsm") -> None:
        key = str(attack).strip().lower()
        if key not in self.ATTACKS:
            raise ValueError(f"unknown attack {attack!r} for defense 'fgsm-at': expected one of {', '.join(self.ATTACKS)}")
        super().__init__(eps, norm, attack=key)
        self.attack = self.ATTACKS[key](self.threat)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        lc, la = _pair_logits(model, x, self.attack(unwrap(model), x, y))
        loss_c, loss_a = F.cross_entropy(lc, y), F.cross_entropy(la, y)
        return loss_c + loss_a, {"loss": (loss_c + loss_a).detach(), "clean_loss": loss_c.detach(),
                                 "adv_loss": loss_a.detach(), "acc": _acc(lc, y), "adv_acc": _acc(la, y)}


class PGDAT(_Adversarial):
    """Madry et al. 2018: train on PGD examples. ``predicted_labels`` crafts against the model's
    own predictions (no label leaking); ``mixed`` uses (CE(clean) + CE(adv)) / 2; ``awp_gamma`` > 0
    adds adversarial weight perturbation (:mod:`.awp`); ``label_smoothing`` > 0 smooths the training
    loss's targets (never the attack's)."""

    name = "pgd-at"

    def __init__(self, eps: float = 0.1, norm: str = "linf", steps: int = 10, rel_step_size: float = 0.25,
                 random_start: bool = True, predicted_labels: bool = False, mixed: bool = False,
                 awp_gamma: float = 0.0, label_smoothing: float = 0.0) -> None:
        self.awp_gamma = check_gamma(awp_gamma)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        super().__init__(eps, norm, steps=steps, rel_step_size=rel_step_size, random_start=random_start,
                         predicted_labels=predicted_labels, mixed=mixed,
                         **({"awp_gamma": self.awp_gamma} if self.awp_gamma else {}),
                         **({"label_smoothing": self.label_smoothing} if self.label_smoothing else {}))
        self.attack = PGD(self.threat, steps=steps, rel_step_size=rel_step_size, random_start=random_start,
                         track_best=False)
        self.predicted_labels, self.mixed = predicted_labels, mixed

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        x_adv = self.attack(unwrap(model), x, self._labels(model, x, y, self.predicted_labels))
        return self._weight_perturbed(model, lambda m: self._loss(m, x, x_adv, y))

    def _loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        if not self.mixed:
            la = model(x_adv)
            loss = F.cross_entropy(la, y, label_smoothing=self.label_smoothing)
            return loss, {"loss": loss.detach(), "adv_acc": _acc(la, y)}
        lc, la = _pair_logits(model, x, x_adv)
        ls = self.label_smoothing
        loss = 0.5 * (F.cross_entropy(lc, y, label_smoothing=ls) + F.cross_entropy(la, y, label_smoothing=ls))
        return loss, {"loss": loss.detach(), "acc": _acc(lc, y), "adv_acc": _acc(la, y)}


class Mix(_Adversarial):
    """A fraction of each batch clean, the rest adversarial (e.g. 20% / 80% as in Xie et al. 2019),
    crafted with any registered attack."""

    name = "mix"

    def __init__(self, eps: float = 0.1, norm: str = "linf", clean_fraction: float = 0.2, attack: str = "pgd",
                 steps: int = 10, rel_step_size: float = 0.25) -> None:
        if not 0.0 <= clean_fraction <= 1.0:
            raise ValueError(f"clean_fraction must be in [0, 1], got {clean_fraction}")
        super().__init__(eps, norm, clean_fraction=clean_fraction, attack=attack, steps=steps, rel_step_size=rel_step_size)
        opts: dict[str, Any] = {}
        if attack in ("pgd", "mim"):
            # Plain PGD (the final iterate, no scoring pass) for pgd, as in the other objectives.
            opts = ({"steps": steps, "rel_step_size": rel_step_size, "track_best": False} if attack == "pgd"
                    else {"steps": steps})
        self.attack: Attack = build_attack(attack, self.threat, **opts)
        self.clean_fraction = clean_fraction

    def split(self, n: int) -> int:
        """How many samples of a batch of ``n`` stay clean."""
        return int(round(self.clean_fraction * n))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        k = self.split(len(x))
        parts = [x[:k]]
        if k < len(x):
            parts.append(self.attack(unwrap(model), x[k:], y[k:]))
        logits = model(torch.cat(parts))
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "acc": _acc(logits, y), "clean_count": float(k)}


class FastAT(_Adversarial):
    """Wong et al. 2020 ("Fast is better than free"): FGSM from a uniform random start with step
    ``alpha = 1.25 * eps``. Every ``check_every`` batches the PGD accuracy on a monitor batch is
    measured; if it collapses (drops by more than ``collapse_drop`` below its best) catastrophic
    overfitting is declared: a warning is raised and, with ``rollback``, the weights return to the
    last good snapshot. ``label_smoothing`` > 0 smooths the training loss's targets (the FGSM step
    still ascends plain cross-entropy)."""

    name = "fast-at"

    def __init__(self, eps: float = 0.1, norm: str = "linf", alpha: float | None = None, check_every: int = 100,
                 monitor_size: int = 256, collapse_drop: float = 0.2, rollback: bool = True,
                 label_smoothing: float = 0.0) -> None:
        alpha = 1.25 * eps if alpha is None else alpha
        self.label_smoothing = check_label_smoothing(label_smoothing)
        super().__init__(eps, norm, alpha=alpha, check_every=check_every, monitor_size=monitor_size,
                         collapse_drop=collapse_drop, rollback=rollback,
                         **({"label_smoothing": self.label_smoothing} if self.label_smoothing else {}))
        self.alpha = float(alpha)
        self.check_every, self.monitor_size = int(check_every), int(monitor_size)
        self.collapse_drop, self.rollback = float(collapse_drop), bool(rollback)
        self._probe = PGD(self.threat, steps=10, rel_step_size=0.25, seed=0)
        self._batches = 0
        self._monitor: tuple[torch.Tensor, torch.Tensor] | None = None
        self._best = -1.0
        self._snapshot: dict[str, torch.Tensor] | None = None
        self.events: list[dict[str, Any]] = []

    def setup(self, model: nn.Module, train_data: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Reserve a fixed monitor batch (the last ``monitor_size`` training images)."""
        x, y = train_data
        self._monitor = (x[-self.monitor_size :], y[-self.monitor_size :])

    def _check(self, model: nn.Module) -> None:
        assert self._monitor is not None
        model = unwrap(model)
        xm, ym = self._monitor
        acc = float(_acc(_eval_logits(model, self._probe(model, xm, ym)), ym))
        if acc > self._best:
            self._best = acc
            self._snapshot = copy.deepcopy(model.state_dict())
        elif acc < self._best - self.collapse_drop:
            event = {"batch": self._batches, "pgd_accuracy": acc, "best": self._best, "rolled_back": self.rollback}
            self.events.append(event)
            warnings.warn(f"fast-at: catastrophic overfitting detected (monitor PGD accuracy {acc:.3f}, best {self._best:.3f})"
                          + ("; rolling back to the last good weights" if self.rollback else ""), RuntimeWarning, stacklevel=2)
            if self.rollback and self._snapshot is not None:
                model.load_state_dict(self._snapshot)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        if self._monitor is not None and self.check_every > 0 and self._batches % self.check_every == 0:
            self._check(model)
        self._batches += 1
        t = self.threat
        x0 = t.random_start(x)
        x0.requires_grad_(True)
        inner = unwrap(model)
        was = inner.training
        inner.eval()  # craft with frozen BatchNorm statistics, as every attack does
        try:
            (g,) = torch.autograd.grad(F.cross_entropy(inner(x0), y), x0)
        finally:
            inner.train(was)
        x_adv = t.project(x0.detach() + self.alpha * t.steepest_direction(g), x).detach()
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss, {"loss": loss.detach(), "adv_acc": _acc(logits, y), "monitor_best": self._best}


def kl_per_sample(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) per sample."""
    return (F.softmax(p_logits, 1) * (F.log_softmax(p_logits, 1) - F.log_softmax(q_logits, 1))).sum(1)


class TRADES(_Adversarial):
    """Zhang et al. 2019: CE(f(x), y) + beta * KL(f(x) || f(x_adv)), x_adv maximising the KL term;
    ``awp_gamma`` > 0 adds adversarial weight perturbation (:mod:`.awp`)."""

    name = "trades"

    def __init__(self, eps: float = 0.1, norm: str = "linf", beta: float = 6.0, steps: int = 10, rel_step_size: float = 0.25,
                 awp_gamma: float = 0.0) -> None:
        self.awp_gamma = check_gamma(awp_gamma)
        super().__init__(eps, norm, beta=beta, steps=steps, rel_step_size=rel_step_size,
                         **({"awp_gamma": self.awp_gamma} if self.awp_gamma else {}))
        self.beta, self.steps, self.rel_step_size = float(beta), int(steps), float(rel_step_size)

    def craft(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for the TRADES term: PGD from a random start maximising KL(f(x) || f(x_adv)),
        with the clean logits taken in eval mode."""
        model = unwrap(model)
        clean = _eval_logits(model, x)

        def kl_loss(logits: torch.Tensor, _y: torch.Tensor, _t: torch.Tensor | None) -> torch.Tensor:
            return kl_per_sample(clean[: len(logits)], logits)

        # Start near x (the KL gradient is zero exactly at x).
        return PGD(self.threat, steps=self.steps, rel_step_size=self.rel_step_size, random_start=True, loss=kl_loss,
                   track_best=False)(model, x, y)

    def loss_terms(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(CE on the clean batch, mean KL(clean || adversarial), clean logits)."""
        lc, la = _pair_logits(model, x, x_adv)
        return F.cross_entropy(lc, y), kl_per_sample(lc, la).mean(), lc

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        x_adv = self.craft(model, x, y)
        return self._weight_perturbed(model, lambda m: self._loss(m, x, x_adv, y))

    def _loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        ce, kl, lc = self.loss_terms(model, x, x_adv, y)
        loss = ce + self.beta * kl
        return loss, {"loss": loss.detach(), "ce": ce.detach(), "kl": kl.detach(), "acc": _acc(lc, y)}


class ALP(_Adversarial):
    """Adversarial logit pairing (Kannan et al. 2018): w_clean * CE(x) + w_adv * CE(x_adv)
    + lam * mean ||logits(x) - logits(x_adv)||^2, x_adv from PGD."""

    name = "alp"

    def __init__(self, eps: float = 0.1, norm: str = "linf", lam: float = 0.5, clean_weight: float = 0.5,
                 adv_weight: float = 0.5, steps: int = 10, rel_step_size: float = 0.25) -> None:
        super().__init__(eps, norm, lam=lam, clean_weight=clean_weight, adv_weight=adv_weight, steps=steps,
                         rel_step_size=rel_step_size)
        self.lam, self.wc, self.wa = float(lam), float(clean_weight), float(adv_weight)
        self.attack = PGD(self.threat, steps=steps, rel_step_size=rel_step_size, track_best=False)

    def loss_terms(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(CE clean, CE adversarial, mean squared logit distance, clean logits)."""
        lc, la = _pair_logits(model, x, x_adv)
        pair = (lc - la).pow(2).sum(1).mean()
        return F.cross_entropy(lc, y), F.cross_entropy(la, y), pair, lc

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        x_adv = self.attack(unwrap(model), x, y)
        ce_c, ce_a, pair, lc = self.loss_terms(model, x, x_adv, y)
        loss = self.wc * ce_c + self.wa * ce_a + self.lam * pair
        return loss, {"loss": loss.detach(), "pairing": pair.detach(), "acc": _acc(lc, y)}


class AdvReg(_Adversarial):
    """Adversarial regularisation with a neighbour loss (Neural Structured Learning):
    CE(x) + multiplier * CE(x_nbr), x_nbr = x + adv_step_size * (gradient normalised in the
    chosen norm: sign for Linf, unit L2 for L2)."""

    name = "adv-reg"

    def __init__(self, eps: float | None = None, norm: str = "linf", multiplier: float = 0.2, adv_step_size: float | None = None) -> None:
        step = adv_step_size if adv_step_size is not None else (eps if eps is not None else 0.1)
        super().__init__(step, norm, multiplier=multiplier, adv_step_size=step)
        self.multiplier = float(multiplier)
        self.attack = FGSM(self.threat)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        lc, ln = _pair_logits(model, x, self.attack(unwrap(model), x, y))
        sup, nbr = F.cross_entropy(lc, y), F.cross_entropy(ln, y)
        loss = sup + self.multiplier * nbr
        return loss, {"loss": loss.detach(), "neighbour_loss": nbr.detach(), "acc": _acc(lc, y)}


class NoiseTraining(_Configured):
    """Train on x + alpha * {-1, +1}^D (clipped to the bounds): the control that shows whether
    adversarial (gradient-chosen) perturbations matter."""

    name = "noise"

    def __init__(self, alpha: float | None = None, eps: float | None = None, norm: str = "linf") -> None:
        alpha = alpha if alpha is not None else (eps if eps is not None else 0.1)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self._options = {"alpha": self.alpha}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        signs = torch.randint(0, 2, x.shape, device=x.device, dtype=x.dtype) * 2 - 1
        logits = model((x + self.alpha * signs).clamp(0.0, 1.0))
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "acc": _acc(logits, y)}


OBJECTIVES: dict[str, Callable[..., Any]] = {
    "clean": Clean,
    "fgsm-at": FGSMAT,
    "pgd-at": PGDAT,
    "mix": Mix,
    "fast-at": FastAT,
    "trades": TRADES,
    "alp": ALP,
    "adv-reg": AdvReg,
    "noise": NoiseTraining,
    "nsl-graph": NSLGraph,
    "advprop": AdvProp,
}


def build_objective(name: str, **options: Any) -> Any:
    """A registered objective by name; unknown names or options are a ValueError."""
    key, cls = lookup(OBJECTIVES, name, "defense", also=" or offline")
    check_options(cls, options, f"defense {key!r}")
    return cls(**options)
