"""A faster copy of a model for the attacks of an evaluation (CPU), with the model as the judge.

An evaluation spends nearly all its time in the model's forward and backward passes. On CPU two
things make those passes faster without changing the function they compute:

* **Cache-sized chunks.** An attack batch of hundreds of images makes every activation tens of
  megabytes, far beyond the CPU caches; the same images in chunks whose largest activation fits in
  about :data:`CHUNK_BYTES` run about 2x faster per image (measured: APGD-CE and Square on the
  Fashion-MNIST small CNN at a batch of 500, one thread: 16.4 s -> 8.8 s and 30.3 s -> 15.7 s).
  The attacks keep their whole batch (their bookkeeping stays vectorised); only the model calls
  are cut, and the chunk size follows the model's largest per-image activation, measured once.
* **Folded BatchNorm.** For a model with BatchNorm after its convolutions (or linear layers),
  every eval-mode BatchNorm folded into the layer before it (traced with :mod:`torch.fx`, folded
  with :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`) saves the normalisation's forward and
  backward passes: about 1.3x per gradient step on the zoo's Fashion-MNIST CNN.

Each is used only if it gives the model's logits (and the folded copy its input gradients) on a
probe batch within float tolerance; folding also needs a model fx can trace (no data-dependent
control flow). A model whose repeated forward passes differ (randomised), one off the CPU or not
in float32 gets neither. The result is cached per model and rebuilt when any of its parameters or
buffers changes (their version counters move), so a model trained between evaluations is never
attacked through stale weights.

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
#: Largest relative L2 difference of the folded copy's input gradients on the probe batch.
GRAD_RTOL = 1e-2
#: Images of the batch the copy is validated on (also the largest chunk it can validate).
PROBE = 256
#: Target size of the largest activation of one chunk of images (a share of a CPU's cache).
CHUNK_BYTES = 4 * 2**20


class Chunked(nn.Module):
    """``inner`` applied to chunks of at most ``chunk`` images, outputs concatenated (autograd
    flows through each chunk's graph); the same function as ``inner`` for models that treat the
    images of a batch independently, as eval-mode models do."""

    def __init__(self, inner: nn.Module, chunk: int) -> None:
        super().__init__()
        self.inner, self.chunk = inner, int(chunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) <= self.chunk:
            return self.inner(x)
        return torch.cat([self.inner(c) for c in x.split(self.chunk)])


@dataclass(frozen=True)
class ModelCopies:
    """The model an evaluation's attacks run on: ``attacked`` (the original where nothing
    faster was valid), with ``folded`` BatchNorms and model calls in chunks of ``chunk`` images
    (None: whole batches)."""

    original: nn.Module
    attacked: nn.Module
    folded: bool = False
    chunk: int | None = None

    def for_attack(self, attack: Attack) -> nn.Module:
        """The model ``attack`` runs on (the original for attacks that keep train mode)."""
        return self.attacked if attack.eval_mode else self.original

    def describe(self, attack: Attack) -> str:
        """What ``attack`` runs on, for the results: "" (the model itself), or the copy."""
        if self.for_attack(attack) is self.original:
            return ""
        parts = ["BatchNorm folded into the layer before it"] if self.folded else []
        if self.chunk is not None:
            parts.append(f"model calls in chunks of {self.chunk} images")
        return "copy: " + ", ".join(parts) + "; verdicts by the model"


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], ModelCopies]] = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple[Any, ...]:
    """Changes whenever a parameter or buffer of ``model`` is replaced or modified in place."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


def _close(a: torch.Tensor, b: torch.Tensor, in_norm: bool = False) -> bool:
    """``a`` finite and within :data:`RTOL` of ``b``'s scale per entry, or with ``in_norm`` (input
    gradients) within :data:`GRAD_RTOL` in L2 norm: a max-pool or ReLU tie that rounding breaks
    the other way sends a few gradient entries elsewhere, so a per-entry bound would refuse the
    same function."""
    if a.shape != b.shape or not bool(torch.isfinite(a).all()):
        return False
    if in_norm:
        return float((a - b).norm()) <= GRAD_RTOL * max(float(b.norm()), 1e-12)
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
        return folded if same_logits and _close(_input_grad(folded, probe, y), g_ref, in_norm=True) else None
    except Exception:  # any model fx cannot trace or fold keeps the original
        return None


def peak_activation_bytes(model: nn.Module, probe: torch.Tensor) -> int:
    """The largest output of any leaf module of ``model`` (or the input), in bytes per image, on
    a few images of ``probe`` (the model is in eval mode, under no_grad)."""
    x = probe[:4]
    peak = [x[0].numel() * x.element_size()]

    def hook(_module: nn.Module, _inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() > 0 and len(out) == len(x):
            peak.append(out[0].numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return max(peak)


def _chunk_size(model: nn.Module, probe: torch.Tensor, logits: torch.Tensor) -> tuple[int | None, bool]:
    """The chunk (images) whose largest activation fits :data:`CHUNK_BYTES`, if chunking the
    probe gives the same logits, else None; and whether that is final (False: the probe was too
    small to try a chunk that a full :data:`PROBE` could try)."""
    try:
        chunk = max(8, CHUNK_BYTES // max(peak_activation_bytes(model, probe), 1))
        if chunk >= len(probe):
            return None, chunk >= PROBE or len(probe) >= PROBE
        with torch.no_grad():
            return (chunk if _close(Chunked(model, chunk)(probe), logits) else None), True
    except Exception:  # a model hooks or chunks cannot handle runs on whole batches
        return None, True


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
    copies, final = plain, True
    if deterministic:
        folded = _folded_copy(model, probe, logits)
        base = folded if folded is not None else model
        with model_guard(base):
            chunk, final = _chunk_size(base, probe, logits)
        attacked = base if chunk is None else Chunked(base, chunk)
        copies = ModelCopies(model, attacked, folded is not None, chunk)
    # Building read the model; it must not have changed it. An answer from a probe too small to
    # try the chunk size is not kept for larger data.
    if _fingerprint(model) == key and final:
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
