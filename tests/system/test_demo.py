"""The embedded default job, shrunk (2,000 training images, 1 epoch each, 64 attacked images):
every step runs, every result the report needs is recorded, and a second run reuses the training."""

import json

import pytest

from robustlab.demo import run_demo


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, epochs=1, robust_epochs=1, device="cpu", progress=False, train_limit=2000, n_eval=64)
    return out, report


def test_demo_writes_both_runs_and_a_report(demo_out):
    out, report = demo_out
    assert report == out / "report" / "report.html" and report.is_file()
    doc = report.read_text()
    for heading in ("Summary", "Comparison", "Adversarial and natural robustness", "Gradient-masking checks",
                    "Adversarial examples", "Loss surface"):
        assert heading in doc, heading
    for name in ("standard", "fast-at"):
        m = json.loads((out / name / "metrics.json").read_text())
        assert m["epochs"] == 1 and m["evaluated_samples"] == 64
        assert {"noise", "fgsm", "pgd", "mim", "apgd-ce"} <= set(m["per_attack"])
        assert m["robust_accuracy"] <= min(m["per_attack"].values())  # the worst case per sample
        assert [c["eps"] for c in m["eps_curve"]] == [0.02, 0.05, 0.1, 0.15, 0.2]
        assert [c["steps"] for c in m["iterations_curve"]] == [5, 10, 20, 50]
        assert len(m["checks"]) == 8 and len(m["corruptions"]) == 6
    cfg = json.loads((out / "fast-at" / "config.json").read_text())["spec"]
    assert cfg["defense"] == "fast-at" and cfg["train_limit"] == 2000


def test_demo_reuses_finished_runs_and_refuses_other_settings(demo_out, capsys):
    out, _ = demo_out
    before = (out / "standard" / "model.safetensors").read_bytes()
    run_demo(out, epochs=1, robust_epochs=1, device="cpu", progress=False, train_limit=2000, n_eval=20)
    assert "reusing finished run" in capsys.readouterr().out
    assert (out / "standard" / "model.safetensors").read_bytes() == before
    with pytest.raises(ValueError, match="other settings \\(train_limit\\)"):
        run_demo(out, epochs=1, robust_epochs=1, device="cpu", progress=False, train_limit=3000, n_eval=20)
    with pytest.raises(ValueError, match="n_eval"):
        run_demo(out, n_eval=0)
