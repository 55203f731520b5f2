"""The adaptive attack on a detector (Carlini & Wagner 2017's lesson: a detector is only as good
as its number under an attack that knows about it): PGD on ``cls_loss(classifier) - lam *
detector_logit``, which fools the classifier *and* makes the detector say "clean"."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._torch import model_guard
from ..attacks.base import is_adversarial
from ..attacks.losses import LossFn
from ..attacks.pgd import PGD
from ..threat import ThreatModel
from .detector import Detector


class AdaptiveDetectorAttack(PGD):
    """PGD against classifier *and* detector: ascend ``cls_loss(logits, y) - lam * detector_logit``.

    Args:
        threat: the perturbation set.
        classifier: the model the detector watches (the attack must be run on this model).
        detector: a trained :class:`Detector` (its head is guarded like the model: eval mode,
            no parameter gradients, restored afterwards).
        steps, step_size, rel_step_size, random_start, restarts, early_stop, seed: as for PGD.
        lam: weight of the detector term (0: the plain classifier attack, bit for bit).
        loss: classifier loss (``ce``, ``margin``, ... see :mod:`robustlab.attacks.losses`).
        kappa: cap the classifier loss at ``kappa`` (with ``loss="margin"``: once the sample is
            misclassified by margin kappa the whole step goes to evading the detector).
        det_margin: cap the detector term too: the detector logit counts only down to
            ``threshold - det_margin`` (a hinge, as in Carlini & Wagner's attacks on detectors).
        require_evasion: count a point as a success (for keeping the best point per sample) only
            when it fools the classifier *and* the detector logit is <= its threshold. Default:
            True when ``lam > 0``, False for ``lam == 0`` (then it is exactly PGD).
    """

    name = "adaptive-detector"

    def __init__(
        self,
        threat: ThreatModel,
        classifier: nn.Module,
        detector: Detector,
        steps: int = 40,
        lam: float = 1.0,
        loss: str | LossFn = "ce",
        kappa: float | None = None,
        det_margin: float | None = None,
        require_evasion: bool | None = None,
        step_size: float | None = None,
        rel_step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        early_stop: bool = False,
        eval_mode: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(threat, steps=steps, step_size=step_size, rel_step_size=rel_step_size,
                         random_start=random_start, restarts=restarts, loss=loss, early_stop=early_stop,
                         eval_mode=eval_mode, seed=seed)
        if not isinstance(detector, Detector):
            raise ValueError(f"detector must be a robustlab.detection.Detector, got {type(detector).__name__}")
        lam = float(lam)
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        self.classifier, self.detector, self.lam = classifier, detector, lam
        self.kappa = None if kappa is None else float(kappa)
        self.det_margin = None if det_margin is None else float(det_margin)
        self.require_evasion = (lam > 0) if require_evasion is None else bool(require_evasion)

    def __repr__(self) -> str:
        t = self.threat
        return (f"{type(self).__name__}(norm={t.norm}, eps={t.eps:g}, steps={self.steps}, step_size={self.step_size:g}, "
                f"lam={self.lam:g}, loss={self.loss_name}, kappa={self.kappa}, det_margin={self.det_margin}, "
                f"require_evasion={self.require_evasion})")

    def _objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None):
        """(per-sample combined loss, per-sample success, logits) for one forward pass."""
        if self.lam == 0 and not self.require_evasion:
            logits, det = model(x), None  # no detector in the graph: exactly the plain attack
        else:
            logits, det = self.detector.joint(model, x)
        loss = self.loss_fn(logits, y, target)
        if self.kappa is not None:
            loss = loss.clamp(max=self.kappa)
        if det is not None and self.lam > 0:
            if self.det_margin is not None:  # stop pushing once det_margin below the threshold
                det = det.clamp(min=self.detector.threshold - self.det_margin)
            loss = loss - self.lam * det
        succ = is_adversarial(logits.detach(), y, target)
        if self.require_evasion:
            assert det is not None
            succ = succ & (det.detach() <= self.detector.threshold)
        return loss, succ, logits

    def _attack(self, model, x, y, target, generator):
        if model is not self.classifier:
            raise ValueError("AdaptiveDetectorAttack must be run on the classifier it was built for")
        with model_guard(self.detector.head):
            return super()._attack(model, x, y, target, generator)

    def _run_once(self, model, x, y, target, start, idx, best, keep_final=None) -> None:
        # Always scores its final iterate (success here includes evading the detector), so
        # ``keep_final`` is not needed.
        def sub(t):
            return t if (t is None or idx is None) else t[idx]

        xs, ys, ts, xa = sub(x), sub(y), sub(target), sub(start)
        for _ in range(self.steps):
            xa_g = xa.detach().requires_grad_(True)
            with torch.enable_grad():
                loss, succ, _ = self._objective(model, xa_g, ys, ts)
                (grad,) = torch.autograd.grad(loss.sum(), xa_g)
            loss, grad = loss.detach(), grad.detach()
            best.update(xa, loss, succ, idx)
            if self.early_stop:
                assert idx is not None
                keep = ~succ
                if not bool(keep.all()):
                    idx = idx[keep]
                    if idx.numel() == 0:
                        return
                    xa, grad, xs, ys = xa[keep], grad[keep], xs[keep], ys[keep]
                    ts = None if ts is None else ts[keep]
            xa = self.threat.project(xa.add(self.threat.steepest_direction(grad), alpha=self.step_size), xs)
        with torch.no_grad():
            loss, succ, _ = self._objective(model, xa, ys, ts)
        best.update(xa, loss, succ, idx)
