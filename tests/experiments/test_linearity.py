"""The linearity experiment: FGSM on a linear score moves it by exactly eps * ||w||_1 (checked on a
hand-built model and in the experiment's rows, against the library's FGSM), that change grows with
the input dimension, and on the task of fixed difficulty the FGSM error rate rises with it."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.state import assert_same_state, snapshot
from robustlab import ThreatModel
from robustlab.attacks import FGSM
from robustlab.experiments import fit_linear, linear_task, linearity_experiment, linearity_row


def test_fgsm_moves_a_hand_built_linear_score_by_eps_times_the_l1_norm():
    """Independent of the experiment's code: a random linear model, the library's FGSM, and the
    closed form computed here."""
    g = torch.Generator().manual_seed(0)
    dim, eps = 300, 0.03
    model = torch.nn.Linear(dim, 2).eval()
    x = torch.rand(50, dim, generator=g)
    y = torch.randint(0, 2, (50,), generator=g)
    before = snapshot(model)
    x_adv = FGSM(ThreatModel("linf", eps, (-1.0, 2.0)))(model, x, y)  # wide bounds: never clipped
    assert_same_state(model, before)
    w = (model.weight[1] - model.weight[0]).detach().double()
    with torch.no_grad():
        s, s_adv = (model(x) @ torch.tensor([-1.0, 1.0])).double(), (model(x_adv) @ torch.tensor([-1.0, 1.0])).double()
    harm = (s - s_adv) * (2 * y - 1).double()  # the change toward the wrong class
    torch.testing.assert_close(harm, torch.full_like(harm, eps * float(w.abs().sum())), rtol=1e-5, atol=1e-5)


def test_the_fitted_classifier_is_unit_norm_and_better_than_chance():
    g = torch.Generator().manual_seed(1)
    model = fit_linear(50, 2000, 2.0, g)
    w = model.weight.detach()
    assert float(w[0].abs().sum()) == 0.0 and math.isclose(float(w[1].norm()), 1.0, rel_tol=1e-5)
    x, y = linear_task(50, 2000, 2.0, g)
    with torch.no_grad():
        error = float((model(x).argmax(1) != y).float().mean())
    # the Bayes error of the task is Phi(-2) = 0.023; the fitted rule is close to it
    assert error < 0.05, error


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_activation_change_is_the_closed_form_and_grows_with_the_dimension(seed):
    rows = linearity_experiment(dims=(1000, 10, 100), eps=0.1, seed=seed, n_train=2000, n_test=1000)
    assert [r["dim"] for r in rows] == [10, 100, 1000]
    for r in rows:
        assert r["unmoved"] == 0
        assert math.isclose(r["closed_form"], r["eps"] * r["w_l1"], rel_tol=1e-12)
        # every sample's measured change equals the closed form to float32 precision
        assert r["max_deviation"] <= 1e-4 * r["closed_form"], r
        assert math.isclose(r["activation_change"], r["closed_form"], rel_tol=1e-5)
        # Hoelder: ||w||_2 <= ||w||_1 <= sqrt(n) ||w||_2, with ||w||_2 = 1
        assert math.isclose(r["w_l2"], 1.0, rel_tol=1e-5)
        assert 1.0 - 1e-5 <= r["w_l1"] <= math.sqrt(r["dim"]) * (1 + 1e-5)
    changes = [r["activation_change"] for r in rows]
    errors = [r["fgsm_error"] for r in rows]
    assert changes[0] < changes[1] < changes[2], changes
    # same eps, same task difficulty: the FGSM error rate rises with the dimension (the gaps here
    # are many standard errors wide: about 5%, 16% and 87% at n_test = 1000) ...
    assert errors[0] < errors[1] < errors[2], errors
    # ... and not because the clean task got harder: the clean error stays near the Bayes error
    assert all(r["clean_error"] < 0.06 for r in rows), rows
    assert errors[2] - rows[2]["clean_error"] > 0.5


def test_same_seed_same_rows_and_bad_input_is_refused():
    a = linearity_row(20, 0.05, seed=3, n_train=200, n_test=100)
    assert a == linearity_row(20, 0.05, seed=3, n_train=200, n_test=100)
    assert a != linearity_row(20, 0.05, seed=4, n_train=200, n_test=100)
    for kwargs, match in (({"dims": ()}, "dims is empty"), ({"dims": (10, 0)}, "dims"), ({"eps": 0.0}, "eps"),
                          ({"eps": float("inf")}, "eps"), ({"seed": -1}, "seed"), ({"n_train": 1}, "n_train"),
                          ({"n_test": 0}, "n_test")):
        with pytest.raises(ValueError, match=match):
            linearity_experiment(**{"dims": (10,), **kwargs})
