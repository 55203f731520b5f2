import json
import os
import pickle
import platform
import subprocess
from pathlib import Path

import pytest
import torch

import robustlab
from robustlab.models import build_model
from robustlab.storage import CheckpointError, atomic, checkpoint, load_model, load_state, save_model, save_state


def _model(**opts):
    torch.manual_seed(0)
    return build_model("small-cnn", 10, 1, batchnorm=True, **opts)


def test_round_trip_is_bit_identical(tmp_path):
    m = _model()
    m.train()
    m(torch.rand(8, 1, 28, 28))  # move BatchNorm running statistics away from init
    save_model(m, tmp_path / "run", dataset="fashion-mnist", metrics={"clean_accuracy": 0.5})
    assert (tmp_path / "run" / "model.safetensors").is_file()
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["architecture"]["name"] == "small-cnn" and meta["dataset"] == "fashion-mnist"
    env = meta["environment"]
    assert env["torch"] == torch.__version__ and env["robustlab"] == robustlab.__version__
    assert env["python"] == platform.python_version()
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(checkpoint.__file__).parent, capture_output=True, text=True)
    if git.returncode == 0:  # a source checkout records its commit
        assert env["git_commit"] == git.stdout.strip()
    loaded = load_model(tmp_path / "run")
    a, b = m.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    x = torch.rand(4, 1, 28, 28)
    m.eval()
    assert torch.equal(m(x), loaded(x))


def test_single_file_form(tmp_path):
    m = build_model("mlp", 3, 1, input_size=4, hidden=(5,))
    save_model(m, tmp_path / "w.safetensors")
    assert (tmp_path / "w.json").is_file()
    assert torch.equal(load_model(tmp_path / "w.safetensors").net[1].weight, m.net[1].weight)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch " + str(_Boom.marker),))


def test_pickle_is_refused_and_never_runs(tmp_path):
    _Boom.marker = tmp_path / "pwned"
    run = tmp_path / "run"
    save_model(_model(), run)
    # Replace the weights with a malicious pickle: loading must fail without running it.
    with open(run / "model.safetensors", "wb") as f:
        pickle.dump({"w": _Boom()}, f)
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(run)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(_Boom(), f)
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_model(tmp_path / "evil.pt")
    assert not _Boom.marker.exists()


def test_pt_state_dicts_only_behind_the_opt_in_and_only_with_weights_only(tmp_path):
    _Boom.marker = tmp_path / "pwned"
    m = _model()
    save_model(m, tmp_path / "w.safetensors")  # w.json: the architecture the .pt must match
    torch.save(m.state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_model(tmp_path / "w.pt")  # no opt-in: refused
    loaded = load_model(tmp_path / "w.pt", allow_pickle=True)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), loaded.state_dict().values()))
    # with the opt-in, a malicious pickle is still never run: torch.load(weights_only=True) refuses it
    with open(tmp_path / "w.pt", "wb") as f:
        pickle.dump({"w": _Boom()}, f)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_model(tmp_path / "w.pt", allow_pickle=True)
    assert not _Boom.marker.exists()
    # a pickled full model (not a flat state dict of tensors) is refused too
    torch.save({"model": {"nested": torch.zeros(1)}}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="flat state dict"):
        load_model(tmp_path / "w.pt", allow_pickle=True)


def test_mismatched_or_malformed_files_are_rejected(tmp_path):
    run = tmp_path / "run"
    save_model(_model(), run)
    meta = json.loads((run / "model.json").read_text())
    # architecture that does not match the weights
    meta2 = dict(meta, architecture={**meta["architecture"], "hidden": 64})
    (run / "model.json").write_text(json.dumps(meta2))
    with pytest.raises(CheckpointError, match="shape"):
        load_model(run)
    # unknown architecture
    (run / "model.json").write_text(json.dumps(dict(meta, architecture={"name": "evilnet"})))
    with pytest.raises(CheckpointError, match="evilnet"):
        load_model(run)
    # weights path escaping the run directory
    (run / "model.json").write_text(json.dumps(dict(meta, weights="../../etc/passwd")))
    with pytest.raises(CheckpointError, match="escapes"):
        load_model(run)
    # truncated weights
    (run / "model.json").write_text(json.dumps(meta))
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_model(run)
    (run / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(run)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nowhere")


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    run = tmp_path / "run"
    m = _model()
    save_model(m, run)
    before = (run / "model.safetensors").read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space") as err:
        save_model(_model(hidden=64), run)
    assert f"cannot write {run / 'model.safetensors'}" in str(err.value)  # the destination, not the temp file
    assert (run / "model.safetensors").read_bytes() == before
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_training_state_round_trip(tmp_path):
    m = _model()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    m(torch.rand(4, 1, 28, 28)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10)
    sched.step()
    state = {"epoch": 3, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "h": [{"a": 1.5}]}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back["epoch"] == 3 and back["h"] == [{"a": 1.5}]
    assert torch.equal(back["rng"], state["rng"])
    opt2 = torch.optim.Adam(_model().parameters(), 1e-3)
    opt2.load_state_dict(back["optimizer"])
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        for name, v in s1["state"][k].items():
            assert torch.equal(v, s2["state"][k][name])
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=0.01, total_steps=10)
    sched2.load_state_dict(back["scheduler"])
    assert sched2.state_dict() == sched.state_dict()


def test_stale_temp_files_are_removed_and_committed_files_kept(tmp_path):
    from robustlab.storage import atomic_write_json, remove_stale_temp_files

    atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    stale = [tmp_path / ".metrics.json.k2j3.tmp", tmp_path / ".tmpab12cd"]  # ours, safetensors' writer
    for p in stale:
        p.write_bytes(b"half a file")
    keep = [tmp_path / "metrics.json", tmp_path / ".hidden", tmp_path / "notes.tmp"]  # not temp files of a write
    for p in keep[1:]:
        p.write_text("user file")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert all(not p.exists() for p in stale) and all(p.exists() for p in keep)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1}


def test_safetensors_files_are_written_by_the_one_atomic_write(tmp_path, monkeypatch):
    """Weights, training state and JSON all go through atomic_write_bytes: same mode as a plain
    open() under the umask, content readable back, and no other writer involved."""
    from robustlab.storage import atomic_save_safetensors, read_safetensors

    written = []
    real = atomic.atomic_write_bytes
    monkeypatch.setattr(atomic, "atomic_write_bytes", lambda path, data: (written.append(Path(path).name), real(path, data)))
    old = os.umask(0o027)
    try:
        atomic_save_safetensors({"a": torch.arange(6.0).view(2, 3).t()}, tmp_path / "t.safetensors", metadata={"k": "v"})
        save_state(tmp_path / "s.safetensors", {"x": torch.ones(2)})
    finally:
        os.umask(old)
    assert written == ["t.safetensors", "s.safetensors"]
    assert (tmp_path / "t.safetensors").stat().st_mode & 0o777 == 0o640
    assert torch.equal(read_safetensors(tmp_path / "t.safetensors")["a"], torch.arange(6.0).view(2, 3).t())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors", "t.safetensors"]  # no temp file left


def test_json_records_are_checked_for_format_and_version(tmp_path):
    from robustlab.storage import read_json_record, read_model_metadata

    run = tmp_path / "run"
    save_model(_model(), run)
    meta = json.loads((run / "model.json").read_text())
    assert read_json_record(run / "model.json", "robustlab-model", 1, "model") == meta
    with pytest.raises(CheckpointError, match="not a robustlab detector record"):
        read_json_record(run / "model.json", "robustlab-detector", 1, "detector")
    with pytest.raises(CheckpointError, match="detector metadata not found"):
        read_json_record(tmp_path / "none.json", "robustlab-detector", 1, "detector")
    for bad in (2, 0, "1", True, None):
        (run / "model.json").write_text(json.dumps(dict(meta, format_version=bad)))
        with pytest.raises(CheckpointError, match="format_version"):
            read_model_metadata(run)
    (run / "model.json").write_text(json.dumps([meta]))
    with pytest.raises(CheckpointError, match="not a robustlab model record"):
        load_model(run)


def test_a_safetensors_file_whose_header_length_starts_with_0x80_loads(tmp_path):
    """The first 8 bytes of a safetensors file are its header length (little endian): a length of
    0x..80 starts the file with the pickle protocol byte. Such a file is valid and must load (it
    was refused as a pickle when the first byte was checked before trying to load)."""
    from safetensors.torch import save_file

    from robustlab.storage import read_safetensors

    for pad in range(300):  # some metadata length gives a header length with low byte 0x80
        path = tmp_path / "w.safetensors"
        save_file({"w": torch.zeros(2)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no header length with low byte 0x80 in 300 tries")
    assert torch.equal(read_safetensors(path)["w"], torch.zeros(2))
