"""Attack outcomes: one attack run over a data set, and the evaluation result over several.

Results are plain data (per-sample outcomes included) that serialise to JSON, so reports and
comparisons read files, never models. The worst case over several attacks is taken per sample:
a sample counts as robust only if it survives every attack (never an average of attacks).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._torch import clean_accuracy, predict
from ..attacks.base import Attack
from ..progress import bar
from ..threat import ThreatModel
from .model_copies import PROBE, model_copies, run_on_copy

SCHEMA_VERSION = 1


@dataclass
class AttackOutcome:
    """One attack's per-sample outcome on a data set.

    ``robust[i]``: sample i is classified correctly after the attack (False where the clean
    prediction was already wrong). ``attacked[i]``: the attack was actually run on sample i.
    ``settings``: the attack with its budget (its ``repr``: steps, restarts, queries, targets).
    ``examples``: only with ``run_attack(..., keep_examples=True)``: the attack's output for every
    attacked sample (zeros elsewhere), on the CPU; None otherwise. ``model_copy``: "" when the
    attack ran on the model itself, else which faster copy it ran on
    (:mod:`~robustlab.evaluation.model_copies`; the verdicts are the model's own either way).
    ``expected``: only for an attack that averages over draws of a randomised model (``eot > 1``):
    per attacked sample the fraction of ``eot`` fresh forward passes that classify the attack's
    example correctly (NaN where not attacked) -- the model as deployed, one draw per query.
    """

    name: str
    robust: torch.Tensor
    attacked: torch.Tensor
    norms: dict[str, torch.Tensor]
    seconds: float
    settings: str = ""
    examples: torch.Tensor | None = None
    model_copy: str = ""
    expected: torch.Tensor | None = None

    def summary(self, clean_correct: torch.Tensor) -> dict[str, Any]:
        """The attack's JSON summary: robust accuracy, success rate on the clean-correct attacked samples,
        samples attacked, seconds, settings, and mean/max L1, L2 and Linf perturbation of the successful ones."""
        n = len(self.robust)
        correct = clean_correct & self.attacked
        fooled = correct & ~self.robust
        out: dict[str, Any] = {
            "robust_accuracy": int(self.robust.sum()) / max(n, 1),
            "success_rate": int(fooled.sum()) / max(int(correct.sum()), 1),
            "attacked": int(self.attacked.sum()),
            "seconds": round(self.seconds, 3),
        }
        if self.settings:
            out["settings"] = self.settings
        if self.model_copy:
            out["model_copy"] = self.model_copy
        for k, v in self.norms.items():
            sel = v[fooled] if fooled.any() else v[:0]
            out[f"mean_{k}"] = float(sel.mean()) if len(sel) else 0.0
            out[f"max_{k}"] = float(sel.max()) if len(sel) else 0.0
        return out


def _norms(delta: torch.Tensor) -> dict[str, torch.Tensor]:
    flat = delta.flatten(1)
    return {"l1": flat.abs().sum(1), "l2": flat.norm(dim=1), "linf": flat.abs().amax(1)}


def run_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack,
    batch_size: int = 500,
    only: torch.Tensor | None = None,
    progress: bool = False,
    clean_correct: torch.Tensor | None = None,
    keep_examples: bool = False,
    first_index: int = 0,
    copies: bool = True,
) -> AttackOutcome:
    """Run ``attack`` on the samples selected by ``only`` (default: all correctly classified),
    in batches, and record per-sample robustness and perturbation sizes. ``clean_correct``
    (per-sample clean correctness) saves the clean forward pass when the caller already has it.
    ``keep_examples``: also return the adversarial examples (``outcome.examples``). Each sample's
    random draws are keyed by its index ``first_index + i`` (``sample_ids`` of the attack), so its
    outcome does not depend on the batches. ``copies``: on CPU, attack faster copies of the model
    (:mod:`~robustlab.evaluation.model_copies`), every verdict still the model's own; False attacks
    the model itself.

    Under torch.distributed (``robustlab evaluate --nproc N``) the shards are defined by sample
    index: the indices (into ``x``) of the selected samples, in increasing order, are cut into
    batches of ``batch_size``; batch j goes to rank j % world; each rank writes its outcomes at those
    indices of zero-filled per-sample tensors, which are then summed over the ranks. Every batch
    thus holds the same samples, with the same seed, as in one process: the per-sample results are
    identical to a single-process run, for any number of processes. A streamed Dataset/DataLoader
    must shard the same way: number the samples by their position in the dataset (not in a rank's
    loader), batch the selected indices in that order, and let rank r read only batches r, r +
    world, ... (e.g. through a Subset), so that the batches and the attack's per-batch seed match."""
    from ..distributed import dist_info

    rank, world = dist_info()
    n = len(x)
    robust = (predict(model, x, batch_size) == y) if clean_correct is None else clean_correct.to(x.device).clone()
    sel = robust.clone() if only is None else (only & robust)
    idx = sel.nonzero().flatten()
    broken = torch.zeros(n, device=x.device)
    norms = {k: torch.zeros(n, device=x.device) for k in ("l1", "l2", "linf")}
    examples = torch.zeros_like(x) if keep_examples else None
    expected = torch.zeros(n, device=x.device) if attack.eot > 1 else None
    t0 = time.perf_counter()
    starts = list(range(0, len(idx), batch_size))[rank::world]
    fast = model_copies(model, x[idx[:PROBE]], enabled=copies)  # a probe, not a copy of the data
    for i in bar(starts, desc=attack.name, unit="batch", enabled=progress and rank == 0):
        b = idx[i : i + batch_size]
        res = run_on_copy(fast, attack, x[b], y[b], b + first_index)
        broken[b] = res.success.to(broken.dtype)
        if expected is not None:
            expected[b] = correct_fraction(model, res.x_adv, y[b], attack.eot, batch_size).to(expected.dtype)
        if examples is not None:
            examples[b] = res.x_adv.to(examples.dtype)
        for k, v in _norms(res.x_adv - x[b]).items():
            norms[k][b] = v
    if world > 1:
        import torch.distributed as dist

        for t in (broken, *norms.values(), *(t for t in (examples, expected) if t is not None)):
            dist.all_reduce(t)  # each sample was filled by exactly one rank, zeros elsewhere
    robust &= broken == 0
    if expected is not None:
        expected = torch.where(sel, expected, torch.full_like(expected, float("nan"))).cpu()
    return AttackOutcome(attack.name, robust.cpu(), sel.cpu(), {k: v.cpu() for k, v in norms.items()},
                         time.perf_counter() - t0, repr(attack), None if examples is None else examples.cpu(),
                         fast.describe(attack), expected)


def correct_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int, batch_size: int = 500) -> torch.Tensor:
    """Per sample the fraction of ``draws`` forward passes (eval mode) that classify ``x`` as ``y``: a
    randomised model's probability of being right, one draw per query (1 or 0 for a deterministic one)."""
    hits = torch.zeros(len(x), device=x.device)
    with torch.no_grad():
        for _ in range(draws):
            hits += (predict(model, x, batch_size) == y).to(hits.dtype)
    return hits / draws


def keep_first_breaks(worst: torch.Tensor | None, unbroken: torch.Tensor, robust: torch.Tensor,
                      examples: torch.Tensor | None) -> torch.Tensor:
    """Per-sample worst case over attacks in order: where an attack breaks a sample that no earlier
    attack broke, its example goes into ``worst`` (in place). Returns the samples still unbroken."""
    if worst is not None and examples is not None:
        first = unbroken & ~robust
        worst[first.to(worst.device)] = examples[first].to(worst.device, worst.dtype)
    return unbroken & robust


@dataclass
class EvaluationResult:
    """Clean and robust accuracy with per-sample outcomes.

    ``robust_accuracy`` is the per-sample worst case over all attacks. In ``cascade`` mode each
    attack only runs on samples that survived the previous ones (as AutoAttack does), and
    ``per_attack`` holds the cumulative robust accuracy after each attack; otherwise each attack
    runs on every correctly classified sample and ``per_attack`` is its own accuracy.
    """

    threat: ThreatModel
    n: int
    clean_correct: torch.Tensor
    outcomes: list[AttackOutcome]
    cascade: bool
    checks: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    #: With ``evaluate(..., keep_adversarial=True)``: per sample the example of the first attack
    #: that broke it, else the input itself (not part of the JSON).
    adversarial: torch.Tensor | None = None

    @property
    def clean_accuracy(self) -> float:
        """Fraction of the ``n`` samples classified correctly without attack (an exact count over n)."""
        return int(self.clean_correct.sum()) / max(self.n, 1)

    @property
    def robust(self) -> torch.Tensor:
        """Per-sample bool: clean-correct and robust to every attack (the worst case over the attacks)."""
        r = self.clean_correct.clone()
        for o in self.outcomes:
            r &= o.robust
        return r

    @property
    def robust_accuracy(self) -> float:
        """Fraction of samples that are robust to every attack (an exact count over n)."""
        return int(self.robust.sum()) / max(self.n, 1)

    @property
    def expected_robust(self) -> torch.Tensor | None:
        """For a randomised model (some attack with ``eot > 1``), per sample the probability that one
        draw of the model classifies the sample's worst example correctly: the minimum over the
        attacks that ran on it of their ``expected`` fraction (an attack without it counts 1 or 0,
        its verdict); 0 where the clean prediction was wrong. None when no attack averaged draws."""
        steps = self._expected_steps()
        return None if steps is None else steps[1]

    def _expected_steps(self) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        """Per attack its one-draw figure per sample (in cascade mode cumulative, as ``per_attack``:
        the minimum over it and the attacks before; otherwise its own), and the minimum over all."""
        if all(o.expected is None for o in self.outcomes):
            return None
        clean = self.clean_correct.to(torch.float32)
        worst, per = clean, []
        for o in self.outcomes:
            mine = o.robust.to(clean.dtype) if o.expected is None else o.expected.to(clean.dtype)
            worst = torch.where(o.attacked, torch.minimum(worst, mine), worst)
            per.append(worst if self.cascade else torch.where(o.attacked, torch.minimum(clean, mine), clean))
        return per, worst

    @property
    def expected_robust_accuracy(self) -> float | None:
        """Mean of :attr:`expected_robust`: the robust accuracy of a randomised model as deployed (one
        draw per query), where ``robust_accuracy`` judges by the attacks' averaged predictions."""
        e = self.expected_robust
        return None if e is None else float(e.sum()) / max(self.n, 1)

    @property
    def per_attack(self) -> dict[str, float]:
        """Robust accuracy per attack name: cumulative in ``cascade`` mode, each attack's own otherwise."""
        return {o.name: int(o.robust.sum()) / max(self.n, 1) for o in self.outcomes}

    def to_dict(self, per_sample: bool = True) -> dict[str, Any]:
        """The JSON-able report: schema version, threat model, accuracies, per-attack summaries, checks and
        ``extra``; with ``per_sample`` also the per-sample 0/1 lists (clean, robust, robust per attack)."""
        steps = self._expected_steps()
        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "threat": self.threat.to_dict(),
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            **({} if steps is None else {"expected_robust_accuracy": float(steps[1].sum()) / max(self.n, 1)}),
            "per_attack": self.per_attack,
            "per_attack_mode": "cumulative" if self.cascade else "independent",
            "attacks": {o.name: o.summary(self.clean_correct) for o in self.outcomes},
            "checks": self.checks,
            **self.extra,
        }
        if steps is not None:
            for o, fig in zip(self.outcomes, steps[0]):
                if o.expected is not None:
                    d["attacks"][o.name]["expected_accuracy"] = float(fig.sum()) / max(self.n, 1)
        if per_sample:
            d["per_sample"] = {
                "clean_correct": self.clean_correct.int().tolist(),
                "robust": self.robust.int().tolist(),
                **{f"robust_{o.name}": o.robust.int().tolist() for o in self.outcomes},
            }
            if steps is not None:
                d["per_sample"]["expected_robust"] = [round(v, 4) for v in steps[1].tolist()]
        return d

    @classmethod
    def merge(cls, *parts: EvaluationResult) -> EvaluationResult:
        """One result from the results of disjoint parts of a data set, in the order given (the
        per-sample outcomes concatenated, attack seconds summed). The parts must share the threat
        model, the attacks with their settings and the cascade mode, else ValueError. Gradient-masking
        checks are not merged (they are statements about one evaluation): the merged result has none;
        ``extra`` is kept only where every part has the same value. ``adversarial`` is concatenated
        when every part kept it."""
        if not parts:
            raise ValueError("merge needs at least one EvaluationResult")
        first = parts[0]
        for i, p in enumerate(parts):
            if not isinstance(p, EvaluationResult):
                raise ValueError(f"part {i} is a {type(p).__name__}, not an EvaluationResult")
            if p.threat != first.threat:
                raise ValueError(f"part {i} was evaluated under another threat model ({p.threat}) than part 0 ({first.threat})")
            if p.cascade != first.cascade:
                raise ValueError(f"part {i} has cascade={p.cascade}, part 0 cascade={first.cascade}")
            mine = [(o.name, o.settings) for o in p.outcomes]
            theirs = [(o.name, o.settings) for o in first.outcomes]
            if mine != theirs:
                raise ValueError(f"part {i} ran other attacks than part 0: {mine} vs {theirs}")
        outcomes = []
        for k, o in enumerate(first.outcomes):
            same = [p.outcomes[k] for p in parts]
            examples = [s.examples for s in same if s.examples is not None]
            expected = [s.expected for s in same if s.expected is not None]
            outcomes.append(AttackOutcome(
                o.name, torch.cat([s.robust for s in same]), torch.cat([s.attacked for s in same]),
                {n: torch.cat([s.norms[n] for s in same]) for n in o.norms}, sum(s.seconds for s in same), o.settings,
                torch.cat(examples) if len(examples) == len(same) else None,
                "; ".join(dict.fromkeys(s.model_copy for s in same if s.model_copy)),
                torch.cat(expected) if len(expected) == len(same) else None))
        adv = [p.adversarial for p in parts if p.adversarial is not None]
        extra = {k: v for k, v in first.extra.items() if all(p.extra.get(k) == v for p in parts)}
        return cls(first.threat, sum(p.n for p in parts), torch.cat([p.clean_correct for p in parts]), outcomes,
                   first.cascade, extra=extra,
                   adversarial=torch.cat(adv) if len(adv) == len(parts) else None)

    def to_json(self, per_sample: bool = True) -> str:
        """``to_dict(per_sample)`` as indented JSON text."""
        return json.dumps(self.to_dict(per_sample), indent=2)



__all__ = ["SCHEMA_VERSION", "AttackOutcome", "EvaluationResult", "clean_accuracy", "correct_fraction", "keep_first_breaks",
           "predict", "run_attack"]
