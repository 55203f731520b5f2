"""Recipe mechanisms the training loop calls at a few fixed points (so the loop stays one loop):

* ``TrainConfig.ema``: an exponential moving average of the weights (:mod:`.ema`), updated after
  every optimiser step; it is the model each epoch evaluates and the run saves.
* ``TrainConfig.holdout``: N training images (a seeded random subset) removed from training; after
  every epoch the monitor attack's accuracy on them is ``holdout_adv_accuracy`` in the history.
* ``TrainConfig.select_best = "robust"``: the run's model is the epoch with the best
  ``holdout_adv_accuracy`` (the first such epoch on ties), not the last one: early stopping against
  robust overfitting (Rice et al. 2020) selected on held-out *training* images, never on the test
  set. ``selected_epoch`` says which, in model.json and the history lines.
* ``TrainConfig.select_best = "robust-1se"``: the *latest* epoch whose ``holdout_adv_accuracy``
  is within one standard error of the best so far (``sqrt(p (1 - p) / N)`` for the best accuracy
  ``p`` on ``N`` held-out images). With a small holdout the plain maximum often picks an early
  epoch for a gain inside the noise and pays for it in clean accuracy; this rule prefers the later,
  longer-trained weights unless the held-out drop is larger than the noise.

Everything here is part of the training state, so a resumed run ends bit-identical.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..distributed import unwrap
from .ema import WeightEMA

SELECT_BEST = ("last", "robust", "robust-1se")
HOLDOUT_SEED = 7919  # the held-out subset is a function of the run's seed, apart from the batch order


def check_extras_config(cfg: Any) -> None:
    """ValueError for a bad ``ema`` / ``holdout`` / ``select_best`` of a TrainConfig."""
    if not (cfg.ema == 0 or (0 < cfg.ema < 1 and math.isfinite(cfg.ema))):
        raise ValueError(f"ema must be 0 (off) or a decay in (0, 1) such as 0.999, got {cfg.ema}")
    if cfg.holdout < 0:
        raise ValueError(f"holdout must be >= 0 (training images held out), got {cfg.holdout}")
    if cfg.select_best not in SELECT_BEST:
        raise ValueError(f"unknown select_best {cfg.select_best!r}: expected one of {', '.join(SELECT_BEST)}")
    if cfg.select_best != "last" and cfg.holdout < 1:
        raise ValueError(f"select_best {cfg.select_best!r} needs holdout >= 1: robust accuracy is measured on held-out "
                         "training images, never on the test set")


def binomial_se(accuracy: float, n: int) -> float:
    """The binomial standard error ``sqrt(p (1 - p) / n)`` of an accuracy ``p`` measured on ``n``
    images (a tiny epsilon added, so an accuracy equal to the bound's float rounding still counts)."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(n, 1)) + 1e-12


def holdout_indices(n_train: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) sorted indices of ``n_train`` training samples: ``holdout`` of them chosen
    by a generator seeded from ``seed`` (the global RNG is not touched)."""
    if holdout >= n_train:
        raise ValueError(f"holdout {holdout} leaves no training images (the training set has {n_train})")
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + HOLDOUT_SEED))
    return perm[holdout:].sort().values, perm[:holdout].sort().values


def split_holdout(x: torch.Tensor, y: torch.Tensor, holdout: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """(x, y) to train on and the held-out (x, y), or None when ``holdout`` is 0."""
    if holdout == 0:
        return x, y, None
    keep, held = holdout_indices(len(x), holdout, seed)
    keep, held = keep.to(x.device), held.to(x.device)
    return x[keep], y[keep], (x[held], y[held])


class TrainingExtras:
    """The EMA, held-out data and best-epoch selection of one ``train()`` call."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, config: Any,
                 holdout: tuple[torch.Tensor, torch.Tensor] | None, attack: Any | None) -> None:
        if holdout is not None and attack is None:
            raise ValueError("holdout needs a monitor attack (--monitor-attack) to measure robust accuracy on the "
                             "held-out images")
        self.ema = WeightEMA(model, config.ema) if config.ema > 0 else None
        if self.ema is not None:
            opt.register_step_post_hook(self.ema.hook(model))
        self.holdout, self.attack, self.select = holdout, attack, config.select_best
        self.best_epoch = 0
        self.best_model: nn.Module | None = None

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The model an epoch is evaluated with: the average (its buffers refreshed, e.g. after a
        distributed run averaged them) or ``model`` itself."""
        if self.ema is None:
            return model
        self.ema.copy_buffers(model)
        return self.ema.model

    def holdout_metrics(self, model: nn.Module, batch_size: int) -> dict[str, float]:
        """``holdout_accuracy`` and ``holdout_adv_accuracy`` of the evaluated model ({} without a holdout)."""
        if self.holdout is None:
            return {}
        from .loop import monitor_counts, sharded_accuracy

        m = self.eval_model(model)
        xh, yh = self.holdout
        adv = monitor_counts(m, xh, yh, self.attack, batch_size)["adv_accuracy"]
        return {"holdout_accuracy": sharded_accuracy(m, xh, yh, batch_size), "holdout_adv_accuracy": adv}

    def after_epoch(self, model: nn.Module, history: list[dict[str, Any]]) -> None:
        """Keep the epoch's weights when the selection rule picks it; tag the history line."""
        if self.select == "last":
            return
        line, acc = history[-1], history[-1]["holdout_adv_accuracy"]
        before = max((h["holdout_adv_accuracy"] for h in history[:-1] if "holdout_adv_accuracy" in h), default=-math.inf)
        if self.select == "robust":
            take = acc > before
        else:  # robust-1se: the latest epoch within one standard error of the best so far
            assert self.holdout is not None  # check_extras_config: select_best needs a holdout
            best = max(before, acc)
            take = acc >= best - binomial_se(best, len(self.holdout[0]))
        if self.best_model is None or take:
            self.best_epoch = int(line["epoch"])
            self.best_model = copy.deepcopy(unwrap(self.eval_model(model)))
        line["selected_epoch"] = self.best_epoch

    def saved_model(self, model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        """The module the run saves as its model after an epoch, and metadata saying what it is."""
        if self.best_model is not None:
            meta = {"selected_epoch": self.best_epoch, "selected_by": "holdout_adv_accuracy"}
            return self.best_model, meta if self.select == "robust" else {**meta, "selection_rule": self.select}
        return unwrap(self.eval_model(model)), ({"weights_average": {"ema": self.ema.decay}} if self.ema else {})

    @torch.no_grad()
    def finish(self, model: nn.Module) -> None:
        """After the last epoch: ``model`` takes the weights the run saved (best epoch, or the average)."""
        chosen, _ = self.saved_model(model)
        if chosen is not unwrap(model):
            unwrap(model).load_state_dict(chosen.state_dict())

    def state(self) -> dict[str, Any]:
        """What a training state holds of these (resume)."""
        out: dict[str, Any] = {}
        if self.ema is not None:
            out["ema"] = self.ema.state()
        if self.best_model is not None:
            out["best"] = {"epoch": self.best_epoch, "weights": dict(self.best_model.state_dict())}
        return out

    def load(self, state: dict[str, Any] | None, model: nn.Module) -> None:
        """Restore :meth:`state` (a state without it: the run did not use these)."""
        state = state or {}
        if self.ema is not None:
            if "ema" not in state:
                raise ValueError("the training state has no EMA weights: the run was not started with ema")
            self.ema.load(state["ema"])
        if "best" in state:
            self.best_epoch = int(state["best"]["epoch"])
            self.best_model = copy.deepcopy(unwrap(self.eval_model(model)))
            self.best_model.load_state_dict(state["best"]["weights"])
