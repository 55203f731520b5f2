"""The iterations curve names its attack, follows the evaluation's one iterative attack, and
refuses when the choice is ambiguous (it used to switch silently from PGD to APGD-CE)."""

from __future__ import annotations

import pytest

from robustlab import ThreatModel
from robustlab.attacks import ATTACKS
from robustlab.evaluation.curves import curve_attacks, iterations_attack_for, iterations_curve, iterations_metrics

LINF = ThreatModel("linf", 0.1)


def test_curve_attacks_are_the_fixed_budget_gradient_attacks():
    names = curve_attacks()
    assert {"apgd", "mim", "pgd"} <= set(names)
    for n in ("fgsm", "fgv", "cw", "square", "nes", "noise", "transfer"):
        assert n not in names  # single-step, minimum-norm or gradient-free
    assert all(not ATTACKS[n].minimum_norm and ATTACKS[n].uses_gradients for n in names)


@pytest.mark.parametrize(
    ("attacks", "expected"),
    [(None, "apgd"), (["pgd"], "pgd"), (["fgsm", "pgd"], "pgd"), (["square", " MIM ", "cw"], "mim"),
     (["apgd", "fgsm", "transfer"], "apgd"), (["pgd", "pgd"], "pgd")],
)
def test_the_curve_follows_the_one_iterative_attack(attacks, expected):
    assert iterations_attack_for(attacks) == expected


@pytest.mark.parametrize(
    ("attacks", "match"),
    [(["pgd", "apgd"], "apgd, pgd"), (["fgsm", "mim", "pgd"], "mim, pgd"), (["fgsm"], "needs an iterative"),
     (["cw", "square"], "needs an iterative"), ([], "got none"), (["pgx"], "unknown attack")],
)
def test_the_curve_refuses_an_ambiguous_or_empty_choice(attacks, match):
    with pytest.raises(ValueError, match=match):
        iterations_attack_for(attacks)


def test_the_curve_runs_and_names_the_chosen_attack(digits_model, digits):
    _, _, x, y = digits
    x, y = x[:60], y[:60]
    curve = iterations_curve(digits_model, x, y, LINF, [2, 4], attack="mim")
    assert [set(c["per_attack"]) for c in curve] == [{"mim"}, {"mim"}]
    m = iterations_metrics(digits_model, x, y, LINF, [2], attack="pgd", options={"eot": 2})
    assert m["iterations_attack"] == "pgd-ce, linf eps=0.1, eot=2"
    assert iterations_metrics(digits_model, x, y, LINF, [2], attack="apgd")["iterations_attack"] == "apgd-ce, linf eps=0.1"
    with pytest.raises(ValueError, match="attack"):
        iterations_curve(digits_model, x, y, LINF, [1], attack="cw")
    with pytest.raises(ValueError, match="eot"):
        iterations_curve(digits_model, x, y, LINF, [1], attack="pgd", options={"eot": 0})
