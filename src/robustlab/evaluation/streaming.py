"""Evaluation of data that arrive in batches: a ``torch.utils.data.Dataset`` or ``DataLoader``.

:func:`robustlab.evaluate` on (x, y) tensors runs the suite stage by stage: clean predictions in
chunks of ``batch_size``, then each attack on the samples still alive, in increasing index order,
cut into batches of ``batch_size``. The pipeline here computes exactly the same batches while
holding at most about one batch per attack in memory: samples flow in index order into the clean
stage and, when a stage's buffer holds ``batch_size`` samples, that batch is attacked and its
survivors flow on into the next attack's buffer (cascade), or every attack is fed the clean-correct
samples (no cascade). As every attack sees the same batches with the same seed as in one call on
the whole tensor, the result is identical to that call for any loader batch size.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from .._torch import predict
from ..attacks.base import Attack
from ..progress import bar as progress_bar
from ..threat import ThreatModel
from ..validation import check_images, check_labels
from .model_copies import ModelCopies, model_copies, run_on_copy
from .outcomes import AttackOutcome, _norms, correct_fraction, keep_first_breaks


def is_stream(data: object) -> bool:
    """Whether ``data`` is a Dataset or DataLoader (rather than a tensor)."""
    return isinstance(data, (Dataset, DataLoader))


def _pair(item: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) from a loader batch: a tuple/list of two tensors or a dict with 'x'/'y' (or 'image'/'label')."""
    if isinstance(item, dict):
        x = item.get("x", item.get("image"))
        y = item.get("y", item.get("label"))
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        x, y = item
    else:
        raise ValueError(f"{where} must yield (x, y) pairs or dicts with 'x' and 'y', got {type(item).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"{where} must yield tensors, got {type(x).__name__} and {type(y).__name__}")
    return x, y.long()


def iter_chunks(data: Dataset | DataLoader, batch_size: int, device: torch.device | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The samples of ``data`` in order, re-cut into chunks of exactly ``batch_size`` (the last may
    be smaller) on ``device``, whatever the loader's own batch size. A shuffling loader is refused:
    sample positions must mean the same thing in every pass and every part."""
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, RandomSampler):
            raise ValueError("the DataLoader shuffles (shuffle=True): evaluation numbers samples by their position, "
                             "use shuffle=False")
        batches: Any = (_pair(b, "the DataLoader") for b in data)
    else:
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        batches = (_pair(b, "the Dataset") for b in loader)
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    held = 0
    for xb, yb in batches:
        if len(xb) != len(yb):
            raise ValueError(f"a batch holds {len(xb)} images but {len(yb)} labels")
        xs.append(xb)
        ys.append(yb)
        held += len(xb)
        while held >= batch_size:
            x, y = torch.cat(xs), torch.cat(ys)
            yield x[:batch_size].to(device), y[:batch_size].to(device)
            xs, ys, held = [x[batch_size:]], [y[batch_size:]], held - batch_size
    if held:
        yield torch.cat(xs).to(device), torch.cat(ys).to(device)


class _Stage:
    """One attack of the pipeline: a buffer of (index, x, y) and the per-sample results so far."""

    def __init__(self, attack: Attack, model: nn.Module, batch_size: int, keep: bool, first_index: int,
                 copies: bool = True) -> None:
        self.attack, self.model, self.batch_size, self.keep = attack, model, batch_size, keep
        self.first_index = first_index
        self.copies = copies
        self.fast: ModelCopies | None = None  # built from the first batch attacked
        self.idx: list[torch.Tensor] = []
        self.x: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.held = 0
        self.seconds = 0.0
        self.done: list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None,
                              torch.Tensor | None]] = []

    def feed(self, idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Add samples; attack every full batch. Returns the survivors (index, x, y) of those batches."""
        if len(idx):
            self.idx.append(idx)
            self.x.append(x)
            self.y.append(y)
            self.held += len(idx)
        out = []
        while self.held >= self.batch_size:
            out.append(self._run(self.batch_size))
        return out

    def flush(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Attack what is left in the buffer (a last, smaller batch)."""
        return [self._run(self.held)] if self.held else []

    def _run(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx, x, y = torch.cat(self.idx), torch.cat(self.x), torch.cat(self.y)
        self.idx, self.x, self.y, self.held = [idx[k:]], [x[k:]], [y[k:]], self.held - k
        idx, x, y = idx[:k], x[:k], y[:k]
        t0 = time.perf_counter()
        if self.fast is None:
            self.fast = model_copies(self.model, x, enabled=self.copies)
        res = run_on_copy(self.fast, self.attack, x, y, idx.to(x.device) + self.first_index)
        expected = (correct_fraction(self.model, res.x_adv, y, self.attack.eot, self.batch_size).cpu()
                    if self.attack.eot > 1 else None)
        self.seconds += time.perf_counter() - t0
        broken = res.success.bool()
        norms = {n: v.cpu() for n, v in _norms(res.x_adv - x).items()}
        self.done.append((idx.cpu(), broken.cpu(), norms, res.x_adv.cpu() if self.keep else None, expected))
        alive = ~broken
        return idx[alive.cpu()], x[alive], y[alive]

    def outcome(
        self, n: int, clean_correct: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype
    ) -> tuple[AttackOutcome, torch.Tensor | None]:
        """Per-sample tensors over all ``n`` samples (as :func:`run_attack` returns them) and the examples."""
        attacked = torch.zeros(n, dtype=torch.bool)
        broken = torch.zeros(n, dtype=torch.bool)
        norms = {k: torch.zeros(n) for k in ("l1", "l2", "linf")}
        examples = torch.zeros((n, *shape), dtype=dtype) if self.keep else None
        expected = torch.full((n,), float("nan")) if self.attack.eot > 1 else None
        for idx, b, nm, xa, ex in self.done:
            attacked[idx] = True
            if expected is not None and ex is not None:
                expected[idx] = ex.to(expected.dtype)
            broken[idx] = b
            for k, v in nm.items():
                norms[k][idx] = v.to(norms[k].dtype)
            if examples is not None and xa is not None:
                examples[idx] = xa.to(dtype)
        robust = clean_correct & ~broken
        copy_used = "" if self.fast is None else self.fast.describe(self.attack)
        return (AttackOutcome(self.attack.name, robust, attacked, norms, self.seconds, repr(self.attack), None, copy_used,
                              expected), examples)


def stream_outcomes(
    model: nn.Module, data: Dataset | DataLoader, threat: ThreatModel, attacks: Sequence[Attack], batch_size: int,
    cascade: bool, keep: bool, progress: bool, num_classes_of: Any, first_index: int = 0, copies: bool = True,
) -> tuple[torch.Tensor, list[AttackOutcome], torch.Tensor | None, int]:
    """Run ``attacks`` (already named and configured) over ``data`` as a pipeline (module docstring).

    Returns clean correctness per sample, the attacks' outcomes, the per-sample worst case (with
    ``keep``: the example of the first attack that broke the sample, else the sample) and ``n``."""
    device = next((p.device for p in model.parameters()), None)
    stages = [_Stage(a, model, batch_size, keep, first_index, copies) for a in attacks]
    clean: list[torch.Tensor] = []
    originals: list[torch.Tensor] = []
    n = 0
    shape: tuple[int, ...] = ()
    dtype = torch.float32
    try:
        total: int | None = len(data.dataset if isinstance(data, DataLoader) else data)  # type: ignore[arg-type]
    except TypeError:  # an IterableDataset without a length
        total = None
    bar = progress_bar(total=total, desc="evaluate", unit="images", enabled=progress)

    def push(k: int, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Survivors of stage k-1 into stage k (and on, as batches complete)."""
        if k >= len(stages):
            return
        for idx, x, y in batches:
            push(k + 1, stages[k].feed(idx, x, y))

    nc: int | None = None
    for x, y in iter_chunks(data, batch_size, device):
        check_images(x, threat)
        nc = num_classes_of(x) if nc is None else nc
        check_labels(y, len(x), nc, "y")
        shape, dtype = tuple(x.shape[1:]), x.dtype
        correct = predict(model, x, batch_size) == y
        idx = torch.arange(n, n + len(x))
        clean.append(correct.cpu())
        if keep:
            originals.append(x.cpu())
        n += len(x)
        sel = correct
        if cascade:
            push(0, [(idx[sel.cpu()], x[sel], y[sel])])
        else:
            for s in stages:
                s.feed(idx[sel.cpu()], x[sel], y[sel])
        bar.update(len(x))
    bar.close()
    for k, s in enumerate(stages):  # in order: a flushed stage's survivors complete the next stage's batches
        left = s.flush()
        if cascade:
            push(k + 1, left)
    if n == 0:
        raise ValueError("the data set is empty")
    clean_correct = torch.cat(clean)
    outcomes: list[AttackOutcome] = []
    worst = torch.cat(originals) if keep else None
    unbroken = clean_correct.clone()
    alive = clean_correct.clone()
    for s in stages:
        out, examples = s.outcome(n, clean_correct, shape, dtype)
        if cascade:
            out.robust &= alive
            alive &= out.robust
        unbroken = keep_first_breaks(worst, unbroken, out.robust, examples)
        outcomes.append(out)
    return clean_correct, outcomes, worst, n


def materialise(data: Dataset | DataLoader, batch_size: int, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``data`` as (x, y) tensors on ``device`` (for the checks and torch.distributed runs)."""
    xs, ys = zip(*iter_chunks(data, batch_size, device), strict=True)
    return torch.cat(xs), torch.cat(ys)
