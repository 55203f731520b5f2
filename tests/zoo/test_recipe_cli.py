"""``robustlab train --recipe NAME``: every recipe's flags reach config.json, flags given on the
command line override them (``--defense-option`` key by key), ``--recipe list`` shows them all, and
the training command a zoo card shows (rebuilt from config.json) reproduces the run's settings."""

from __future__ import annotations

import json
import shlex

import pytest
from click.testing import CliRunner

from robustlab.cli import main
from robustlab.pretrained.cards import training_command
from robustlab.training.recipes import RECIPES, format_flags

# a tiny run on digits: the recipe's settings apart from data, size and length
TINY = ["--dataset", "digits", "--train-limit", "96", "--test-limit", "32", "--epochs", "1", "--batch-size", "48",
        "--holdout", "16", "--monitor-n", "16", "--model-option", "channels=[4,8]", "--model-option", "hidden=16",
        "--quiet", "--device", "cpu"]
OVERRIDDEN = {"--dataset", "--epochs", "--batch-size", "--holdout", "--monitor-n"}


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _config(run) -> dict:
    return json.loads((run / "config.json").read_text())


def test_recipe_list_shows_every_recipe_in_full():
    r = _invoke("train", "--recipe", "list")
    assert r.exit_code == 0
    for recipe in RECIPES.values():
        assert recipe.name in r.output and recipe.description in r.output
        assert " ".join(format_flags(recipe.flags)) in r.output


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_reaches_the_run_config_and_flags_override_it(name, tmp_path):
    recipe = RECIPES[name]
    run = tmp_path / "run"
    r = _invoke("train", "--recipe", name, *TINY, "--out", str(run))
    assert r.exit_code == 0, r.output
    assert f"recipe {name}: robustlab train" in r.output and "--epochs" in r.output.split("over it:")[1]
    cfg = _config(run)
    spec, training = cfg["spec"], cfg["training"]
    flags = recipe.flags
    assert training["epochs"] == 1 and training["batch_size"] == 48 and training["holdout"] == 16  # the command line's
    assert spec["dataset"] == "digits"
    for flag, key in (("--lr", "lr"), ("--ema", "ema"), ("--schedule", "schedule"), ("--optimizer", "optimizer"),
                      ("--select-best", "select_best")):
        if flag in flags and flag not in OVERRIDDEN:
            assert training[key] == flags[flag], flag
    assert spec["defense"] == flags["--defense"]
    assert spec["model_options"]["batchnorm"] is flags["--batchnorm"]
    if "--eps" in flags:
        assert spec["defense_options"]["eps"] == flags["--eps"] and spec["defense_options"]["norm"] == flags["--norm"]
    for pair in flags.get("--defense-option", []):
        key, value = pair.split("=")
        assert spec["defense_options"][key] == json.loads(value)
    assert spec["monitor"]["eps"] == flags["--monitor-eps"]


def test_defense_options_merge_key_by_key(tmp_path):
    run = tmp_path / "run"
    r = _invoke("train", "--recipe", "fmnist-linf-0.1-trades-awp", *TINY, "--defense-option", "steps=1",
                "--out", str(run))
    assert r.exit_code == 0, r.output
    opts = _config(run)["spec"]["defense_options"]
    assert opts["steps"] == 1 and opts["beta"] == 6 and opts["awp_gamma"] == 0.005  # yours over the recipe's


def test_recipe_errors_are_one_line(tmp_path):
    r = CliRunner().invoke(main, ["train", "--recipe", "nope", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "unknown recipe 'nope'" in r.output and "fmnist-linf-0.1" in r.output
    r = CliRunner().invoke(main, ["train", "--resume", "--recipe", "fmnist-l2", str(tmp_path)])
    assert r.exit_code == 2 and "--recipe" in r.output and "cannot be changed" in r.output


def test_the_rebuilt_training_command_reproduces_the_settings(tmp_path):
    first = tmp_path / "first"
    r = _invoke("train", "--recipe", "fmnist-linf-0.1", *TINY, "--seed", "3", "--weight-decay", "0.0001",
                "--out", str(first))
    assert r.exit_code == 0, r.output
    command = training_command(_config(first), out=str(tmp_path / "again"))
    words = shlex.split(command)
    assert words[:2] == ["robustlab", "train"] and "--recipe" not in words
    r = _invoke(*words[1:], "--quiet")
    assert r.exit_code == 0, r.output
    assert _config(tmp_path / "again") == _config(first)
