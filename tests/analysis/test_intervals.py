"""Profile-likelihood and parametric-bootstrap intervals."""

import numpy as np
import pytest

import mixedfx
from conftest import load_reference
from mixedfx.analysis.intervals import simulate_response
from mixedfx.errors import OptionError


@pytest.fixture(scope="module")
def sleep_ml():
    return mixedfx.fit("Reaction ~ Days + (Days | Subject)", mixedfx.datasets.load_sleepstudy(), method="ml")


def test_profile_intervals_match_lme4(sleep_ml):
    ref = load_reference("sleepstudy_profile_ml")
    ours = sleep_ml.confint(method="profile")
    mapping = {
        ".sig01": "sd(_cons)",
        ".sig02": "corr(Days,_cons)",
        ".sig03": "sd(Days)",
        ".sigma": "sd(Residual)",
        "(Intercept)": "(Intercept)",
        "Days": "Days",
    }
    for name, lower, upper in zip(ref["parameter"], ref["lower"], ref["upper"]):
        row = ours.loc[mapping[name]]
        assert row["lower"] == pytest.approx(lower, rel=2e-4), name
        assert row["upper"] == pytest.approx(upper, rel=2e-4), name


def test_reml_profile_uses_wald_for_fixed_effects(sleepstudy):
    fit = mixedfx.fit("Reaction ~ Days + (1 | Subject)", sleepstudy)
    table = fit.confint(method="profile")
    assert table.loc["Days", "method"] == "wald (REML)"
    assert table.loc["sd(_cons)", "lower"] < table.loc["sd(_cons)", "estimate"] < table.loc["sd(_cons)", "upper"]


def test_bootstrap_is_seeded_and_brackets_estimates(sleep_ml, capsys):
    a = sleep_ml.confint(method="bootstrap", n_boot=40, seed=7, progress=True)
    assert "bootstrap [" in capsys.readouterr().err
    b = sleep_ml.confint(method="bootstrap", n_boot=40, seed=7, progress=False)
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    assert (a["lower"] <= a["estimate"]).all() and (a["estimate"] <= a["upper"]).all()
    wald = sleep_ml.confint()
    width_ratio = (a["upper"] - a["lower"]) / (wald["upper"] - wald["lower"])
    assert width_ratio.loc["Days"] == pytest.approx(1.0, abs=0.45)


def test_simulated_responses_have_the_model_variance(sleepstudy):
    fit = mixedfx.fit("Reaction ~ Days + (1 | Subject)", sleepstudy)
    rng = np.random.default_rng(0)
    sims = np.array([simulate_response(fit, rng) for _ in range(400)])
    total = fit.G["Subject"].iloc[0, 0] + fit.sigma**2
    assert sims.var(axis=0).mean() == pytest.approx(total, rel=0.08)


def test_unknown_interval_method(sleep_ml):
    with pytest.raises(OptionError, match="profile"):
        sleep_ml.confint(method="bayes")
