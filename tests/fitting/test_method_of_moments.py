"""``fit(..., method="moments")``: against ML on simulated crossed data, the table, and refusals."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx.cli import main
from mixedfx.errors import OptionError, SingularFitWarning


@pytest.fixture(scope="module")
def crossed():
    rng = np.random.default_rng(21)
    n = 20_000
    a, b = rng.integers(0, 400, n), rng.integers(0, 150, n)
    x = rng.normal(size=n)
    y = 2 + 0.5 * x + 0.9 * rng.normal(size=400)[a] + 0.6 * rng.normal(size=150)[b] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str)})


@pytest.fixture(scope="module")
def moments(crossed):
    return mixedfx.fit("y ~ x + (1 | a) + (1 | b)", crossed, method="moments")


def test_moments_agree_with_ml_within_their_standard_errors(crossed, moments):
    ml = mixedfx.fit("y ~ x + (1 | a) + (1 | b)", crossed, method="ml")
    table = moments.re_table()
    ml_variances = dict(zip(ml.varcorr["group"], ml.varcorr["vcov"]))
    for _, row in table.iterrows():
        assert abs(row["estimate"] - ml_variances[row["group"]]) < 2 * row["se"], row
    assert np.all(np.abs(moments.fixef - ml.fixef) < moments.se)
    np.testing.assert_allclose(moments.se, ml.se, rtol=0.05)


def test_moments_recover_the_truth(moments):
    truth = {"a": 0.81, "b": 0.36, "Residual": 1.0}
    for _, row in moments.re_table().iterrows():
        assert abs(row["estimate"] - truth[row["group"]]) < 3 * row["se"], row
        assert row["lower"] < row["estimate"] < row["upper"]


def test_summary_names_the_estimator(moments):
    text = str(moments.summary(replicates=20))
    assert "method of moments" in text and "U-statistics" in text and "GLS" in text
    assert "parametric bootstrap, 20 replicates (seed 0)" in text
    assert "var(a)" in text and "var(Residual)" in text


def test_bootstrap_replicates_are_reproducible(crossed):
    one = mixedfx.fit("y ~ x + (1 | a) + (1 | b)", crossed, method="moments").re_table(replicates=10)
    two = mixedfx.fit("y ~ x + (1 | a) + (1 | b)", crossed, method="moments").re_table(replicates=10)
    pd.testing.assert_frame_equal(one, two)


def test_a_negative_component_is_set_to_zero_with_a_warning():
    rng = np.random.default_rng(3)
    n = 600
    for seed in range(30):
        rng = np.random.default_rng(seed)
        d = pd.DataFrame({"y": rng.normal(size=n), "a": rng.integers(0, 40, n), "b": rng.integers(0, 25, n)})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = mixedfx.fit("y ~ 1 + (1 | a) + (1 | b)", d, method="moments")
        if any(issubclass(w.category, SingularFitWarning) for w in caught):
            assert (fit.components.iloc[:2] == 0).any()
            assert "set to zero" in str(fit.summary(replicates=5))
            return
    pytest.fail("no seed gave a truncated component")


@pytest.mark.parametrize(
    ("formula", "options", "message"),
    [
        ("y ~ x + (1 + x | a)", {}, "random intercepts only"),
        ("y ~ x + (1 | a)", {"weights": "x"}, "does not take weights"),
        ("y ~ x + (1 | a)", {"residuals": "ar1, t(x)"}, "does not take residuals"),
        ("y ~ x + (1 | a)", {"variance": ("power", "x")}, "does not take variance"),
        ("y ~ x + (1 | a)", {"start": [1.0]}, "does not take start"),
    ],
)
def test_what_the_moment_engine_does_not_do_is_refused(crossed, formula, options, message):
    with pytest.raises(OptionError, match=message):
        mixedfx.fit(formula, crossed, method="moments", **options)


@pytest.mark.parametrize(
    ("reference", "formula", "load"),
    [
        ("penicillin_crossed_reml", "diameter ~ 1 + (1 | plate) + (1 | sample)", mixedfx.datasets.load_penicillin),
        ("pastes_nested_reml", "strength ~ 1 + (1 | batch) + (1 | cask:batch)", mixedfx.datasets.load_pastes),
    ],
)
def test_on_balanced_designs_the_moments_are_lme4_s_reml(reference, formula, load):
    """Penicillin (24 plates x 6 samples crossed, one assay per cell) and Pastes (3 casks in each of 10
    batches, 2 samples per cask): the moment (ANOVA) estimates equal REML's, and GLS given them is
    REML's fixed effect with its SE."""
    ref = json.loads((Path(__file__).parents[1] / "reference" / f"{reference}.json").read_text())
    fit = mixedfx.fit(formula, load(), method="moments")
    reml = {row["grp"]: row["vcov"] for row in ref["varcorr"]}
    for name, value in fit.components.items():
        assert value == pytest.approx(reml[name], rel=1e-6)
    assert fit.fixef["(Intercept)"] == pytest.approx(ref["fixef"]["(Intercept)"], rel=1e-10)
    assert fit.se["(Intercept)"] == pytest.approx(ref["se"]["(Intercept)"], rel=1e-6)


def test_command_line_method_moments(capsys):
    assert main(["fit", "penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", "--method", "moments"]) == 0
    assert "method of moments" in capsys.readouterr().out
    assert (
        main(["fit", "penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", "--method", "moments", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "moments" and out["bootstrap_replicates"] == 50 and len(out["components"]) == 3
    assert main(["fit", "penicillin", "diameter ~ 1 + (1 | plate)", "--method", "moments", "--stddev"]) == 2
    assert "does not apply to --method moments" in capsys.readouterr().err


def test_factors_the_moments_cannot_separate_are_refused():
    rng = np.random.default_rng(0)
    d = pd.DataFrame({"y": rng.normal(size=100), "g": np.arange(100) % 7})
    with pytest.raises(mixedfx.errors.DataError, match="do not separate the variance components of g, h"):
        mixedfx.fit("y ~ 1 + (1 | g) + (1 | h)", d.assign(h=d["g"] + 10), method="moments")
