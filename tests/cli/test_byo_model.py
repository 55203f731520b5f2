"""Bring your own model and data: ``--model ENTRY`` (file.py:Name, module:Name, TorchScript,
torch.export), ``--weights``, ``--mean/--std``, ``--data`` (PNG folder, .npz, .safetensors),
``evaluate --out DIR [--save-adversarial]``, reports on evaluation directories, ``train --model``
with ``--init-from`` / ``--freeze``, and ``save_model(..., entry=...)``. Every bad input ends with
one ``error:`` line and exit code 2. Tiny CNN on scikit-learn's 8x8 digits, in process."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from robustlab.cli import main

NET = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, hidden: int = 32):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, hidden), nn.ReLU(), nn.Linear(hidden, 10))

        def forward(self, x):
            return self.head(self.features(x))
''')
N = 90


def run(*args, ok: bool = True):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, (res.output, res.exception)
    return res


def one_error(res) -> str:
    """The result ended with exit code 2 and exactly one 'error: ...' line on stderr."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("robustlab: importing")]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory, digits):
    """A user's folder: net.py, its weights (safetensors, .pt), TorchScript and .pt2 copies, and the
    first N digits test images as PNG class folders, .npz and .safetensors (the same pixels)."""
    d = tmp_path_factory.mktemp("byo")
    (d / "net.py").write_text(NET)
    sys.path.insert(0, str(d))
    try:
        import importlib

        net_module = importlib.import_module("net")
    finally:
        sys.path.remove(str(d))
    xtr, ytr, xte, yte = digits
    torch.manual_seed(0)
    model = net_module.Net()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(10):
        for i in range(0, len(xtr), 64):
            loss = torch.nn.functional.cross_entropy(model(xtr[i : i + 64]), ytr[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    save_file(model.state_dict(), str(d / "net.safetensors"))
    torch.save(model.state_dict(), d / "net.pt")
    torch.jit.save(torch.jit.script(model), str(d / "net.ts.pt"))
    x8 = (xte[:N, 0].numpy() * 255).round().astype(np.uint8)
    y = yte[:N].numpy()
    for i in range(N):
        (d / "pngs" / str(y[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x8[i]).save(d / "pngs" / str(y[i]) / f"{i:03d}.png")
    np.savez(d / "d.npz", x=x8, y=y)
    save_file({"x": torch.from_numpy(x8[:, None] / np.float32(255)), "y": torch.from_numpy(y)}, str(d / "d.safetensors"))
    try:
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(model, (xte[:4],), dynamic_shapes={"x": {0: batch}})
        torch.export.save(program, str(d / "net.pt2"))
    except Exception:  # torch.export unavailable here: that route's test is skipped
        pass
    return d


def evaluation(out) -> dict:
    return json.loads((out / "evaluation.json").read_text())


def test_file_entry_png_folder_save_adversarial_reproduces_the_robust_accuracy(home, tmp_path):
    out = tmp_path / "ev"
    res = run("evaluate", "--model", home / "net.py:Net", "--weights", home / "net.safetensors", "--data", home / "pngs",
              "--attacks", "fgsm,pgd", "--steps", "10", "--eps", "0.1", "--out", out, "--save-adversarial", "--quiet")
    assert "importing user code" in res.stderr and str(home / "net.py") in res.stderr
    doc = evaluation(out)
    assert doc["kind"] == "robustlab-evaluation" and doc["n"] == N and doc["threat"]["eps"] == 0.1
    assert set(doc["per_attack"]) == {"fgsm", "pgd"} and "APGD" not in doc["attacks"]["pgd"]["settings"]
    assert doc["model"]["entry"].endswith("net.py:Net") and len(doc["model"]["weights_sha256"]) == 64
    assert doc["data"]["kind"] == "folder" and doc["data"]["n"] == N and len(doc["data"]["sha256"]) == 64
    assert doc["robust_accuracy"] == round(doc["counts"]["robust"] / N, 4) < doc["clean_accuracy"]
    t = load_file(str(out / "adversarial.safetensors"))
    sys.path.insert(0, str(home))
    from net import Net

    sys.path.remove(str(home))
    model = Net()
    model.load_state_dict(load_file(str(home / "net.safetensors")))
    with torch.no_grad():
        pred = model.eval()(t["x_adv"]).argmax(1)
    assert int((pred == t["y"]).sum()) == doc["counts"]["robust"] == doc["adversarial"]["robust_count_of_x_adv"]
    assert torch.equal(pred, t["pred_adv"])
    assert (t["x_adv"] - t["x"]).abs().max() <= 0.1 + 1e-6 and t["x_adv"].min() >= 0 and t["x_adv"].max() <= 1
    assert (out / "adversarial.png").read_bytes()[:4] == b"\x89PNG"
    # --json prints the same document
    res = run("evaluate", "--model", home / "net.py:Net", "--weights", home / "net.safetensors", "--data", home / "pngs",
              "--attacks", "fgsm,pgd", "--steps", "10", "--out", tmp_path / "ev2", "--json", "--quiet")
    printed = json.loads(res.stdout)
    assert printed["robust_accuracy"] == doc["robust_accuracy"] and printed == evaluation(tmp_path / "ev2")
    # a report renders the evaluation directory (its examples from adversarial.safetensors)
    res = run("report", out, "--out", tmp_path / "rep")
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "net.py:Net" in html and "(evaluation directory)" in html and "adversarial examples, ev" in html
    assert (tmp_path / "rep" / "01-ev-examples.png").is_file()


@pytest.mark.parametrize("route", ["torchscript", "pt2", "module", "pt-weights"])
def test_every_model_route_gives_the_same_numbers(home, tmp_path, route, monkeypatch):
    base = ["--data", home / "d.npz", "--attacks", "fgsm", "--quiet", "--json"]
    ref = json.loads(run("evaluate", "--model", home / "net.py:Net", "--weights", home / "net.safetensors", *base,
                         "--out", tmp_path / "ref").stdout)
    if route == "torchscript":
        args = ["--model", home / "net.ts.pt"]
    elif route == "pt2":
        if not (home / "net.pt2").is_file():
            pytest.skip("torch.export does not work here")
        args = ["--model", home / "net.pt2"]
    elif route == "module":
        monkeypatch.syspath_prepend(str(home))
        args = ["--model", "net:Net", "--weights", home / "net.safetensors", "--model-kwargs", '{"hidden": 32}']
    else:
        args = ["--model", home / "net.py:Net", "--weights", home / "net.pt"]
    doc = json.loads(run("evaluate", *args, *base, "--out", tmp_path / route).stdout)
    assert (doc["clean_accuracy"], doc["robust_accuracy"]) == (ref["clean_accuracy"], ref["robust_accuracy"])
    assert doc["data"]["kind"] == "npz"


def test_npz_safetensors_and_png_data_are_the_same_images(home, tmp_path):
    got = []
    for data in ("pngs", "d.npz", "d.safetensors"):
        res = run("evaluate", "--model", home / "net.ts.pt", "--data", home / data, "--out", tmp_path / data, "--json")
        got.append(json.loads(res.stdout)["clean_accuracy"])
    assert got[0] == got[1] == got[2] > 0.8


def test_mean_std_wrap_the_model_in_normalize(home, tmp_path):
    from robustlab.models.entry import Normalized, load_entry

    m = load_entry(str(home / "net.py:Net"), weights=home / "net.safetensors", mean=[0.25], std=[0.5])
    assert isinstance(m, Normalized) and not m.training
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(m(x), m.model((x - 0.25) / 0.5))
    base = ["--model", home / "net.py:Net", "--weights", home / "net.safetensors", "--data", home / "d.npz", "--json"]
    plain = json.loads(run("evaluate", *base, "--out", tmp_path / "a").stdout)
    ident = json.loads(run("evaluate", *base, "--mean", "0", "--std", "1", "--out", tmp_path / "b").stdout)
    assert ident["clean_accuracy"] == plain["clean_accuracy"] and ident["model"]["mean"] == [0.0]


@pytest.mark.parametrize("case, match", [
    ("no-name", "names a Python file but no class or factory: use"),
    ("weights", "do not fit Net: 'head.1.weight' has shape"),
    ("not-a-model", "is not a model file: neither TorchScript"),
    ("broken-image", "bad.png: cannot read this image"),
    ("size", "does not take the images of"),
    ("channels", "expects 1-channel images"),
    ("no-data", "needs data: --data PATH"),
])
def test_bad_input_is_one_line_and_exit_2(home, tmp_path, case, match):
    model = ["--model", home / "net.py:Net", "--weights", home / "net.safetensors"]
    data = ["--data", home / "pngs"]
    if case == "no-name":
        model = ["--model", home / "net.py"]
    elif case == "weights":
        model += ["--model-kwargs", '{"hidden": 16}']
    elif case == "not-a-model":
        model = ["--model", home / "d.npz"]
    elif case == "broken-image":
        (tmp_path / "d" / "3").mkdir(parents=True)
        (tmp_path / "d" / "3" / "bad.png").write_bytes(b"\x89PNG broken")
        data = ["--data", tmp_path / "d"]
    elif case in ("size", "channels"):
        shape = (4, 16, 16) if case == "size" else (4, 8, 8, 3)
        np.savez(tmp_path / "o.npz", x=np.zeros(shape, np.uint8), y=np.zeros(4, np.int64))
        data = ["--data", tmp_path / "o.npz"]
    elif case == "no-data":
        data = []
    line = one_error(run("evaluate", *model, *data, "--attacks", "fgsm", "--out", tmp_path / "ev", ok=False))
    assert match in line, line
    assert not (tmp_path / "ev").exists()  # refused before any work


def test_train_entry_init_from_freeze_then_evaluate_run_replaces_metrics(home, tmp_path):
    import robustlab
    from robustlab.storage import CheckpointError

    r = tmp_path / "run"
    res = run("train", "--dataset", "digits", "--model", home / "net.py:Net", "--init-from", home / "net.safetensors",
              "--freeze", "features.*", "--epochs", "1", "--lr", "1e-3", "--monitor-n", "50", "--out", r, "--quiet")
    assert "importing user code" in res.stderr
    spec = json.loads((r / "config.json").read_text())["spec"]
    assert spec["freeze"] == ["features.*"] and spec["init_from"] == str(home / "net.safetensors")
    saved = load_file(str(r / "model.safetensors"))
    start = load_file(str(home / "net.safetensors"))
    assert torch.equal(saved["features.0.weight"], start["features.0.weight"])  # frozen
    assert not torch.equal(saved["head.1.weight"], start["head.1.weight"])  # fine-tuned
    # the run names user code: loading it needs the user's explicit trust
    with pytest.raises(CheckpointError, match="names user code .* trust_code=True"):
        robustlab.load_model(r)
    assert "--trust-code" in one_error(run("evaluate", r, "--attacks", "fgsm", ok=False))
    run("evaluate", r, "--attacks", "fgsm,pgd", "--steps", "5", "--corruptions", "--n", "60", "--trust-code", "--quiet")
    m = json.loads((r / "metrics.json").read_text())
    assert {"robust_accuracy", "per_attack", "corruptions"} <= set(m) and m["evaluated_samples"] == 60
    run("evaluate", r, "--n", "40", "--trust-code", "--quiet")  # clean only: nothing of the last evaluation stays
    m = json.loads((r / "metrics.json").read_text())
    assert m["evaluated_samples"] == 40 and not {"robust_accuracy", "per_attack", "corruptions", "eps"} & set(m)
    assert "train_seconds" in m and not (r / "evaluation.json").exists()


def test_save_model_with_an_entry_point_round_trips(home, tmp_path):
    import robustlab
    from robustlab.models.entry import load_entry

    model = load_entry(str(home / "net.py:Net"), {"hidden": 32}, home / "net.safetensors")
    robustlab.save_model(model, tmp_path / "a")  # load_entry records its entry point
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(ValueError, match="save it with its entry point"):
        robustlab.save_model(plain, tmp_path / "b")
    robustlab.save_model(model, tmp_path / "c", entry=f"{home / 'net.py'}:Net", kwargs={"hidden": 32})
    x = torch.rand(5, 1, 8, 8)
    for d in ("a", "c"):
        meta = json.loads((tmp_path / d / "model.json").read_text())["architecture"]
        assert meta["entry"].endswith("net.py:Net") and meta["kwargs"] == {"hidden": 32} and len(meta["code_sha256"]) == 64
        back = robustlab.load_model(tmp_path / d, trust_code=True)
        assert torch.equal(back(x), model(x))
