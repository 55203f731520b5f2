"""Detect and reject (SafetyNet-style, Lu et al. 2017): a small binary classifier on the hidden
features of a trained classifier tells clean inputs from adversarial ones.

* :func:`capture_features` / :func:`extract_features` -- the flattened input (or output) of a named
  module, taken with a forward hook; by default the input of the classifier's final ``nn.Linear``
  (its penultimate-layer representation).
* :class:`FeatureDetector` -- an MLP (``hidden=()`` gives logistic regression) on standardised
  features; one logit per sample, positive = "adversarial".
* :class:`Detector` -- the head plus where its features come from and its decision threshold;
  saved as ``detector.safetensors`` + ``detector.json`` and rebuilt from the JSON architecture
  (never pickled).
* :func:`train_detector` -- features of clean and attacked training images, then the head.
* :class:`AdaptiveDetectorAttack` -- PGD on ``cls_loss(classifier) - lam * detector_logit``: fool the
  classifier *and* make the detector say "clean" (Carlini & Wagner 2017's lesson: a detector is only
  as good as its number under an attack that knows about it).
* :func:`roc_auc`, :func:`roc_curve`, :func:`tpr_at_fpr` -- the metrics, in torch (no sklearn).
* :func:`detector_experiment` -- train + evaluate under the plain and the adaptive attack.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._torch import model_guard
from ..attacks.base import Attack, is_adversarial
from ..attacks.losses import LossFn
from ..attacks.pgd import PGD
from ..storage.checkpoint import CheckpointError, _read_safetensors, atomic_save_safetensors, atomic_write_json, environment_info
from ..models.zoo import make_activation
from ..threat import ThreatModel

DETECTOR_WEIGHTS = "detector.safetensors"
DETECTOR_META = "detector.json"
DETECTOR_FORMAT = "robustlab-detector"
CAPTURES = ("input", "output")


# --- features ---------------------------------------------------------------------------------
def default_layer(model: nn.Module) -> str:
    """Name of the model's last ``nn.Linear`` (its input is the penultimate representation)."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    if name is None:
        raise ValueError("the model has no nn.Linear layer; name the feature layer explicitly (layer=...)")
    return name


@contextlib.contextmanager
def capture_features(model: nn.Module, layer: str, capture: str = "input") -> Iterator[dict[str, torch.Tensor]]:
    """While active, every forward of ``model`` puts the input (or output) of submodule ``layer``,
    flattened to (N, D), into the yielded dict under ``"features"`` (not detached: gradients flow)."""
    if capture not in CAPTURES:
        raise ValueError(f"capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"the model has no submodule {layer!r}") from None
    store: dict[str, torch.Tensor] = {}

    def put(t: Any) -> None:
        if isinstance(t, (tuple, list)):
            t = t[0]
        store["features"] = t.flatten(1)

    if capture == "input":
        handle = module.register_forward_pre_hook(lambda _m, args: put(args[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _args, out: put(out))
    try:
        yield store
    finally:
        handle.remove()


@torch.no_grad()
def extract_features(
    model: nn.Module, x: torch.Tensor, layer: str | None = None, capture: str = "input", batch_size: int = 500
) -> torch.Tensor:
    """Hidden features (N, D) of ``x`` in eval mode (the model's state is restored)."""
    layer = default_layer(model) if layer is None else layer
    out = []
    with model_guard(model), capture_features(model, layer, capture) as store:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
            out.append(store["features"].detach())
    return torch.cat(out) if out else torch.empty(0)


# --- the detector head ------------------------------------------------------------------------
class FeatureDetector(nn.Module):
    """Standardise features (statistics fitted on the training features), then an MLP to one
    logit; positive means "adversarial". ``hidden=()`` is logistic regression."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (64,), activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        if int(in_features) < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        self.in_features = int(in_features)
        self.hidden = [int(h) for h in hidden]
        self.activation = str(activation)
        self.dropout = float(dropout)
        self.register_buffer("feature_mean", torch.zeros(self.in_features))
        self.register_buffer("feature_std", torch.ones(self.in_features))
        layers: list[nn.Module] = []
        width = self.in_features
        for h in self.hidden:
            if h < 1:
                raise ValueError(f"hidden sizes must be >= 1, got {list(hidden)}")
            layers += [nn.Linear(width, h), make_activation(activation)]
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "hidden": list(self.hidden), "activation": self.activation,
                "dropout": self.dropout}

    @torch.no_grad()
    def fit_standardisation(self, features: torch.Tensor) -> None:
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp_min(1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features.flatten(1) - self.feature_mean) / self.feature_std).squeeze(1)


@dataclass
class Detector:
    """A trained detector: head, where its features come from, and its decision threshold
    (``logit > threshold`` flags an input as adversarial)."""

    head: FeatureDetector
    layer: str
    capture: str = "input"
    threshold: float = 0.0
    target_fpr: float = 0.05
    info: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Detector:
        self.head.to(device)
        return self

    def joint(self, classifier: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and detector logits from one forward pass (gradients flow; the caller
        decides about modes and no_grad)."""
        with capture_features(classifier, self.layer, self.capture) as store:
            logits = classifier(x)
        return logits, self.head(store["features"])

    @torch.no_grad()
    def scores(self, classifier: nn.Module, x: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits, detector logits) for ``x`` in eval mode, batched."""
        cls, det = [], []
        with model_guard(classifier), model_guard(self.head):
            for i in range(0, len(x), batch_size):
                c, d = self.joint(classifier, x[i : i + batch_size])
                cls.append(c)
                det.append(d)
        return torch.cat(cls), torch.cat(det)

    def flags(self, classifier: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Per sample: True where the detector rejects the input as adversarial."""
        return self.scores(classifier, x, batch_size)[1] > self.threshold

    # --- files ------------------------------------------------------------------------------
    def save(self, directory: str | Path, **metadata: Any) -> Path:
        """``detector.safetensors`` (weights) + ``detector.json`` (architecture, threshold,
        ``metadata``), both written atomically. Returns the weights path."""
        d = Path(directory)
        state = {k: v for k, v in self.head.state_dict().items()}
        meta = {
            "format": DETECTOR_FORMAT,
            "format_version": 1,
            "architecture": self.head.config(),
            "layer": self.layer,
            "capture": self.capture,
            "threshold": float(self.threshold),
            "target_fpr": float(self.target_fpr),
            "weights": DETECTOR_WEIGHTS,
            "tensors": {k: list(v.shape) for k, v in state.items()},
            "environment": environment_info(),
            **self.info,
            **metadata,
        }
        atomic_save_safetensors(state, d / DETECTOR_WEIGHTS, metadata={"format": DETECTOR_FORMAT})
        atomic_write_json(d / DETECTOR_META, meta)
        return d / DETECTOR_WEIGHTS

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Detector:
        """Rebuild the head from ``detector.json`` and load ``detector.safetensors`` (every tensor
        name and shape must match the architecture)."""
        d = Path(directory)
        meta_path = d / DETECTOR_META
        if not meta_path.is_file():
            raise CheckpointError(f"detector metadata not found: {meta_path}")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{meta_path} is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != DETECTOR_FORMAT:
            raise CheckpointError(f"{meta_path} is not a robustlab detector record (format != {DETECTOR_FORMAT!r})")
        arch = meta.get("architecture")
        if not isinstance(arch, dict):
            raise CheckpointError(f"{meta_path} has no architecture")
        unknown = set(arch) - {"in_features", "hidden", "activation", "dropout"}
        if unknown:
            raise CheckpointError(f"{meta_path}: unknown architecture keys {sorted(unknown)}")
        try:
            head = FeatureDetector(**arch)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"cannot rebuild the detector from {meta_path}: {e}") from None
        state = _read_safetensors(d / DETECTOR_WEIGHTS)
        expected = head.state_dict()
        if set(state) != set(expected):
            raise CheckpointError(f"{d}: detector tensors {sorted(state)} do not match the architecture {sorted(expected)}")
        for k, v in expected.items():
            if tuple(state[k].shape) != tuple(v.shape) or state[k].dtype != v.dtype:
                raise CheckpointError(f"{d}: tensor {k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
        head.load_state_dict(state, strict=True)
        head.eval()
        capture = meta.get("capture", "input")
        if capture not in CAPTURES or not isinstance(meta.get("layer"), str):
            raise CheckpointError(f"{meta_path}: bad layer/capture")
        return cls(head=head.to(map_location), layer=meta["layer"], capture=capture,
                   threshold=float(meta.get("threshold", 0.0)), target_fpr=float(meta.get("target_fpr", 0.05)))


# --- metrics ----------------------------------------------------------------------------------
def _as_1d(t: Any) -> torch.Tensor:
    return torch.as_tensor(t).detach().flatten().double().cpu()


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (positives = label 1 should score higher), via the Mann-Whitney
    statistic with average ranks for ties; NaN when one class is absent."""
    s, lab = _as_1d(scores), _as_1d(labels) > 0.5
    n_pos, n_neg = int(lab.sum()), int((~lab).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(s)
    s_sorted = s[order]
    ranks = torch.empty_like(s)
    # average rank (1-based) for each group of tied scores
    _, inverse, counts = torch.unique_consecutive(s_sorted, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    u = float(ranks[lab].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def roc_curve(scores: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fpr, tpr, thresholds) for the rule ``score >= threshold``, thresholds descending, starting
    at (0, 0) with threshold +inf; tied scores make one point."""
    s, lab = _as_1d(scores), _as_1d(labels) > 0.5
    order = torch.argsort(s, descending=True)
    s, lab = s[order], lab[order]
    tp = torch.cumsum(lab.double(), 0)
    fp = torch.cumsum((~lab).double(), 0)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # the last element of every group of ties
    n_pos, n_neg = max(int(lab.sum()), 1), max(int((~lab).sum()), 1)
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fp[last] / n_neg])
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), tp[last] / n_pos])
    thr = torch.cat([torch.full((1,), float("inf"), dtype=torch.float64), s[last]])
    return fpr, tpr, thr


def threshold_at_fpr(clean_scores: Any, fpr: float = 0.05) -> float:
    """The smallest threshold such that at most a fraction ``fpr`` of the clean scores are
    ``> threshold`` (the rule is ``score > threshold``)."""
    s = torch.sort(_as_1d(clean_scores), descending=True).values
    if len(s) == 0:
        raise ValueError("no clean scores to calibrate the threshold on")
    k = int(math.floor(fpr * len(s) + 1e-9))
    return float(s[min(k, len(s) - 1)])


def tpr_at_fpr(clean_scores: Any, adv_scores: Any, fpr: float = 0.05) -> tuple[float, float, float]:
    """(detection rate, actual false-positive rate, threshold) at the threshold that flags at
    most ``fpr`` of the clean scores."""
    thr = threshold_at_fpr(clean_scores, fpr)
    c, a = _as_1d(clean_scores), _as_1d(adv_scores)
    tpr = float((a > thr).double().mean()) if len(a) else float("nan")
    return tpr, float((c > thr).double().mean()), thr


# --- training ---------------------------------------------------------------------------------
def craft(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``attack``'s examples for ``x`` (batched)."""
    return torch.cat([attack(model, x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def fit_head(
    head: FeatureDetector,
    f_clean: torch.Tensor,
    f_adv: torch.Tensor,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> list[float]:
    """Binary cross-entropy training of ``head`` on clean (label 0) vs adversarial (label 1)
    features; returns the mean loss per epoch."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    feats = torch.cat([f_clean, f_adv]).detach()
    labels = torch.cat([torch.zeros(len(f_clean)), torch.ones(len(f_adv))]).to(feats)
    head.fit_standardisation(feats)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    losses = []
    head.train()
    for _ in range(int(epochs)):
        order = torch.randperm(len(feats), generator=gen).to(feats.device)
        total = 0.0
        for i in range(0, len(feats), batch_size):
            idx = order[i : i + batch_size]
            loss = F.binary_cross_entropy_with_logits(head(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(feats))
    head.zero_grad(set_to_none=True)
    head.eval()
    return losses


def train_detector(
    classifier: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack,
    *,
    layer: str | None = None,
    capture: str = "input",
    hidden: Sequence[int] = (64,),
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    target_fpr: float = 0.05,
    attack_batch_size: int = 500,
) -> Detector:
    """Craft ``attack``'s examples for the training images, take the classifier's features of the
    clean and the adversarial images, and fit a :class:`FeatureDetector` on them. The threshold
    is provisionally calibrated on the clean training scores (``detector_experiment``
    re-calibrates it on held-out clean images)."""
    layer = default_layer(classifier) if layer is None else layer
    x_adv = craft(attack, classifier, x, y, attack_batch_size)
    f_clean = extract_features(classifier, x, layer, capture, attack_batch_size)
    f_adv = extract_features(classifier, x_adv, layer, capture, attack_batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        head = FeatureDetector(f_clean.shape[1], hidden).to(f_clean.device)
    losses = fit_head(head, f_clean, f_adv, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    with torch.no_grad():
        thr = threshold_at_fpr(head(f_clean), target_fpr)
        train_acc = float(((head(torch.cat([f_clean, f_adv])) > 0).float()
                           == torch.cat([torch.zeros(len(f_clean)), torch.ones(len(f_adv))]).to(f_clean)).float().mean())
    info = {"training": {"n": int(len(x)), "attack": repr(attack), "epochs": int(epochs), "lr": lr,
                         "batch_size": batch_size, "seed": seed, "final_loss": losses[-1], "train_accuracy": train_acc}}
    return Detector(head=head, layer=layer, capture=capture, threshold=thr, target_fpr=target_fpr, info=info)


# --- the adaptive attack ----------------------------------------------------------------------
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
            raise ValueError(f"detector must be a robustlab.detector.Detector, got {type(detector).__name__}")
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
                f"lam={self.lam:g}, loss={self.loss_name}, kappa={self.kappa}, det_margin={self.det_margin}, require_evasion={self.require_evasion})")

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
            self._keep_best(best, idx, xa, loss, succ)
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
        self._keep_best(best, idx, xa, loss, succ)


# --- the whole experiment ---------------------------------------------------------------------
def _rate(mask: torch.Tensor, of: torch.Tensor | None = None) -> float:
    if of is None:
        return float(mask.double().mean()) if mask.numel() else float("nan")
    n = int(of.sum())
    return float((mask & of).double().sum() / n) if n else float("nan")


def evaluate_detector(
    classifier: nn.Module,
    detector: Detector,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: dict[str, Attack],
    batch_size: int = 500,
    calibrate: bool = True,
) -> dict[str, Any]:
    """Clean scores (and, with ``calibrate``, the threshold at ``detector.target_fpr`` on them),
    then per attack: success rate on the classifier, ROC AUC clean-vs-adversarial, detection
    rate at the threshold (all examples, and the ones that fool the classifier), and the fraction
    of samples that fool the classifier *and* evade the detector."""
    cls_clean, det_clean = detector.scores(classifier, x, batch_size)
    if calibrate:
        detector.threshold = threshold_at_fpr(det_clean, detector.target_fpr)
    correct = cls_clean.argmax(1) == y
    flagged_clean = det_clean > detector.threshold
    out: dict[str, Any] = {
        "n": int(len(y)),
        "clean_accuracy": _rate(correct),
        "threshold": float(detector.threshold),
        "target_fpr": detector.target_fpr,
        "false_positive_rate": _rate(flagged_clean),
    }
    for name, attack in attacks.items():
        t0 = time.perf_counter()
        x_adv = craft(attack, classifier, x, y, batch_size)
        seconds = time.perf_counter() - t0
        cls_adv, det_adv = detector.scores(classifier, x_adv, batch_size)
        fooled = cls_adv.argmax(1) != y
        flagged = det_adv > detector.threshold
        labels = torch.cat([torch.zeros(len(det_clean)), torch.ones(len(det_adv))])
        out[name] = {
            "attack": repr(attack),
            "adversarial_accuracy": _rate(~fooled),
            "success_rate": _rate(fooled),
            "success_rate_on_correct": _rate(fooled, correct),
            "roc_auc": roc_auc(torch.cat([det_clean, det_adv]).cpu(), labels),
            "detection_rate": _rate(flagged),
            "detection_rate_on_successful": _rate(flagged, fooled),
            "fool_and_evade": _rate(fooled & ~flagged),
            "fool_and_evade_on_correct": _rate(fooled & ~flagged, correct),
            "seconds": round(seconds, 2),
        }
        out[name]["tpr_at_fpr"] = tpr_at_fpr(det_clean, det_adv, detector.target_fpr)[0]
    return out


def detector_experiment(
    classifier: nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    attack: Attack,
    *,
    eval_attack: Attack | None = None,
    adaptive_steps: int | None = None,
    lam: float = 1.0,
    adaptive_loss: str = "margin",
    kappa: float | None = 1.0,
    det_margin: float | None = 1.0,
    layer: str | None = None,
    hidden: Sequence[int] = (64,),
    epochs: int = 30,
    lr: float = 1e-3,
    seed: int = 0,
    target_fpr: float = 0.05,
    batch_size: int = 500,
) -> tuple[Detector, dict[str, Any]]:
    """Train a detector on ``attack``'s examples of ``train_data``, then evaluate it on
    ``test_data`` under the plain attack (``eval_attack``, default ``attack``) and under
    :class:`AdaptiveDetectorAttack` with the same budget (``adaptive_steps`` default: the plain
    attack's steps, or 20). The adaptive attack's default is the hinge form (margin loss capped
    at ``kappa``, detector logit counted down to ``threshold - det_margin``): on digits it
    fools-and-evades more often than the plain attack, where the uncapped ``ce - lam * logit``
    spends its budget on the detector and fools the classifier less."""
    t0 = time.perf_counter()
    det = train_detector(classifier, *train_data, attack, layer=layer, hidden=hidden, epochs=epochs, lr=lr,
                         seed=seed, target_fpr=target_fpr, attack_batch_size=batch_size)
    train_seconds = time.perf_counter() - t0
    plain = eval_attack or attack
    steps = adaptive_steps or getattr(plain, "steps", None) or 20
    adaptive = AdaptiveDetectorAttack(plain.threat, classifier, det, steps=steps, lam=lam, loss=adaptive_loss,
                                      kappa=kappa, det_margin=det_margin, seed=seed)
    metrics = evaluate_detector(classifier, det, *test_data, {"plain": plain, "adaptive": adaptive}, batch_size)
    metrics.update({"train_seconds": round(train_seconds, 2), "layer": det.layer, "capture": det.capture,
                    "n_train": int(len(train_data[1])), "detector_train": det.info.get("training", {}),
                    "lam": lam, "adaptive_loss": adaptive_loss, "kappa": kappa, "det_margin": det_margin,
                    "adaptive_steps": steps})
    return det, metrics


__all__ = [
    "AdaptiveDetectorAttack",
    "Detector",
    "FeatureDetector",
    "capture_features",
    "craft",
    "default_layer",
    "detector_experiment",
    "evaluate_detector",
    "extract_features",
    "fit_head",
    "roc_auc",
    "roc_curve",
    "threshold_at_fpr",
    "tpr_at_fpr",
    "train_detector",
]
