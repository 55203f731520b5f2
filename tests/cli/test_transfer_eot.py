"""``evaluate --surrogate`` repeated (the all-or-nothing transfer protocol), ``--eot N`` on
``evaluate`` and ``attack``, and single-use options given twice. Tiny CNNs on scikit-learn's 8x8
digits, trained here in about a second each and driven through the CLI in process."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from robustlab.cli import main

N = 300  # test images: the transfer attacks on three tiny CNNs run in well under a second

# A randomised model: every forward pass (eval mode too) jitters each pixel by a * s * sin(w * x),
# s ~ N(0, 1) fresh per pass. The values move by about `a` (predictions barely change), the input
# gradient by about a * w per pixel: one draw's gradient is mostly noise, the mean of 10 much less.
JITTER = textwrap.dedent('''
    import torch
    from torch import nn


    class JitterNet(nn.Module):
        def __init__(self, a: float = 0.02, w: float = 150.0, seed: int = 0):
            super().__init__()
            self.a, self.w = a, w
            self.gen = torch.Generator().manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(16 * 64, 64), nn.ReLU(), nn.Linear(64, 10))

        def forward(self, x):
            s = torch.randn(x.shape, generator=self.gen).to(x)
            return self.net(x + self.a * s * torch.sin(self.w * x))
''')


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args) -> dict:
    """Run a command that prints --json; its document."""
    res = cli(*args, "--quiet", "--json", "--device", "cpu")
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads(res.stdout)


def one_error(res) -> str:
    """The result ended with exit code 2 and exactly one 'error: ...' line on stderr."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("robustlab: importing")]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def _fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> torch.nn.Module:
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    """A target and two surrogate runs (different seeds and widths) trained on digits."""
    from robustlab.models import build_model
    from robustlab.storage import save_model

    d = tmp_path_factory.mktemp("transfer")
    xtr, ytr, _, _ = digits
    for name, seed, channels in (("target", 0, (16, 32)), ("a", 1, (8, 16)), ("b", 2, (8, 16))):
        torch.manual_seed(seed)
        model = build_model("small-cnn", 10, 1, input_size=8, channels=channels, hidden=32)
        save_model(_fit(model, xtr, ytr, epochs=6), d / name)
    return d


def transfer(runs, out, *surrogates) -> dict:
    args = ["evaluate", runs / "target", "--dataset", "digits", "--n", N, "--attacks", "transfer", "--eps", 0.2,
            "--out", out]
    for s in surrogates:
        args += ["--surrogate", s]
    return ok(*args)


def robust(doc: dict, key: str = "robust") -> torch.Tensor:
    return torch.tensor(doc["per_sample"][key], dtype=torch.bool)


def test_two_surrogates_run_two_transfer_attacks_and_keep_the_per_sample_worst_case(runs, tmp_path):
    a, b = runs / "a", runs / "b"
    both = transfer(runs, tmp_path / "ab", a, b)
    assert list(both["per_attack"]) == ["transfer-1", "transfer-2"]
    assert both["surrogates"] == {"transfer-1": str(a.resolve()), "transfer-2": str(b.resolve())}
    assert set(both["attacks"]) == {"transfer-1", "transfer-2"}
    # Independently: each surrogate alone, its own evaluation; the worst case is their per-sample AND.
    only_a, only_b = transfer(runs, tmp_path / "a", a), transfer(runs, tmp_path / "b", b)
    assert list(only_a["per_attack"]) == ["transfer"] and only_a["surrogates"] == {"transfer": str(a.resolve())}
    expected = robust(only_a) & robust(only_b)
    assert torch.equal(robust(both), expected)
    assert both["counts"]["robust"] == int(expected.sum())
    # ... and from the document's own per-attack lists.
    clean = robust(both, "clean_correct")
    assert torch.equal(robust(both), clean & robust(both, "robust_transfer-1") & robust(both, "robust_transfer-2"))
    # The surrogates break different samples, so all-or-nothing is strictly below either one alone.
    assert int(expected.sum()) < min(int(robust(only_a).sum()), int(robust(only_b).sum()))
    # The order of the surrogates renames the attacks but leaves every sample's verdict as it was.
    swapped = transfer(runs, tmp_path / "ba", b, a)
    assert torch.equal(robust(swapped), robust(both))
    assert swapped["surrogates"]["transfer-1"] == str(b.resolve())


@pytest.mark.parametrize(
    "args,message",
    [
        (["evaluate", "{run}", "--attacks", "pgd", "--eps", "0.1", "--eps", "0.3"], "--eps given more than once"),
        (["evaluate", "{run}", "--attacks", "transfer", "--surrogate", "{a}", "--surrogate", "{a}/"],
         "--surrogate {a}/ is given twice"),
        (["evaluate", "{run}", "--attacks", "pgd", "--surrogate", "{a}"], "--surrogate is given but no attack uses it"),
        (["evaluate", "{run}", "--suite", "quick", "--surrogate", "{a}"], "--surrogate is given but no attack uses it"),
        (["evaluate", "{run}", "--attacks", "transfer"], "the transfer attack needs --surrogate"),
        (["evaluate", "{run}", "--attacks", "pgd", "--out", "{tmp}/x", "--out", "{tmp}/y"], "--out given more than once"),
        (["evaluate", "{run}", "--attacks", "pgd,square", "--eot", "5"], "the square attack has no EOT"),
        (["evaluate", "{run}", "--eot", "5"], "--eot is given but no attack runs"),
        (["evaluate", "{run}", "--attacks", "pgd", "--eot", "2", "--eot", "3"], "--eot given more than once"),
        (["attack", "{run}", "--n", "5", "--n", "6", "--out", "{tmp}/a"], "--n given more than once"),
        (["attack", "{run}", "--attack", "square", "--eot", "3", "--out", "{tmp}/a"], "the square attack has no EOT"),
        (["attack", "{run}", "--eot", "3", "--attack-option", "eot=2", "--out", "{tmp}/a"], "not both"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, runs, tmp_path):
    fill = {"run": runs / "target", "a": runs / "a", "tmp": tmp_path}
    line = one_error(cli(*[a.format(**fill) for a in args]))
    assert message.format(**fill) in line, line
    assert not (tmp_path / "x").exists() and not (tmp_path / "a").exists()  # refused before any work


@pytest.fixture(scope="module")
def jitter(tmp_path_factory, digits):
    """JitterNet's code, its weights (trained on digits) and the first N digits test images (.npz)."""
    import importlib.util

    d = tmp_path_factory.mktemp("eot")
    (d / "jitter.py").write_text(JITTER)
    spec = importlib.util.spec_from_file_location("jitter_for_test", d / "jitter.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    xtr, ytr, xte, yte = digits
    torch.manual_seed(0)
    save_file(_fit(module.JitterNet(), xtr, ytr, epochs=8).state_dict(), str(d / "w.safetensors"))
    np.savez(d / "d.npz", x=(xte[:N, 0].numpy() * 255).round().astype(np.uint8), y=yte[:N].numpy())
    return d


def jitter_args(d) -> list:
    return ["--model", f"{d / 'jitter.py'}:JitterNet", "--weights", d / "w.safetensors", "--data", d / "d.npz"]


def test_eot_is_recorded_and_averaging_breaks_more_of_a_randomised_model(jitter, tmp_path):
    docs = {eot: ok("evaluate", *jitter_args(jitter), "--attacks", "pgd", "--steps", 10, "--eps", 0.1, "--eot", eot,
                    "--out", tmp_path / f"eot{eot}")
            for eot in (1, 10)}
    for eot, doc in docs.items():
        assert doc["eot"] == eot and json.loads((tmp_path / f"eot{eot}" / "evaluation.json").read_text())["eot"] == eot
    assert "eot=10" in docs[10]["attacks"]["pgd"]["settings"] and "eot" not in docs[1]["attacks"]["pgd"]["settings"]
    assert docs[1]["clean_accuracy"] > 0.9
    # Measured: about 0.72-0.81 with one draw, 0.55-0.67 with ten (three training seeds, two jitter sizes).
    assert docs[10]["robust_accuracy"] <= docs[1]["robust_accuracy"] - 0.05, (docs[1]["per_attack"], docs[10]["per_attack"])


def test_eot_reaches_every_gradient_attack_of_a_suite_and_the_attack_command(jitter, tmp_path):
    doc = ok("evaluate", *jitter_args(jitter), "--suite", "quick", "--n", 50, "--eot", 3, "--out", tmp_path / "q")
    assert doc["eot"] == 3 and all("eot=3" in a["settings"] for a in doc["attacks"].values())
    res = cli("attack", *jitter_args(jitter), "--attack", "fgsm", "--n", 20, "--eot", 4, "--out", tmp_path / "adv",
              "--device", "cpu")
    assert res.exit_code == 0, (res.output, res.exception)
    summary = json.loads((tmp_path / "adv" / "summary.json").read_text())
    assert summary["eot"] == 4 and summary["options"]["eot"] == 4 and "eot=4" in summary["attack"]


def test_eot_evaluation_also_reports_the_one_draw_robust_accuracy(jitter, tmp_path):
    """With EOT the verdicts are the averaged predictions'; the document adds the randomised model's
    accuracy as deployed (one draw per query) on the same examples, per attack and per sample."""
    out = tmp_path / "e"
    doc = ok("evaluate", *jitter_args(jitter), "--attacks", "pgd", "--steps", 5, "--n", 60, "--eps", 0.1, "--eot", 5,
             "--out", out)
    full = json.loads((out / "evaluation.json").read_text())
    per = full["per_sample"]["expected_robust"]
    assert len(per) == 60 and all(0.0 <= v <= 1.0 for v in per)
    assert all(v == 0.0 for v, c in zip(per, full["per_sample"]["clean_correct"]) if not c)
    assert doc["expected_robust_accuracy"] == pytest.approx(sum(per) / 60, abs=1e-3)
    assert "expected_accuracy" in doc["attacks"]["pgd"]
    plain = ok("evaluate", *jitter_args(jitter), "--attacks", "pgd", "--steps", 5, "--n", 60, "--eps", 0.1,
               "--out", tmp_path / "p")
    assert "expected_robust_accuracy" not in plain and "expected_accuracy" not in plain["attacks"]["pgd"]
    text = cli("evaluate", *jitter_args(jitter), "--attacks", "pgd", "--steps", 2, "--n", 20, "--eot", 2, "--quiet",
               "--device", "cpu", "--out", tmp_path / "t")
    assert text.exit_code == 0, (text.output, text.exception)
    assert "one draw/query" in text.stdout
