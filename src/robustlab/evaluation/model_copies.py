"""A faster copy of a model for the attacks of an evaluation (CPU), with the model as the judge.

An evaluation spends nearly all its time in the model's forward and backward passes. For a model
with BatchNorm after its convolutions (or linear layers), the copy with every eval-mode BatchNorm
folded into the layer before it (traced with :mod:`torch.fx`, folded with
:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`) computes the same logits, up to float rounding,
without the normalisation's forward and backward passes: on the zoo's Fashion-MNIST CNN about
1.3x faster per gradient step with the attacks' channels-last layout.

The copy is used only if it traces and folds without error (no data-dependent control flow) and
gives the model's logits and input gradients on a probe batch within float tolerance. A model
whose repeated forward passes differ (randomised), one off the CPU or not in float32, or one with
nothing to fold gets no copy. Copies are cached per model and rebuilt when any of its parameters
or buffers changes (their version counters move), so a model trained between evaluations is
never attacked through stale weights.

The copy only changes how fast the attacks find their points (and, within float rounding, which
points): :func:`run_on_copy` re-judges every adversarial example with the original model, so the
accuracies reported are the model's own. ``evaluate(..., copies=False)`` (``robustlab evaluate
--exact-model``) attacks the model itself.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .._torch import model_guard
from ..attacks.base import Attack, AttackResult

#: Largest difference the copy may show on the probe batch, relative to the logits' (or gradients') scale.
RTOL = 1e-3
PROBE = 64


@dataclass(frozen=True)
class ModelCopies:
    """The models an evaluation's attacks run on: ``folded`` is the original model where no
    valid copy could be built."""

    original: nn.Module
    folded: nn.Module

    def for_attack(self, attack: Attack) -> nn.Module:
        """The model ``attack`` runs on (the original for attacks that keep train mode)."""
        return self.folded if attack.eval_mode else self.original

    def describe(self, attack: Attack) -> str:
        """What ``attack`` runs on, for the results: "" (the model itself), or the copy."""
        if self.for_attack(attack) is self.original:
            return ""
        return "copy with BatchNorm folded into the layer before it; verdicts by the model"


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], ModelCopies]] = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple[Any, ...]:
    """Changes whenever a parameter or buffer of ``model`` is replaced or modified in place."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or not bool(torch.isfinite(a).all()):
        return False
    return float((a - b).abs().max()) <= RTOL * max(float(b.abs().max()), 1e-6)


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(z), y), z)
    return g


def fold_batchnorms(model: nn.Module) -> tuple[fx.GraphModule, int]:
    """An fx-traced copy of ``model`` (put in eval mode, parameters not requiring grad) with each
    BatchNorm that directly follows a convolution or linear layer (used nowhere else) folded into
    it, and the number folded. fx's TraceError (data-dependent control flow) passes through."""
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    gm = fx.symbolic_trace(m)
    modules = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not bn.track_running_stats:
            continue
        prev = node.args[0] if node.args else None
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue
        layer = modules[prev.target]
        if isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed:
            new: nn.Module = fuse_conv_bn_eval(layer, bn)
        elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            new = fuse_linear_bn_eval(layer, bn)
        else:
            continue
        parent, _, name = str(prev.target).rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, new)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()  # the folded BatchNorms
    gm.recompile()
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm, folded


def _folded_copy(model: nn.Module, probe: torch.Tensor, logits: torch.Tensor) -> nn.Module | None:
    """The validated BatchNorm-folded copy (None: not traceable, nothing folded, or no match)."""
    try:
        folded, count = fold_batchnorms(model)
        if count == 0:
            return None
        y = logits.argmax(1)
        with model_guard(model):
            g_ref = _input_grad(model, probe, y)
        with torch.no_grad():
            same_logits = _close(folded(probe), logits)
        return folded if same_logits and _close(_input_grad(folded, probe, y), g_ref) else None
    except Exception:  # any model fx cannot trace or fold keeps the original
        return None


def model_copies(model: nn.Module, x: torch.Tensor, enabled: bool = True) -> ModelCopies:
    """The (cached) :class:`ModelCopies` of ``model``, validated on the first images of ``x``."""
    plain = ModelCopies(model, model)
    if not enabled or x.device.type != "cpu" or x.dtype != torch.float32 or len(x) == 0:
        return plain
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32) for t in tensors):
        return plain
    key = _fingerprint(model)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    probe = x[:PROBE].detach()
    with torch.no_grad(), model_guard(model):
        logits = model(probe)
        deterministic = torch.equal(logits, model(probe))
    copies = ModelCopies(model, (_folded_copy(model, probe, logits) if deterministic else None) or model)
    if _fingerprint(model) == key:  # building read the model; it must not have changed it
        _CACHE[model] = (key, copies)
    return copies


def run_on_copy(copies: ModelCopies, attack: Attack, x: torch.Tensor, y: torch.Tensor,
                sample_ids: torch.Tensor) -> AttackResult:
    """``attack.run`` on the model the attack should use; a copy's verdicts are re-judged with
    the original model (untargeted: misclassified by the model means broken)."""
    target = copies.for_attack(attack)
    res = attack.run(target, x, y, sample_ids=sample_ids)
    if target is not copies.original:
        with torch.no_grad(), model_guard(copies.original):
            res.success = copies.original(res.x_adv).argmax(1) != y
    return res
