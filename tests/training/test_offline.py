"""The offline retraining pipeline: its seven steps on the command line, its history, its resume."""

import json

import pytest
import torch
from click.testing import CliRunner

import robustlab.runs.train as runs_train
from robustlab.cli import main
from robustlab.runs import RunSpec, train_run
from robustlab.storage import load_model
from robustlab.storage.layout import METRICS_FILE
from robustlab.training import TrainConfig, read_history

TINY = ["--dataset", "digits", "--train-limit", "300", "--test-limit", "120", "--model-option", "channels=[8,16]",
        "--model-option", "hidden=32", "--batch-size", "64", "--lr", "3e-3", "--quiet"]


def test_cli_prints_every_step_with_the_metrics_numbers(tmp_path):
    run = tmp_path / "off"
    res = CliRunner().invoke(main, ["train", "--defense", "offline", "--eps", "0.1", "--epochs", "2",
                                    "--monitor-attack", "fgsm", "--out", str(run), *TINY])
    assert res.exit_code == 0, (res.output, res.exception)
    steps = [ln for ln in res.stdout.splitlines() if ln.startswith("offline step ")]
    assert [ln.split(":")[0] for ln in steps] == [f"offline step {k}/7" for k in range(1, 8)]
    m = json.loads((run / METRICS_FILE).read_text())
    assert f"{m['stage1_clean_accuracy']:.4f}" in steps[0]
    assert "300 images" in steps[1] and f"{m['stage1_fgsm_train_accuracy']:.4f}" in steps[1]
    assert "120 images" in steps[2]
    assert f"organic test accuracy {m['stage1_clean_accuracy']:.4f}" in steps[3]
    assert f"perturbed test accuracy {m['stage1_fgsm_accuracy']:.4f}" in steps[3]
    assert "300 organic + 300 perturbed" in steps[4]
    assert f"organic test accuracy {m['retrained_clean_accuracy']:.4f}" in steps[5]
    assert f"old perturbed test accuracy {m['retrained_fgsm_stage1_accuracy']:.4f}" in steps[5]
    assert f"test accuracy {m['retrained_fgsm_fresh_accuracy']:.4f}" in steps[6]
    # The retraining's history: per epoch, the stage-1 perturbed test set and the fresh FGSM
    # monitor; its last line agrees with the final numbers measured independently.
    history = read_history(run)
    assert len(history) == 2 and all("fgsm_stage1_accuracy" in h and "adv_accuracy" in h for h in history)
    assert history[-1]["fgsm_stage1_accuracy"] == pytest.approx(m["retrained_fgsm_stage1_accuracy"])
    assert history[-1]["adv_accuracy"] == pytest.approx(m["retrained_fgsm_fresh_accuracy"])
    assert history[-1]["clean_accuracy"] == pytest.approx(m["retrained_clean_accuracy"])
    assert len(read_history(run / "stage1")) == 2


def _spec():
    return RunSpec(dataset="digits", train_limit=300, test_limit=120, model="small-cnn",
                   model_options={"channels": [8, 16], "hidden": 32}, defense="offline",
                   defense_options={"eps": 0.1}, monitor={"attack": "fgsm", "eps": 0.1, "norm": "linf"})


CFG = TrainConfig(epochs=2, batch_size=64, lr=3e-3, progress=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("offline") / "full"
    return run, train_run(_spec(), run, CFG, device="cpu")


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", [2, 4], ids=["in-stage-1", "in-retraining"])
def test_interrupted_pipeline_resumes_to_the_same_result(uninterrupted, tmp_path, monkeypatch, kill_at):
    """The monitor runs once per epoch: call 2 is the first model's epoch 2, call 4 the retrained
    model's epoch 2; raising there loses that epoch, as a kill would."""
    full_run, full_metrics = uninterrupted
    real = runs_train.build_monitor

    def dying_monitor(spec):
        attack, calls = real(spec), []

        def call(model, x, y):
            calls.append(1)
            if len(calls) == kill_at:
                raise Killed
            return attack(model, x, y)
        return call

    run = tmp_path / "part"
    monkeypatch.setattr(runs_train, "build_monitor", dying_monitor)
    with pytest.raises(Killed):
        train_run(_spec(), run, CFG, device="cpu")
    monkeypatch.setattr(runs_train, "build_monitor", real)
    with pytest.raises(ValueError, match="already holds a run"):
        train_run(_spec(), run, CFG, device="cpu")  # a state in stage1/ counts as a run too
    metrics = train_run(_spec(), run, CFG, device="cpu", resume=True)
    assert metrics == full_metrics
    full, part = load_model(full_run).state_dict(), load_model(run).state_dict()
    assert all(torch.equal(full[k], part[k]) for k in full)
    assert [h["fgsm_stage1_accuracy"] for h in read_history(run)] == [
        h["fgsm_stage1_accuracy"] for h in read_history(full_run)]


def test_resume_without_the_first_models_state_is_refused(uninterrupted, tmp_path):
    import shutil

    full_run, _ = uninterrupted
    run = tmp_path / "copy"
    shutil.copytree(full_run, run)
    shutil.rmtree(run / "stage1")
    with pytest.raises(ValueError, match="first model's .*stage1.*missing"):
        train_run(_spec(), run, CFG, device="cpu", resume=True)


def test_an_interruption_in_stage_1_names_the_pipelines_run(tmp_path, monkeypatch):
    """A signal in the first training says to resume RUN, not RUN/stage1 (which is no run)."""
    import robustlab.training.offline as offline
    from robustlab.training import TrainingInterrupted

    def interrupted(model, objective, data, test_data, config, run_dir=None, **kw):
        raise TrainingInterrupted(2, run_dir)

    monkeypatch.setattr(offline, "train", interrupted)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 2
    with pytest.raises(TrainingInterrupted, match=f"--resume {tmp_path / 'run'}$") as e:
        offline.offline_retraining(lambda: torch.nn.Linear(64, 2), (x, y), (x, y), CFG, run_dir=tmp_path / "run")
    assert e.value.exit_code == 130
