"""``evaluate``: clean and per-sample worst-case robust accuracy of a model under an attack suite.

A sample counts as robust only if it survives every attack (never an average of attacks).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .._torch import check_int, model_guard, predict
from ..attacks.base import Attack, require_eps_ball
from ..threat import ThreatModel
from ..validation import check_images, check_labels, check_logits, check_same_device
from .checks import format_checks, require_gradient_norm, run_checks
from .outcomes import EvaluationResult, keep_first_breaks, run_attack
from .streaming import is_stream, materialise, stream_outcomes
from .suites import build_suite


def unique_names(attacks: Sequence[Attack]) -> list[str]:
    """The attacks' names, made unique with ``-2``, ``-3``, ... suffixes (two PGDs in one suite)."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for a in attacks:
        base = getattr(a, "name", type(a).__name__.lower())
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def evaluate(
    model: nn.Module,
    x: torch.Tensor | Dataset | DataLoader,
    y: torch.Tensor | None = None,
    threat: ThreatModel | None = None,
    attacks: str | Sequence[Attack] = "standard",
    batch_size: int = 500,
    cascade: bool = True,
    early_stop: bool = True,
    progress: bool = False,
    checks: bool = False,
    checks_scale: float = 1.0,
    keep_adversarial: bool = False,
    first_index: int = 0,
    copies: bool = True,
) -> EvaluationResult:
    """Clean accuracy and per-sample worst-case robust accuracy of ``model`` under ``attacks``.

    The data: ``x`` and ``y`` tensors on the model's device, or ``x`` a ``torch.utils.data``
    Dataset or (unshuffled) DataLoader of (image, label) pairs and ``y=None``; a stream is
    evaluated batch by batch (memory bounded by about one batch per attack, plus the per-sample
    outcomes) with exactly the batches, and so exactly the result, of one call on the whole tensor,
    for any loader batch size (see :mod:`robustlab.evaluation.streaming`). Only ``batch_size``
    (the attack batch) and the attacks' seeds decide the random starts. With ``checks`` or under
    torch.distributed a stream is first read into memory.

    ``attacks`` is a list of Attack objects or a suite name (see :mod:`robustlab.suites`).
    With ``early_stop`` each attack stops working on a sample once it is misclassified (the
    accuracy is the same; only the cost drops). The attack objects passed in are not modified.
    With ``checks=True`` the gradient-masking checks of :func:`robustlab.checks.run_checks` run
    afterwards (against this result) and fill ``result.checks``; any WARN is also issued as a
    ``RuntimeWarning`` with the lines of :func:`robustlab.checks.format_checks`;
    ``checks_scale`` multiplies their step, query and draw counts. With ``keep_adversarial``
    ``result.adversarial`` holds the per-sample worst case: the example of the first attack that
    broke the sample, else the sample itself (so the model on it gives ``robust_accuracy``).

    Random starts and other random draws of the (seeded) attacks are keyed by each sample's index
    in the data set, ``first_index + i``: a sample's outcome does not depend on the batch size or on
    which samples share its batch. Evaluating disjoint parts with their ``first_index`` and joining
    them with :meth:`EvaluationResult.merge` therefore gives the result of one call on the whole
    data set (as does ``robustlab evaluate --nproc N``).

    ``copies``: on CPU the attacks run on faster copies of the model (BatchNorm folded for gradient
    attacks, an inference-optimised TorchScript trace for query-only ones), each validated against
    the model; every verdict is re-judged with the model itself, so the accuracies are the model's
    (:mod:`robustlab.evaluation.model_copies`). False attacks the model itself.
    """
    from ..distributed import dist_info

    if threat is None:
        raise ValueError("evaluate needs threat=ThreatModel(...)")
    if not isinstance(threat, ThreatModel):
        raise ValueError(f"threat must be a robustlab.ThreatModel, got {type(threat).__name__}")
    check_int("batch_size", batch_size, 1)
    first_index = check_int("first_index", first_index, 0)
    if checks:
        require_gradient_norm(threat)  # refused before any attack runs
    if not isinstance(x, torch.Tensor) and is_stream(x):
        if y is not None:
            raise ValueError("y goes with x as a tensor; a Dataset or DataLoader yields its own labels (pass y=None)")
        if checks or dist_info()[1] > 1:
            x, y = materialise(x, batch_size, next((p.device for p in model.parameters()), None))
    elif y is None:
        raise ValueError("y is missing: give labels with the x tensor, or a Dataset/DataLoader of (x, y) pairs")
    if not is_stream(x):
        x = check_images(x, threat)  # a tensor; anything else is refused with a clear message
        check_same_device(model, x=x, y=y)
        with torch.no_grad(), model_guard(model):
            nc = check_logits(model(x[:1]), 1).shape[1]
        check_labels(y, len(x), nc)
    if isinstance(attacks, str):
        attacks = build_suite(attacks, threat)
    attack_list = list(attacks)
    if not attack_list:
        raise ValueError("attacks is empty: give at least one attack or a suite name")
    for a in attack_list:
        if not isinstance(a, Attack):
            raise ValueError(f"attacks must be robustlab Attack objects, got {type(a).__name__}")
        require_eps_ball(a)
        if a.threat != threat:
            raise ValueError(f"{a!r} uses threat {a.threat}, but the evaluation's threat is {threat}")
    configured = []
    for name, attack in zip(unique_names(attack_list), attack_list):
        a = copy.copy(attack)
        a.early_stop = early_stop or a.early_stop
        a.name = name
        configured.append(a)
    if not isinstance(x, torch.Tensor):
        clean_correct, outcomes, x_adv, n = stream_outcomes(
            model, x, threat, configured, batch_size, cascade, keep_adversarial, progress,
            num_classes_of=lambda xb: _num_classes(model, xb), first_index=first_index, copies=copies)
        return EvaluationResult(threat, n, clean_correct, outcomes, cascade, adversarial=x_adv)
    assert isinstance(y, torch.Tensor)
    clean_correct = (predict(model, x, batch_size) == y).cpu()
    outcomes = []
    alive = clean_correct.clone().to(x.device)
    unbroken = clean_correct.clone()  # not yet broken by any attack (cascade or not)
    x_adv = x.detach().clone() if keep_adversarial else None
    for a in configured:
        out = run_attack(model, x, y, a, batch_size, only=alive if cascade else None, progress=progress,
                         clean_correct=clean_correct, keep_examples=keep_adversarial, first_index=first_index,
                         copies=copies)
        if cascade:
            # Samples not attacked because an earlier attack broke them stay broken.
            out.robust &= alive.cpu()
            alive = alive & out.robust.to(x.device)
        unbroken = keep_first_breaks(x_adv, unbroken, out.robust, out.examples)
        out.examples = None
        outcomes.append(out)
    result = EvaluationResult(threat, len(x), clean_correct, outcomes, cascade, adversarial=x_adv)
    if checks:
        names = unique_names(attack_list)
        gradient_names = [n for n, a in zip(names, attack_list) if getattr(a, "uses_gradients", True)]
        result.checks = run_checks(
            model, x, y, threat, result=result, scale=checks_scale, whitebox_names=gradient_names, batch_size=batch_size,
            whitebox_eot=min((a.eot for a in attack_list if a.uses_gradients), default=None),
        )
        if any(c["status"] != "PASS" for c in result.checks):
            warnings.warn("\n" + format_checks(result.checks), RuntimeWarning, stacklevel=2)
    return result


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """The model's class count, from one image (eval mode, state restored); its logits checked."""
    check_same_device(model, x=x)
    with torch.no_grad(), model_guard(model):
        return int(check_logits(model(x[:1]), 1).shape[1])
