"""Early stopping on held-out training images (``--holdout N --select-best robust``): the held-out
images are never trained on, the per-epoch robust accuracy is measured on exactly them, and the
run's model is the best epoch's checkpoint (recorded as ``selected_epoch``)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner

from robustlab.attacks import PGD
from robustlab.cli import main
from robustlab.models import build_model
from robustlab.runs import RunSpec, train_run
from robustlab.storage import load_model
from robustlab.threat import ThreatModel
from robustlab.training import TrainConfig, build_objective, read_history, train
from robustlab.training.extras import holdout_indices
from robustlab.training.loop import robust_accuracy_of


def _small(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("small-cnn", 10, 1, input_size=8, channels=(4, 8), hidden=16)


def _tagged(x: torch.Tensor) -> torch.Tensor:
    """x with pixel (0, 0) set to i / len(x): every image unique, its index readable back."""
    x = x.clone()
    x[:, 0, 0, 0] = torch.arange(len(x), dtype=x.dtype) / len(x)
    return x


class _Seen:
    """Wraps an objective; records the index of every image trained on."""

    def __init__(self, inner, n: int) -> None:
        self.inner, self.name, self.n, self.seen = inner, inner.name, n, []

    def config(self):
        return self.inner.config()

    def __call__(self, model, x, y):
        self.seen += torch.round(x[:, 0, 0, 0] * self.n).long().tolist()
        return self.inner(model, x, y)


def test_held_out_images_are_never_trained_on_and_are_the_ones_measured(digits, tmp_path):
    xtr, ytr, _, _ = digits
    n, held = 300, 50
    x, y = _tagged(xtr[:n]), ytr[:n]
    obj = _Seen(build_objective("clean"), n)
    attack = PGD(ThreatModel("linf", 0.1), steps=3, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=3, progress=False, verbose=False, holdout=held)
    model = _small()
    train(model, obj, (x, y), None, cfg, run_dir=tmp_path, monitor_attack=attack)
    keep, out = holdout_indices(n, held, seed=3)
    assert len(out) == held and set(keep.tolist()).isdisjoint(out.tolist())
    assert sorted(obj.seen) == sorted(keep.tolist() * 2)  # every kept image once per epoch, no held-out one
    last = read_history(tmp_path)[-1]
    assert last["holdout_adv_accuracy"] == robust_accuracy_of(attack, model, x[out], y[out])
    # another seed holds out other images
    assert not torch.equal(holdout_indices(n, held, seed=4)[1], out)


class _Scripted:
    """A stand-in monitor attack whose strength is scripted per epoch (one call per epoch): it
    leaves the images alone in ``clean_epoch`` and blanks them otherwise, so the held-out robust
    accuracy peaks in that epoch whatever the training does."""

    def __init__(self, clean_epoch: int) -> None:
        self.clean_epoch, self.calls = clean_epoch, 0

    def __call__(self, model, x, y):
        self.calls += 1
        return x.clone() if self.calls == self.clean_epoch else torch.zeros_like(x)


def test_the_run_model_is_the_best_epochs_checkpoint(digits, digits_model, tmp_path):
    xtr, ytr, _, _ = digits
    per_epoch = []
    model = copy.deepcopy(digits_model).train()  # accurate from the start: blanked images score far lower
    cfg = TrainConfig(epochs=3, batch_size=64, lr=1e-3, seed=0, progress=False, verbose=False, holdout=100,
                      select_best="robust")
    train(model, build_objective("clean"), (xtr[:400], ytr[:400]), None, cfg, run_dir=tmp_path,
          monitor_attack=_Scripted(clean_epoch=2),
          on_epoch_end=lambda epoch, line: per_epoch.append({k: v.clone() for k, v in model.state_dict().items()}))
    history = read_history(tmp_path)
    accs = [h["holdout_adv_accuracy"] for h in history]
    assert accs.index(max(accs)) == 1 and accs[1] > accs[2]  # epoch 2 is the best, not the last
    saved = load_model(tmp_path)
    assert saved.robustlab_metadata["selected_epoch"] == 2 == history[-1]["selected_epoch"]
    for k, v in saved.state_dict().items():
        assert torch.equal(v, per_epoch[1][k]), k
        assert torch.equal(model.state_dict()[k], per_epoch[1][k]), k  # the model in place too
    assert not all(torch.equal(v, per_epoch[2][k]) for k, v in saved.state_dict().items())


def test_train_run_records_the_selected_epoch(tmp_path):
    spec = RunSpec(dataset="digits", train_limit=300, test_limit=60, model="small-cnn",
                   model_options={"channels": [4, 8], "hidden": 16},
                   monitor={"attack": "pgd", "eps": 0.1, "norm": "linf", "steps": 2, "seed": 0})
    cfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3, progress=False, verbose=False, holdout=50, select_best="robust",
                      monitor_n=30)
    metrics = train_run(spec, tmp_path, cfg, device="cpu")
    history = read_history(tmp_path)
    best = max(range(2), key=lambda i: (history[i]["holdout_adv_accuracy"], -i))
    assert metrics["selected_epoch"] == best + 1
    assert metrics["holdout_adv_accuracy"] == history[best]["holdout_adv_accuracy"]
    assert metrics["monitor_adv_accuracy"] == history[best]["adv_accuracy"]
    saved = json.loads((tmp_path / "config.json").read_text())["training"]
    assert (saved["holdout"], saved["select_best"]) == (50, "robust")


@pytest.mark.parametrize("kwargs, message", [
    ({"select_best": "robust"}, "needs holdout >= 1"),
    ({"holdout": -1}, "holdout must be >= 0"),
    ({"select_best": "best"}, "unknown select_best"),
])
def test_bad_settings_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_holdout_needs_training_images_left_and_a_monitor_attack(digits):
    xtr, ytr, _, _ = digits
    with pytest.raises(ValueError, match="leaves no training images"):
        train(_small(), build_objective("clean"), (xtr[:50], ytr[:50]), None, TrainConfig(holdout=50, progress=False))
    with pytest.raises(ValueError, match="needs a monitor attack"):
        train(_small(), build_objective("clean"), (xtr[:50], ytr[:50]), None, TrainConfig(holdout=10, progress=False))


def test_cli_refuses_select_best_without_holdout(tmp_path):
    r = CliRunner().invoke(main, ["train", "--dataset", "digits", "--select-best", "robust", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2
    assert "needs holdout >= 1" in r.output and "Traceback" not in r.output


class _ScriptedAccuracy:
    """A stand-in monitor attack that leaves exactly ``kept[e]`` of the held-out images untouched in
    epoch ``e`` (one call per epoch) and swaps each other one for a held-out image of another class."""

    def __init__(self, kept: list[int]) -> None:
        self.kept, self.calls = kept, 0

    def __call__(self, model, x, y):
        k = self.kept[self.calls]
        self.calls += 1
        out = x.clone()
        for i in range(k, len(x)):
            out[i] = x[int((y != y[i]).nonzero()[0])]
        return out


@pytest.mark.parametrize("kept, rule, expected", [
    # 100 held-out images; at best p = 0.5 one standard error is 0.05 (5 images)
    ([50, 46, 30], "robust-1se", 2),  # 46 >= 50 - 5: the later epoch; 30 is outside
    ([50, 46, 30], "robust", 1),
    ([40, 50, 45], "robust-1se", 3),  # the best moved to epoch 2, and epoch 3 is within 5 of it
    ([40, 50, 44], "robust-1se", 2),  # 44 < 50 - 5
])
def test_robust_1se_takes_the_latest_epoch_within_one_standard_error(digits, digits_model, tmp_path, kept, rule, expected):
    xtr, ytr, _, _ = digits
    model = copy.deepcopy(digits_model).train()
    per_epoch: list[dict] = []
    cfg = TrainConfig(epochs=3, batch_size=128, lr=1e-5, seed=0, progress=False, verbose=False, holdout=100, select_best=rule)
    train(model, build_objective("clean"), (xtr[:500], ytr[:500]), None, cfg, run_dir=tmp_path,
          monitor_attack=_ScriptedAccuracy(kept),
          on_epoch_end=lambda epoch, line: per_epoch.append({k: v.clone() for k, v in model.state_dict().items()}))
    accs = [h["holdout_adv_accuracy"] for h in read_history(tmp_path)]
    assert accs == [k / 100 for k in kept]  # the model got every held-out image right: the script decides
    saved = load_model(tmp_path)
    assert saved.robustlab_metadata["selected_epoch"] == expected
    for k, v in saved.state_dict().items():
        assert torch.equal(v, per_epoch[expected - 1][k]), k
