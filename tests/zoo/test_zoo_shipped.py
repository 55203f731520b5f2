"""Every model shipped in the package's zoo loads offline, has a complete card, and still gives the
card's clean accuracy on the first 500 test images. (Skipped while the package ships no model.)

Tolerances: the card's ``spot_check`` was measured on the same 500 images when the entry was
added, so the two may differ only by floating-point ties (2 images, 0.4 points); the card's
headline ``clean_accuracy`` is over the whole test set, and 500 images estimate it with a standard
error of about 1.5 points at 85%: 5 points (over 3 standard errors) is allowed.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

import robustlab
from robustlab.data import load_dataset
from robustlab.models.entry import sha256_file
from robustlab.pretrained import PACKAGE_ZOO, ZOO_ENV, entry_names, read_card
from robustlab.pretrained.cards import SPOT_N, check_card

ROOT = Path(__file__).resolve().parents[2]
SPOT_TOLERANCE = 2 / SPOT_N
HEADLINE_TOLERANCE = 0.05
SHIPPED = entry_names(PACKAGE_ZOO)


def test_every_file_of_the_zoo_folder_is_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "robustlab.pretrained"]
    files = [p.relative_to(PACKAGE_ZOO.parent).as_posix() for p in PACKAGE_ZOO.rglob("*") if p.is_file()]
    assert "checkpoints/README.md" in files
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not unshipped, f"not in pyproject.toml's package-data: {unshipped}"
    for name in SHIPPED:
        assert {p.name for p in (PACKAGE_ZOO / name).iterdir()} >= {"model.safetensors", "model.json", "card.json"}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_matches_its_card(name, monkeypatch):
    monkeypatch.delenv(ZOO_ENV, raising=False)  # the package's own zoo
    card = read_card(f"zoo:{name}")
    assert check_card(card) == []
    assert card["weights_sha256"] == sha256_file(PACKAGE_ZOO / name / "model.safetensors")
    assert card["checks"]["status"] in ("PASS", "WARN", "not run")
    model = robustlab.load_model(f"zoo:{name}")
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    x, y, _ = load_dataset(card["dataset"], "test")
    x, y = x[:SPOT_N], y[:SPOT_N]
    from robustlab._torch import predict

    acc = int((predict(model, x, 500) == y).sum()) / len(y)
    assert abs(acc - card["spot_check"]["accuracy"]) <= SPOT_TOLERANCE
    assert abs(acc - card["clean_accuracy"]) <= HEADLINE_TOLERANCE
