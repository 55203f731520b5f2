"""Noisy Student: input noise, pseudo-labels, the teacher -> student pipeline, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from robustlab.models import build_model
from robustlab.storage import load_model
from robustlab.training import TrainConfig
from robustlab.training.noisy_student import (
    NoisyObjective,
    NoisyStudentConfig,
    noisy_student,
    pseudo_label,
    random_flip,
    random_shift,
)

SMALL = {"channels": (8, 16), "hidden": 32}


def test_random_shift_is_a_translation_with_zero_fill():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 2, 6, 5) + 1.0  # no zeros inside the image
    out = random_shift(x, 2, g)
    assert out.shape == x.shape
    for i in range(len(x)):
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.zeros_like(x[i])
                src = x[i][:, max(dy, 0) : 6 + min(dy, 0), max(dx, 0) : 5 + min(dx, 0)]
                ref[:, max(-dy, 0) : 6 + min(-dy, 0), max(-dx, 0) : 5 + min(-dx, 0)] = src
                found |= torch.equal(out[i], ref)
        assert found
    assert torch.equal(random_shift(x, 0), x)
    flipped = random_flip(x, 1.0)
    assert torch.equal(flipped, x.flip(-1)) and torch.equal(random_flip(x, 0.0), x)


def test_objective_noise_and_soft_labels():
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1, input_size=8, **SMALL)
    x = torch.rand(16, 1, 8, 8)
    obj = NoisyObjective(noise_std=0.0, max_shift=0, flip_prob=0.0)
    assert torch.equal(obj.augment(x), x)
    y = torch.randint(0, 10, (16,))
    loss_hard, logs = obj(model, x, y)
    assert torch.allclose(loss_hard, F.cross_entropy(model(x), y))
    soft = torch.softmax(torch.randn(16, 10), 1)
    loss_soft, _ = obj(model, x, soft)
    assert torch.allclose(loss_soft, -(soft * F.log_softmax(model(x), 1)).sum(1).mean(), atol=1e-6)
    assert torch.allclose(obj(model, x, F.one_hot(y, 10).float())[0], loss_hard, atol=1e-6)
    noisy = NoisyObjective(noise_std=0.2, max_shift=1).augment(x)
    assert noisy.shape == x.shape and not torch.equal(noisy, x) and noisy.min() >= 0 and noisy.max() <= 1
    with pytest.raises(ValueError):
        NoisyObjective(noise_std=-1)


def test_pseudo_labels_soft_and_hard(digits_model, digits):
    x = digits[2][:50]
    digits_model.train()
    soft = pseudo_label(digits_model, x, soft=True)
    assert digits_model.training  # mode restored
    digits_model.eval()
    assert torch.allclose(soft.sum(1), torch.ones(50), atol=1e-5)
    hard = pseudo_label(digits_model, x, soft=False)
    with torch.no_grad():
        assert torch.equal(hard, digits_model(x).argmax(1))
    assert torch.equal(soft.argmax(1), hard)
    sharp = pseudo_label(digits_model, x, temperature=0.5)
    assert (sharp.amax(1) >= soft.amax(1) - 1e-6).all()


def test_student_options_add_noise_and_must_not_shrink():
    cfg = NoisyStudentConfig(model="resnet18", teacher_options={"width": 4})
    assert cfg.student_model_options() == {"width": 4, "stochastic_depth": 0.2}
    cfg = NoisyStudentConfig(teacher_options=SMALL, student_options={"hidden": 64})
    assert cfg.student_model_options() == {**SMALL, "hidden": 64, "dropout": 0.5}
    cfg = NoisyStudentConfig(teacher_options=SMALL, student_options={"dropout": 0.0})
    assert cfg.student_model_options()["dropout"] == 0.0
    with pytest.raises(ValueError, match="iterations"):
        NoisyStudentConfig(iterations=0)


def test_noisy_student_end_to_end_on_digits(digits, tmp_path):
    xtr, ytr, xte, yte = digits
    cfg = NoisyStudentConfig(teacher_options=SMALL, student_options={"hidden": 48}, iterations=2, eval_n=100,
                             max_shift=1, noise_std=0.05, eval_steps=5)
    tc = TrainConfig(epochs=8, batch_size=64, lr=3e-3, progress=False)
    res = noisy_student((xtr[:400], ytr[:400]), xtr[400:900], (xte[:200], yte[:200]), 10, cfg, tc, out_dir=tmp_path)
    teacher, s1, s2 = res.models
    # pseudo-labels of student k come from model k-1 (in eval mode, without noise)
    assert torch.allclose(res.pseudo_labels[0], pseudo_label(teacher, xtr[400:900]))
    assert torch.allclose(res.pseudo_labels[1], pseudo_label(s1, xtr[400:900]))
    assert not torch.allclose(res.pseudo_labels[0], res.pseudo_labels[1])
    assert [m["role"] for m in res.metrics] == ["teacher", "student_1", "student_2"]
    # each generation's numbers are what an independent evaluation of its model gives
    from robustlab import ThreatModel
    from robustlab.attacks import PGD
    from robustlab.training import accuracy
    from robustlab.training.loop import robust_accuracy_of

    for model, m in zip(res.models, res.metrics):
        assert m["clean_accuracy"] == accuracy(model, xte[:200], yte[:200])
        attack = PGD(ThreatModel(cfg.eval_norm, cfg.eval_eps), steps=5, seed=0, early_stop=True)
        assert m["pgd5_accuracy"] == robust_accuracy_of(attack, model, xte[:100], yte[:100])
        assert m["pgd5_accuracy"] <= accuracy(model, xte[:100], yte[:100])
    assert res.metrics[0]["clean_accuracy"] > 0.5
    assert res.metrics[1]["train_images"] == 900 and res.metrics[1]["parameters"] > res.metrics[0]["parameters"]
    # every generation is a run directory that load_model reads
    for name, model in zip(("teacher", "student_1", "student_2"), res.models):
        loaded = load_model(tmp_path / name)
        with torch.no_grad():
            assert torch.equal(loaded(xte[:8]), model.eval()(xte[:8]))
    arch = json.loads((tmp_path / "student_1" / "model.json").read_text())["architecture"]
    assert arch["dropout"] == 0.5 and arch["hidden"] == 48
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert len(summary["generations"]) == 3
    # a smaller student is refused
    small = NoisyStudentConfig(teacher_options=SMALL, student_options={"hidden": 8}, eval_steps=0)
    with pytest.raises(ValueError, match="equal or larger"):
        noisy_student((xtr[:64], ytr[:64]), xtr[64:128], (xte[:32], yte[:32]), 10, small,
                      TrainConfig(epochs=1, progress=False))


def test_hard_labels_and_confidence_filter(digits):
    xtr, ytr, xte, yte = digits
    cfg = NoisyStudentConfig(teacher_options=SMALL, soft_labels=False, min_confidence=0.5, eval_steps=0)
    res = noisy_student((xtr[:300], ytr[:300]), xtr[300:600], (xte[:50], yte[:50]), 10, cfg,
                        TrainConfig(epochs=2, batch_size=64, lr=3e-3, progress=False))
    pl, keep = res.pseudo_labels[0], res.kept[0]
    assert pl.dtype == torch.int64 and torch.equal(pl, pseudo_label(res.models[0], xtr[300:600], soft=False))
    conf = pseudo_label(res.models[0], xtr[300:600]).amax(1)
    assert torch.equal(keep, conf >= 0.5)
    assert res.metrics[1]["pseudo_labelled"] == int(keep.sum())


def test_cli_noisy_student(tmp_path):
    from click.testing import CliRunner

    from robustlab.cli import main

    out = tmp_path / "ns"
    r = CliRunner().invoke(main, ["noisy-student", "--dataset", "digits", "--labelled", "300", "--unlabelled", "400",
                                  "--iterations", "1", "--epochs", "2", "--teacher-option", "channels=[8,16]",
                                  "--teacher-option", "hidden=32", "--eval-n", "50", "--pgd-steps", "5",
                                  "--device", "cpu", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "teacher" in r.output and "student_1" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["labelled"] == 300 and [g["role"] for g in m["generations"]] == ["teacher", "student_1"]
    # the agreement is the teacher's hard pseudo-labels on the unlabelled split against its true
    # labels (the split: a permutation seeded with the training seed, 0 by default)
    from robustlab.data import load_dataset

    x_all, y_all, _ = load_dataset("digits", "train")
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))
    ui = order[300:700]
    teacher = load_model(out / "teacher")
    hard = pseudo_label(teacher, x_all[ui]).argmax(1)
    expected = float((hard == y_all[ui]).float().mean())
    assert m["generations"][1]["pseudo_label_agreement_with_truth"] == pytest.approx(expected, abs=1e-6)
    # robustlab evaluate reads a generation like any run
    e = CliRunner().invoke(main, ["evaluate", str(out / "student_1"), "--n", "40", "--device", "cpu", "--json"])
    assert e.exit_code == 0, e.output
    bad = CliRunner().invoke(main, ["noisy-student", "--dataset", "digits", "--labelled", "2000", "--unlabelled", "10",
                                    "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "labelled" in bad.output
