"""The generative commands: a GAN run end to end on digits, resume, evaluate, arithmetic, and the
one-line error style (exit code 2)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from robustlab.cli.generative import advgan, cyclegan, gan
from robustlab.storage.layout import HISTORY_FILE, METRICS_FILE


def test_gan_train_resume_evaluate_arithmetic_report(tmp_path, tiny_classifier):
    from robustlab.storage import save_model

    clf = tmp_path / "clf"
    save_model(tiny_classifier, clf)
    run = tmp_path / "gan"
    r = CliRunner()
    args = ["train", "--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--latent-dim", "8", "--width", "4",
            "--train-limit", "256", "--eval-samples", "64", "--classifier", str(clf), "--quiet", "--out", str(run)]
    res = r.invoke(gan, args)
    assert res.exit_code == 0, res.output
    assert "inception score" in res.output
    res = r.invoke(gan, ["train", "--resume", str(run), "--quiet"])  # already finished: nothing to do, same files
    assert res.exit_code == 0, res.output
    assert len((run / HISTORY_FILE).read_text().splitlines()) == 1
    res = r.invoke(gan, ["evaluate", str(run), "--classifier", str(clf), "--n", "100", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert 1 <= out["inception_score"] <= 10 and out["real_inception_score"] > 1 and len(out["class_histogram"]) == 10
    res = r.invoke(gan, ["arithmetic", str(run), "--a", "0,1", "--b", "2", "--c", "3,4,5"])
    assert res.exit_code == 0, res.output
    assert (run / "artifacts" / "arithmetic.safetensors").is_file()
    metrics = json.loads((run / METRICS_FILE).read_text())
    assert metrics["kind"] == "gan" and "evaluation" in metrics

    from robustlab.report.data import read_run
    from robustlab.report.generative import generative_section

    drawn = []

    def figure(name, plot, *a, alt, **kw):
        plot(*a, tmp_path / f"{name}.png", **kw)
        drawn.append(name)
        return f"<img alt='{alt}'>"

    html = generative_section([read_run(run)], ["01-gan"], figure)
    assert "Generative models" in html and "could not" not in html
    assert {"01-gan-gan-curves", "01-gan-gan-samples", "01-gan-gan-arith"} <= set(drawn)


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    r = CliRunner()
    res = r.invoke(gan, ["train", "--dataset", "digits", "--loss", "wasserstein", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert res.output.strip().startswith("error: unknown GAN loss 'wasserstein'") and len(res.output.strip().splitlines()) == 1
    res = r.invoke(cyclegan, ["train", "--dataset", "digits", "--domain-a", "0", "--domain-b", "0", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "different classes" in res.output
    res = r.invoke(advgan, ["train", "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "--target" in res.output
