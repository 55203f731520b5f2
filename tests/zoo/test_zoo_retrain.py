"""Slow: every shipped zoo model is retrained with the command on its card and evaluated as the card
was, and the numbers must come back within a stated tolerance. (Skipped while the package ships no
model.)

Run it with (about the card's training time per model, on the CPU the card names)::

    .venv/bin/python -m pytest tests/zoo/test_zoo_retrain.py -m slow -q

Tolerances: a retrained model differs from the shipped one by the run-to-run spread of training
(multi-threaded CPU kernels are not bit-reproducible across machines) and by sampling: the clean
accuracy is over the whole test set (10,000 images: standard error 0.3 points), the robust one over
``robust_n`` images (1,000: 1.3 points at 80%). Allowed: 1.5 points clean, 3 points robust.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from robustlab.pretrained import PACKAGE_ZOO, ZOO_ENV, entry_names, read_card

CLEAN_TOLERANCE = 0.015
ROBUST_TOLERANCE = 0.03
SHIPPED = entry_names(PACKAGE_ZOO)


def _robustlab(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "robustlab", *args], capture_output=True, text=True)
    assert r.returncode == 0, f"robustlab {' '.join(args)} failed:\n{r.stderr[-2000:]}"


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
@pytest.mark.parametrize("name", SHIPPED)
def test_retraining_reproduces_the_card(name, tmp_path, monkeypatch):
    monkeypatch.delenv(ZOO_ENV, raising=False)
    card = read_card(name)
    run, ev = tmp_path / "run", tmp_path / "eval"
    words = shlex.split(card["training_command"])
    assert words[:2] == ["robustlab", "train"] and "--out" in words
    words[words.index("--out") + 1] = str(run)
    _robustlab(*words[1:], "--quiet")
    suite = str(card["suite"])
    how = ["--attacks", suite.split(": ", 1)[1]] if suite.startswith("attacks: ") else ["--suite", suite]
    _robustlab("evaluate", str(run), *how, "--n", str(card["robust_n"]), "--eps", str(card["threat"]["eps"]),
               "--norm", str(card["threat"]["norm"]), "--quiet", "--out", str(ev))
    clean = json.loads((run / "metrics.json").read_text())["clean_accuracy"]
    robust = json.loads((ev / "evaluation.json").read_text())["robust_accuracy"]
    assert abs(clean - card["clean_accuracy"]) <= CLEAN_TOLERANCE, (clean, card["clean_accuracy"])
    assert abs(robust - card["robust_accuracy"]) <= ROBUST_TOLERANCE, (robust, card["robust_accuracy"])
