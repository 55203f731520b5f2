import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from robustlab.models import build_model
from robustlab.runs import RunSpec, train_run
from robustlab.storage import load_model
from robustlab.training import Clean, TrainConfig, accuracy, read_history, train


def test_digits_reaches_90_percent(digits, digits_model):
    _, _, xte, yte = digits
    assert accuracy(digits_model, xte, yte) >= 0.90


def _small(seed=0):
    torch.manual_seed(seed)
    return build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32)


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "cosine"), ("adam", "onecycle"), ("adamw", "step")])
def test_same_seed_same_weights(digits, optimizer, schedule):
    xtr, ytr, xte, yte = digits
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer=optimizer, lr=0.01, schedule=schedule, seed=3, progress=False)
    a, b = _small(), _small()
    ha = train(a, Clean(), (xtr, ytr), (xte, yte), cfg).history
    hb = train(b, Clean(), (xtr, ytr), (xte, yte), cfg).history
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert [h["clean_accuracy"] for h in ha] == [h["clean_accuracy"] for h in hb]
    assert len(ha) == 2 and {"epoch", "train_loss", "clean_accuracy", "lr", "seconds"} <= set(ha[0])


def test_interrupted_then_resumed_equals_uninterrupted(digits, tmp_path):
    xtr, ytr, xte, yte = digits
    cfg = TrainConfig(epochs=4, batch_size=64, lr=3e-3, schedule="cosine", seed=1, progress=False)
    full = _small()
    train(full, Clean(), (xtr, ytr), (xte, yte), cfg, run_dir=tmp_path / "full")

    class Killed(Exception):
        pass

    def die(epoch, line):
        if epoch == 2:
            raise Killed

    part = _small()
    with pytest.raises(Killed):
        train(part, Clean(), (xtr, ytr), (xte, yte), cfg, run_dir=tmp_path / "part", on_epoch_end=die)
    resumed = _small(seed=99)  # different init: everything must come from the saved state
    res = train(resumed, Clean(), (xtr, ytr), (xte, yte), cfg, run_dir=tmp_path / "part", resume=True)
    assert res.resumed_from_epoch == 1
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert [h["clean_accuracy"] for h in read_history(tmp_path / "full")] == [
        h["clean_accuracy"] for h in read_history(tmp_path / "part")
    ]


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="nothing to resume"):
        train(
            _small(), Clean(), (torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)), None, TrainConfig(epochs=1),
            run_dir="/nonexistent", resume=True,
        )


def test_run_directory_layout(tmp_path):
    spec = RunSpec(dataset="digits", model="small-cnn", model_options={"channels": [8, 16], "hidden": 32})
    m = train_run(spec, tmp_path / "run", TrainConfig(epochs=2, batch_size=64, lr=3e-3, progress=False), device="cpu")
    run = tmp_path / "run"
    expected = {"model.safetensors", "model.json", "history.jsonl", "metrics.json", "config.json", "train_state.safetensors"}
    assert expected <= {p.name for p in run.iterdir()}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["clean_accuracy"] == m["clean_accuracy"] > 0.5
    assert len(read_history(run)) == 2
    model = load_model(run)
    from robustlab.data import load_dataset

    x, y, _ = load_dataset("digits", "test")
    assert accuracy(model, x, y) == metrics["clean_accuracy"]
    with pytest.raises(ValueError, match="already holds a run"):
        train_run(spec, run, TrainConfig(epochs=2, progress=False), device="cpu")


def _cli(*args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "robustlab", *args], capture_output=True, text=True, env=env, **kw)


def test_kill_9_then_resume_gives_the_same_weights(tmp_path):
    """A real SIGKILL in the middle of a run, then `train --resume RUN`."""
    common = ["train", "--dataset", "fashion-mnist", "--train-limit", "3000", "--test-limit", "500",
              "--model-option", "channels=[8,16]", "--model-option", "hidden=32",
              "--epochs", "5", "--batch-size", "64", "--schedule", "cosine", "--seed", "7", "--quiet", "--device", "cpu"]
    ref = _cli(*common, "--out", str(tmp_path / "ref"), timeout=300)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "robustlab", *common, "--out", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_history(run)) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= len(read_history(run)) < 5, "the kill must land mid-run"
    res = _cli("train", "--resume", str(run), "--quiet", timeout=300)
    assert res.returncode == 0, res.stderr
    a, b = load_model(tmp_path / "ref").state_dict(), load_model(run).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert read_history(tmp_path / "ref")[-1]["clean_accuracy"] == read_history(run)[-1]["clean_accuracy"]


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_mid_epoch_state_and_resume_matches(tmp_path, sig, code):
    """SIGINT/SIGTERM mid-run: exit 130/143 with a consistent state; --resume ends identical."""
    common = ["train", "--dataset", "fashion-mnist", "--train-limit", "3000", "--test-limit", "300",
              "--model-option", "channels=[8,16]", "--model-option", "hidden=32", "--monitor-attack", "none",
              "--epochs", "3", "--batch-size", "32", "--seed", "5", "--quiet", "--device", "cpu"]
    ref = _cli(*common, "--out", str(tmp_path / "ref"), timeout=300)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "sig"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "robustlab", *common, "--out", str(run)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_history(run)) < 1:
        time.sleep(0.05)
    time.sleep(0.3)  # land inside epoch 2
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "--resume" in err
    from robustlab.storage import load_state

    state = load_state(run / "train_state.safetensors")
    assert state["epoch"] >= 1
    res = _cli("train", "--resume", str(run), "--quiet", timeout=300)
    assert res.returncode == 0, res.stderr
    a, b = load_model(tmp_path / "ref").state_dict(), load_model(run).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_signal_mid_epoch_in_process_resumes_exactly(digits, tmp_path):
    from robustlab.storage import load_state
    from robustlab.training.loop import TrainingInterrupted

    xtr, ytr, xte, yte = digits
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, schedule="onecycle", seed=2, progress=False)
    full = _small()
    train(full, Clean(), (xtr, ytr), (xte, yte), cfg, run_dir=tmp_path / "full")

    class SignalAtBatch(Clean):
        calls = 0

        def __call__(self, model, x, y):
            SignalAtBatch.calls += 1
            if SignalAtBatch.calls == 30:  # epoch 2 (22 batches per epoch), batch 8
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__call__(model, x, y)

    with pytest.raises(TrainingInterrupted) as info:
        train(_small(), SignalAtBatch(), (xtr, ytr), (xte, yte), cfg, run_dir=tmp_path / "part")
    assert info.value.exit_code == 143
    state = load_state(tmp_path / "part" / "train_state.safetensors")
    assert (state["epoch"], state["batch"]) == (1, 8)
    resumed = _small(seed=5)
    train(resumed, Clean(), (xtr, ytr), (xte, yte), cfg, run_dir=tmp_path / "part", resume=True)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert read_history(tmp_path / "full")[-1]["train_loss"] == pytest.approx(read_history(tmp_path / "part")[-1]["train_loss"], abs=1e-6)


def test_read_history_is_the_layouts():
    from robustlab.storage import layout
    from robustlab.training import loop

    assert read_history is layout.read_history and loop.STATE_FILE == layout.STATE_FILE


def test_nan_logits_are_refused_and_a_last_step_divergence_is_a_floating_point_error(digits):
    """accuracy() is the shared predict(): NaN logits are a ValueError. Weights that turn NaN in
    the last step of a run (the loss was still finite) end it as a diverged loss does."""
    import torch.nn.functional as F

    xtr, ytr, xte, yte = digits
    model = _small()
    broken = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        broken[1].weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        accuracy(broken, xte, yte)
    assert accuracy(model, xte[:0], yte[:0]) == 0.0

    class NaNGradients(Clean):
        def __call__(self, model, x, y):
            logits = model(x)
            logits.register_hook(lambda g: torch.full_like(g, float("nan")))
            loss = F.cross_entropy(logits, y)
            return loss, {"loss": loss.detach()}

    cfg = TrainConfig(epochs=1, batch_size=len(xtr), progress=False)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(model, NaNGradients(), (xtr, ytr), (xte, yte), cfg)
