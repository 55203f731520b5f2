"""The linearity experiment (the notes' "why are networks vulnerable?"; Goodfellow, Shlens &
Szegedy 2015): for a linear score ``s(x) = w.x + b``, FGSM's step ``eps * sign(w)`` (against the
true class) moves the score by exactly ``eps * ||w||_1``. With the same per-coordinate budget,
that grows with the input dimension (``||w||_1`` is up to ``sqrt(n) ||w||_2``), so in high
dimension many imperceptible changes add up to a large change of the activation.

The task keeps the difficulty fixed across dimensions: two classes, ``x = (2y - 1) * m / sqrt(n) *
(1, ..., 1) + N(0, I)`` in ``n`` dimensions, so the class means are ``2m`` apart at every ``n``
(the Bayes error is ``Phi(-m)``). The classifier is trained in closed form (the difference of the
training class means, normalised to ``||w||_2 = 1``, with the bias at the midpoint: the best
linear rule for this task up to the noise in the estimated means), packed as a two-logit model
``(0, s(x))`` so that the library's :class:`~robustlab.attacks.FGSM` attacks it with autograd.
Per dimension the experiment measures the score change FGSM really causes, the closed form
``eps * ||w||_1``, and the clean and FGSM error rates. The inputs are unbounded Gaussians; the
threat model's bounds are set wide enough that FGSM is never clipped (so the closed form is exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from .._torch import check_float, check_int
from ..attacks import FGSM
from ..storage import atomic_write_json
from ..storage.layout import LINEARITY_JSON, LINEARITY_PNG
from ..threat import ThreatModel

#: Files :func:`run_linearity` writes into its output folder.
DEFAULT_DIMS = (10, 100, 1000, 10000)
_CHUNK = 500  # samples generated (and attacked) at a time: memory stays bounded at n = 10^4 and beyond


def linear_task(dim: int, n: int, margin: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of the task in ``dim`` dimensions: labels 0/1 (balanced at random) and
    inputs ``(2y - 1) * margin / sqrt(dim) + N(0, I)`` (float32)."""
    y = torch.randint(0, 2, (n,), generator=generator)
    x = torch.randn(n, dim, generator=generator)
    x += (2 * y - 1).float()[:, None] * (margin / math.sqrt(dim))
    return x, y


def fit_linear(dim: int, n_train: int, margin: float, generator: torch.Generator) -> nn.Linear:
    """The class-mean classifier fitted on ``n_train`` fresh samples (drawn in chunks, never all
    held at once): logits ``(0, w.x + b)`` with ``w`` the difference of the class means scaled
    to unit L2 norm and ``b`` placing the boundary midway between the means."""
    sums = torch.zeros(2, dim, dtype=torch.float64)
    counts = torch.zeros(2, dtype=torch.float64)
    for start in range(0, n_train, _CHUNK):
        x, y = linear_task(dim, min(_CHUNK, n_train - start), margin, generator)
        sums.index_add_(0, y, x.double())
        counts += torch.bincount(y, minlength=2).double()
    if bool((counts == 0).any()):
        raise ValueError(f"n_train={n_train} drew a single class: use more training samples")
    means = sums / counts[:, None]
    w = means[1] - means[0]
    w = w / w.norm()
    b = -float(w @ (means[0] + means[1])) / 2
    model = nn.Linear(dim, 2)
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros_like(w), w]).float())
        model.bias.copy_(torch.tensor([0.0, b]))
    return model.eval()


def _score(model: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The activation ``s(x) = w.x + b`` (the second logit minus the first), float64."""
    with torch.no_grad():
        z = model(x).double()
    return z[:, 1] - z[:, 0]


def linearity_row(dim: int, eps: float, seed: int = 0, n_train: int = 4000, n_test: int = 2000,
                  margin: float = 2.0) -> dict[str, Any]:
    """One dimension of the experiment (see the module docstring): a dict with ``dim``, ``eps``,
    ``w_l1`` and ``w_l2`` (the trained weights' norms), ``closed_form`` (``eps * ||w||_1``),
    ``activation_change`` (mean over the test set of the score change FGSM causes, toward the
    wrong class), ``max_deviation`` (largest per-sample ``|change - closed_form|``),
    ``unmoved`` (samples FGSM did not move: a zero gradient), ``clean_error`` and ``fgsm_error``."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(dim))
    model = fit_linear(dim, n_train, margin, g)
    w = model.weight[1].detach().double()
    closed = eps * float(w.abs().sum())
    changes, clean_wrong, adv_wrong, unmoved = [], 0, 0, 0
    for start in range(0, n_test, _CHUNK):
        x, y = linear_task(dim, min(_CHUNK, n_test - start), margin, g)
        bound = math.ceil(float(x.abs().max()) + eps + 1.0)
        x_adv = FGSM(ThreatModel("linf", eps, (-bound, bound)))(model, x, y)
        sign = (2 * y - 1).double()
        changes.append((_score(model, x) - _score(model, x_adv)) * sign)
        with torch.no_grad():
            clean_wrong += int((model(x).argmax(1) != y).sum())
            adv_wrong += int((model(x_adv).argmax(1) != y).sum())
        unmoved += int((x_adv == x).all(dim=1).sum())
    change = torch.cat(changes)
    return {
        "dim": int(dim), "eps": float(eps), "w_l1": float(w.abs().sum()), "w_l2": float(w.norm()),
        "closed_form": closed, "activation_change": float(change.mean()),
        "max_deviation": float((change - closed).abs().max()), "unmoved": unmoved,
        "clean_error": clean_wrong / n_test, "fgsm_error": adv_wrong / n_test,
    }


def linearity_experiment(dims: Sequence[int] = DEFAULT_DIMS, eps: float = 0.01, seed: int = 0, n_train: int = 4000,
                         n_test: int = 2000, margin: float = 2.0) -> list[dict[str, Any]]:
    """:func:`linearity_row` for every dimension of ``dims`` (whole numbers >= 1, any order),
    sorted by dimension. Bad input (no dims, eps <= 0, too few samples) is a ValueError."""
    dims = [check_int("each of dims", d, 1) for d in dims]
    if not dims:
        raise ValueError("dims is empty: give at least one input dimension")
    eps = check_float("eps", eps, 0.0, strict=True)
    margin = check_float("margin", margin, 0.0)
    n_train, n_test = check_int("n_train", n_train, 2), check_int("n_test", n_test, 1)
    seed = check_int("seed", seed, 0)
    return [linearity_row(d, eps, seed, n_train, n_test, margin) for d in sorted(set(dims))]


def plot_linearity(rows: Sequence[dict[str, Any]], out: str | Path) -> Figure:
    """Two panels against the dimension (log axis): the measured activation change with the closed
    form ``eps * ||w||_1``, and the clean and FGSM error rates; written to ``out`` (PNG) atomically."""
    from ..report.plots import save_figure

    dims = [r["dim"] for r in rows]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax.plot(dims, [r["closed_form"] for r in rows], color="black", lw=1.5, label="closed form eps * ||w||_1")
    ax.plot(dims, [r["activation_change"] for r in rows], "o", color="#d62728", label="measured (FGSM, mean)")
    ax.set(xscale="log", yscale="log", xlabel="input dimension n", ylabel="change of w.x + b",
           title=f"activation change under FGSM (eps = {rows[0]['eps']:g})" if rows else "activation change under FGSM")
    ax2.plot(dims, [r["fgsm_error"] for r in rows], "o-", color="#d62728", label="under FGSM")
    ax2.plot(dims, [r["clean_error"] for r in rows], "s--", color="#1f77b4", label="clean")
    ax2.set(xscale="log", ylim=(0, 1), xlabel="input dimension n", ylabel="error rate", title="error rate")
    for a in (ax, ax2):
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    return save_figure(fig, out)


def run_linearity(out: str | Path, dims: Sequence[int] = DEFAULT_DIMS, eps: float = 0.01, seed: int = 0,
                  n_train: int = 4000, n_test: int = 2000, margin: float = 2.0) -> list[dict[str, Any]]:
    """Run :func:`linearity_experiment` and write ``OUT/linearity.json`` (the settings and rows)
    and ``OUT/linearity.png`` (:func:`plot_linearity`), both atomically; return the rows."""
    rows = linearity_experiment(dims, eps, seed, n_train, n_test, margin)
    folder = Path(out)
    settings = {"dims": [r["dim"] for r in rows], "eps": float(eps), "seed": int(seed), "n_train": int(n_train),
                "n_test": int(n_test), "margin": float(margin)}
    atomic_write_json(folder / LINEARITY_JSON, {"experiment": "linearity", "settings": settings, "rows": rows})
    plot_linearity(rows, folder / LINEARITY_PNG)
    return rows
