"""A SafetyNet-style detector experiment on a run directory (``robustlab train-detector``), built
on :func:`robustlab.detection.detector_experiment`.

Which attacks get ``--steps``/``--eval-steps``: the registry decides. An attack in
:data:`robustlab.attacks.ATTACKS` that follows the classifier's gradients (``uses_gradients``)
and has a ``steps`` option is an iterative white-box attack (pgd, mim, cw, apgd): its training
examples use ``steps`` iterations, the plain and the adaptive attack on the test images
``eval_steps``. Any other attack (fgsm, noise, the query and transfer attacks) is used as built;
the adaptive attack then runs 20 steps. Every attack that takes a ``seed`` gets ``seed`` for the
training examples and ``seed + 1`` for the test images (other random starts).

Beside the detector and ``metrics.json`` the directory holds ``roc.json``: the ROC curve of the
detector logit (clean test images negative, attacked ones positive) for the plain and the adaptive
attack, the points a report draws (:func:`roc_record`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..attacks import ATTACKS, Attack, attack_options, build_attack
from ..storage import atomic_write_json
from ..storage.layout import METRICS_FILE, ROC_FILE
from ..threat import ThreatModel, canonical_norm
from .train import resolve_device

ADAPTIVE_STEPS = 20  # the adaptive attack's steps when the training attack is not iterative


def iterative_whitebox(name: str) -> bool:
    """True for a registered attack that follows the model's gradients and has a ``steps`` option
    (see the module docstring); False for any other name, unknown ones included."""
    cls = ATTACKS.get(str(name).strip().lower())
    return (cls is not None and bool(getattr(cls, "uses_gradients", True)) and bool(getattr(cls, "eps_ball", True))
            and "steps" in (attack_options(cls) or []))


def detector_attacks(name: str, threat: ThreatModel, steps: int = 10, eval_steps: int = 20,
                     options: dict[str, Any] | None = None, seed: int = 0) -> tuple[Attack, Attack]:
    """The attack that makes the detector's training examples and the plain attack on its test
    images (the rule in the module docstring); ``options`` go to both."""
    opts = dict(options or {})
    iterative = iterative_whitebox(name)
    cls = ATTACKS.get(str(name).strip().lower())
    seeded = cls is not None and "seed" in (attack_options(cls) or [])
    if iterative:
        opts.setdefault("steps", steps)
    if seeded:
        opts.setdefault("seed", seed)
    eval_opts = {**opts, "steps": eval_steps} if iterative else dict(opts)
    if seeded:
        eval_opts["seed"] = seed + 1  # other random starts than the training examples had
    return build_attack(name, threat, **opts), build_attack(name, threat, **eval_opts)


def detector_data(src: Any, data: Any, dev: Any, n_train: int, n_test: int) -> tuple[Any, tuple, tuple]:
    """The model and (train, test) data of a detector experiment: the run's splits, a named data
    set's train split and ``--split`` (default test), or a ``--data`` file cut in two (the first
    ``n_train`` images train, the next ``n_test`` test; 80/20 when the file holds fewer)."""
    from .sources import model_and_data

    if data.path is not None:
        model, x, y, _, _ = model_and_data(src, data, dev)
        k = n_train if len(y) >= n_train + n_test else int(0.8 * len(y))
        if k < 2 or len(y) - k < 2:
            raise ValueError(f"--data {data.path} holds {len(y)} images: too few to train and test a detector")
        return model, (x[:k], y[:k]), (x[k : k + n_test], y[k : k + n_test])
    model, x_te, y_te, _, _ = model_and_data(src, data, dev, limit=n_test, split="test")
    x_tr, y_tr, _, _ = data.load(src.run, dev, n_train, split="train") if data.dataset is None else \
        type(data)(dataset=data.dataset, split="train", root=data.root).load(None, dev, n_train)
    return model, (x_tr, y_tr), (x_te, y_te)


class _Recorder:
    """An attack that keeps what it returns: the plain attack's test examples, for the ROC curve
    (everything else, its repr included, is the wrapped attack's)."""

    def __init__(self, attack: Attack) -> None:
        self.attack = attack
        self.outputs: list[torch.Tensor] = []

    def __call__(self, model: Any, x: Any, y: Any) -> Any:
        out = self.attack(model, x, y)
        self.outputs.append(out.detach())
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["attack"], name)

    def __repr__(self) -> str:
        return repr(self.attack)


def roc_record(classifier: Any, detector: Any, x: Any, examples: dict[str, Any], batch_size: int = 500) -> dict[str, Any]:
    """``roc.json``'s content: per attack the ROC curve of the detector logit, clean ``x`` negative
    and ``examples[name]`` positive (``fpr``/``tpr`` from (0, 0) to (1, 1), rule ``logit >= t``,
    ties one point), its ``roc_auc`` and the sample counts."""
    from ..detection import roc_auc, roc_curve

    _, clean = detector.scores(classifier, x, batch_size)
    out: dict[str, Any] = {"rule": "detector logit >= t, for every t", "negatives": "clean test images"}
    for name, x_adv in examples.items():
        _, adv = detector.scores(classifier, x_adv, batch_size)
        scores = torch.cat([clean, adv]).cpu()
        labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(adv))])
        fpr, tpr, _ = roc_curve(scores, labels)
        out[name] = {"fpr": [round(float(v), 6) for v in fpr], "tpr": [round(float(v), 6) for v in tpr],
                     "roc_auc": roc_auc(scores, labels), "n_clean": int(len(clean)), "n_adversarial": int(len(adv))}
    return out


def _adaptive_examples(model: Any, det: Any, threat: ThreatModel, x: Any, y: Any, metrics: dict[str, Any],
                       batch_size: int, **options: Any) -> Any:
    """The adaptive attack's test examples again (the experiment does not hand them out): the same
    attack, seeded, so the same examples; None when its repr differs from the one in ``metrics``."""
    from ..detection import AdaptiveDetectorAttack, craft

    attack = AdaptiveDetectorAttack(threat, model, det, steps=metrics["adaptive_steps"], **options)
    if repr(attack) != metrics["adaptive"]["attack"]:
        return None
    return craft(attack, model, x, y, batch_size)


def detector_run(
    run: str | Path | None,
    out: str | Path,
    *,
    attack: str = "pgd",
    eps: float = 0.1,
    norm: str = "linf",
    steps: int = 10,
    eval_steps: int = 20,
    options: dict[str, Any] | None = None,
    n_train: int = 5000,
    n_test: int = 1000,
    epochs: int = 30,
    hidden: Sequence[int] = (64,),
    layer: str | None = None,
    lam: float = 1.0,
    adaptive_loss: str = "margin",
    kappa: float | None = 1.0,
    det_margin: float | None = 1.0,
    fpr: float = 0.05,
    seed: int = 0,
    batch_size: int = 500,
    device: str = "auto",
    model_source: Any | None = None,
    data: Any | None = None,
) -> dict[str, Any]:
    """Train a detector on ``run``'s features (``n_train`` training images, clean and attacked),
    evaluate it on ``n_test`` test images under the plain and an adaptive attack, and write
    ``OUT/detector.safetensors``, ``OUT/detector.json``, ``OUT/metrics.json`` and ``OUT/roc.json``
    (:func:`roc_record`). Returns the metrics (``plain``/``adaptive`` rows, threshold at ``fpr`` false
    positives, ``seconds``, ...)."""
    from ..detection import detector_experiment

    if n_train < 2 or n_test < 2:
        raise ValueError("--n-train and --n-test must be >= 2")
    if not 0 < fpr < 1:
        raise ValueError(f"--fpr must be in (0, 1), got {fpr}")
    from .sources import DataSource, ModelSource

    dev = resolve_device(device)
    src = model_source or ModelSource(run=None if run is None else str(run))
    model, (x_tr, y_tr), (x_te, y_te) = detector_data(src, data or DataSource(), dev, n_train, n_test)
    threat = ThreatModel(canonical_norm(norm), eps)
    atk, eval_atk = detector_attacks(attack, threat, steps, eval_steps, options, seed)
    plain = _Recorder(eval_atk)
    t0 = time.perf_counter()
    det, metrics = detector_experiment(
        model, (x_tr, y_tr), (x_te, y_te), atk, eval_attack=plain,  # type: ignore[arg-type]
        adaptive_steps=eval_steps if iterative_whitebox(attack) else ADAPTIVE_STEPS, lam=lam,
        adaptive_loss=adaptive_loss, kappa=kappa, det_margin=det_margin, layer=layer, hidden=tuple(hidden),
        epochs=epochs, seed=seed, target_fpr=fpr, batch_size=batch_size,
    )
    metrics.update({"run": src.describe(), "threat": threat.to_dict(), "seconds": round(time.perf_counter() - t0, 2)})
    outp = Path(out)
    det.save(outp, classifier_run=str(Path(run).resolve()) if run is not None else src.describe(), threat=threat.to_dict(), metrics=metrics)
    atomic_write_json(outp / METRICS_FILE, metrics)
    t1 = time.perf_counter()
    examples = {"plain": torch.cat(plain.outputs)}
    adaptive = _adaptive_examples(model, det, threat, x_te, y_te, metrics, batch_size, lam=lam, loss=adaptive_loss,
                                  kappa=kappa, det_margin=det_margin, seed=seed)
    if adaptive is not None:
        examples["adaptive"] = adaptive
    roc = roc_record(model, det, x_te, examples, batch_size)
    atomic_write_json(outp / ROC_FILE, {**roc, "seconds": round(time.perf_counter() - t1, 2)})
    return metrics


__all__ = ["ADAPTIVE_STEPS", "ROC_FILE", "detector_attacks", "detector_run", "iterative_whitebox", "roc_record"]
