"""Pseudo-maximum-likelihood fits with sampling weights: Stata's PISA example, and exact identities.

With integer weights the pseudo-likelihood is the likelihood of the data with each row,
cluster or cluster of clusters repeated that many times (``f^2 = f f``), so the weighted fit
must equal the ML fit of the replicated data at two and at three levels; with unit weights
it is the unweighted ML fit, and its sandwich is the cluster-robust covariance of
:mod:`mixedfx.analysis.robust`.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx import datasets
from mixedfx.errors import DataError, OptionError

REFERENCE = json.loads((Path(__file__).parents[1] / "reference" / "pisa2000_stata.json").read_text())
PISA_FORMULA = "isei ~ female + high_school + college + one_for + both_for + test_lang + (1 | id_school)"
PISA_WEIGHTS = {"": "w_fstuwt", "id_school": "wnrschbw"}


@pytest.fixture(scope="module")
def pisa():
    return mixedfx.fit(PISA_FORMULA, datasets.load_pisa2000(), method="ml", pweights=PISA_WEIGHTS, pwscale="size")


def _printed(value: float, text: str) -> bool:
    """Whether ``value`` prints as Stata's ``text`` (same number of significant digits)."""
    digits = sum(ch.isdigit() for ch in text.lstrip("-0.").replace(".", ""))
    return float(f"{value:.{digits}g}") == pytest.approx(float(text), abs=0, rel=1e-12)


def _half_unit(text: str) -> float:
    """Half a unit in the last printed digit of ``text`` (the rounding of a printed number)."""
    value = abs(float(text))
    digits = sum(ch.isdigit() for ch in text.lstrip("-0.").replace(".", ""))
    return 0.5 * 10 ** (np.floor(np.log10(value)) - digits + 1)


def test_pisa_standard_errors_intervals_and_loglik_as_stata_prints_them(pisa):
    assert pisa.nobs == REFERENCE["nobs"] and pisa.ngroups["id_school"] == REFERENCE["groups"]
    assert f"{pisa.loglik:.1f}" == REFERENCE["loglik"]
    table = pisa.coef_table()
    for name, (_, se, lower, upper) in REFERENCE["coefficients"].items():
        if se is None:
            continue
        assert _printed(table.loc[name, "se"], se), (name, table.loc[name, "se"], se)
        # the intervals depend on the coefficient too: equal to Stata's to its optimiser's tolerance
        assert table.loc[name, "lower"] == pytest.approx(float(lower), abs=_half_unit(lower) + 2e-6)
        assert table.loc[name, "upper"] == pytest.approx(float(upper), abs=_half_unit(upper) + 2e-6)
    chi2, df = REFERENCE["wald_chi2"]
    assert "Wald chi2(6)      =     187.23" in str(pisa.summary()) and df == 6 and chi2 == 187.23


def test_pisa_coefficients_equal_stata_to_its_convergence_tolerance(pisa):
    for name, (estimate, *_) in REFERENCE["coefficients"].items():
        assert pisa.fixef[name] == pytest.approx(float(estimate), abs=_half_unit(estimate) + 2e-6)


def test_pisa_stata_stopped_one_part_in_a_million_short_of_the_optimum(pisa):
    """Every printed coefficient of Stata's is reproduced at theta 1e-6 (relative) from our optimum,
    where the log pseudo-likelihood is 1e-8 lower: Stata's optimiser stopped there."""
    record = pisa.record
    theta = record.theta_engine * (1 + 0.97e-6)
    solution = record.deviance.solve(theta)
    beta = pd.Series(record.scaling.beta(solution.beta), index=record.fixef.index)
    for name, (estimate, *_) in REFERENCE["coefficients"].items():
        assert _printed(beta[name], estimate), (name, beta[name], estimate)
    loglik = -0.5 * record.deviance_to_original_scale(solution.deviance)
    assert 0 < record.loglik - loglik < 1e-6


def test_pisa_summary_is_stata_s_survey_table(pisa):
    text = str(pisa.summary())
    assert "Log pseudolikelihood = -1443093.9" in text
    assert "(Std. err. adjusted for 148 clusters in id_school)" in text
    assert "Robust SE" in text and "LR test" not in text
    assert " female |   .5937901   .8732886     0.68   0.497     -1.117824    2.305404" in text


def test_stata_syntax_gives_the_same_fit(pisa):
    command = (
        "mixed isei female high_school college one_for both_for test_lang [pw=w_fstuwt] "
        "|| id_school:, pweight(wnrschbw) pwscale(size)"
    )
    fit = mixedfx.mixed(command, datasets.load_pisa2000())
    assert fit.loglik == pytest.approx(pisa.loglik, rel=1e-12)
    np.testing.assert_allclose(fit.se.to_numpy(), pisa.se.to_numpy(), rtol=1e-9)


def test_variance_components_get_sandwich_standard_errors(pisa):
    table = pisa.re_table()
    var_school = table.loc[table["parameter"] == "var(_cons)"].iloc[0]
    assert var_school["estimate"] == pytest.approx(34.69367, rel=1e-5)
    residual = table.loc[table["parameter"] == "var(Residual)"].iloc[0]
    assert residual["estimate"] == pytest.approx(218.7382, rel=1e-6)
    # robust SEs are far larger than the model-based ones of the weighted fit (weights sum to 2069 x 148 scale)
    assert 5 < var_school["se"] < 15 and 8 < residual["se"] < 15
    assert var_school["lower"] < var_school["estimate"] < var_school["upper"]


# ---------------------------------------------------------------------------- exact identities
def _three_level(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for school in range(8):
        u = rng.normal()
        for klass in range(rng.integers(2, 4)):
            v = 0.6 * rng.normal()
            for _ in range(rng.integers(2, 6)):
                x = rng.normal()
                rows.append((f"s{school}", f"c{klass}", x, 2 + 0.5 * x + u + v + rng.normal()))
    d = pd.DataFrame(rows, columns=["school", "klass", "x", "y"])
    d["a"] = rng.integers(1, 4, len(d)).astype(float)
    d["wc"] = d.groupby(["school", "klass"])["x"].transform(lambda s: 1.0 + (abs(hash(s.name)) % 2))
    d["ws"] = d.groupby("school")["x"].transform(lambda s: 1.0 + (int(s.name[1:]) % 3))
    return d


def _replicate(d: pd.DataFrame) -> pd.DataFrame:
    """Each school ws times, each class (within its school copy) wc times, each row a times."""
    parts = []
    for (school, klass), cell in d.groupby(["school", "klass"]):
        for s_copy in range(int(cell["ws"].iloc[0])):
            for c_copy in range(int(cell["wc"].iloc[0])):
                rows = cell.loc[cell.index.repeat(cell["a"].astype(int))].copy()
                rows["school"] = f"{school}_{s_copy}"
                rows["klass"] = f"{klass}_{c_copy}"
                parts.append(rows)
    return pd.concat(parts, ignore_index=True)


def _compare(weighted, replicated):
    assert weighted.loglik == pytest.approx(replicated.loglik, rel=1e-9)
    np.testing.assert_allclose(weighted.fixef.to_numpy(), replicated.fixef.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(weighted.varcorr["vcov"].to_numpy(), replicated.varcorr["vcov"].to_numpy(), rtol=1e-5)


def test_integer_weights_at_three_levels_equal_the_replicated_data():
    d = _three_level()
    formula = "y ~ x + (1 | school) + (1 | klass:school)"
    weights = {"": "a", "klass:school": "wc", "school": "ws"}
    weighted = mixedfx.fit(formula, d, method="ml", pweights=weights)
    replicated = mixedfx.fit(formula, _replicate(d), method="ml")
    _compare(weighted, replicated)
    assert "(Std. err. adjusted for 8 clusters in school)" in str(weighted.summary())


def test_integer_weights_at_two_levels_with_a_random_slope_equal_the_replicated_data():
    d = _three_level(seed=4)
    d["klass"] = "c0"  # two levels: rows in schools
    weights = {"": "a", "school": "ws"}
    formula = "y ~ x + (1 + x | school)"
    weighted = mixedfx.fit(formula, d, method="ml", pweights=weights)
    replicated = mixedfx.fit(formula, _replicate(d.assign(wc=1.0)), method="ml")
    _compare(weighted, replicated)


def test_unit_weights_give_the_ml_fit_and_the_cluster_robust_covariance():
    d = _three_level(seed=2).assign(one=1.0)
    formula = "y ~ x + (1 | school)"
    weighted = mixedfx.fit(formula, d, method="ml", pweights={"": "one", "school": "one"}, pwscale="size")
    plain = mixedfx.fit(formula, d, method="ml")
    assert weighted.loglik == pytest.approx(plain.loglik, rel=1e-10)
    np.testing.assert_allclose(weighted.fixef, plain.fixef, rtol=1e-6)
    np.testing.assert_allclose(weighted.vcov.to_numpy(), plain.robust_vcov().to_numpy(), rtol=1e-5)


def test_size_scaling_ignores_the_level_one_weights_scale_within_clusters():
    d = _three_level(seed=4)
    d["a2"] = d["a"] * d["school"].str[1:].astype(int).add(1)  # a different constant per school
    formula = "y ~ x + (1 | school)"
    one = mixedfx.fit(formula, d, method="ml", pweights={"": "a", "school": "ws"}, pwscale="size")
    two = mixedfx.fit(formula, d, method="ml", pweights={"": "a2", "school": "ws"}, pwscale="size")
    assert one.loglik == pytest.approx(two.loglik, rel=1e-12)
    np.testing.assert_allclose(one.se, two.se, rtol=1e-8)


def test_gk_scaling_is_unit_observation_weights_and_mean_product_cluster_weights():
    d = _three_level(seed=5)
    d["gk"] = (d["a"] * d["ws"]).groupby(d["school"]).transform("mean")
    formula = "y ~ x + (1 | school)"
    gk = mixedfx.fit(formula, d, method="ml", pweights={"": "a", "school": "ws"}, pwscale="gk")
    by_hand = mixedfx.fit(formula, d, method="ml", pweights={"school": "gk"})
    assert gk.loglik == pytest.approx(by_hand.loglik, rel=1e-12)
    np.testing.assert_allclose(gk.se, by_hand.se, rtol=1e-8)


def test_effective_scaling_differs_from_size_and_leaves_unit_weights_alone():
    d = _three_level(seed=6).assign(one=1.0)
    formula = "y ~ x + (1 | school)"
    size = mixedfx.fit(formula, d, method="ml", pweights={"": "a", "school": "ws"}, pwscale="size")
    effective = mixedfx.fit(formula, d, method="ml", pweights={"": "a", "school": "ws"}, pwscale="effective")
    assert abs(size.loglik - effective.loglik) > 1e-3
    unit = mixedfx.fit(formula, d, method="ml", pweights={"": "one", "school": "ws"}, pwscale="effective")
    none = mixedfx.fit(formula, d, method="ml", pweights={"school": "ws"})
    assert unit.loglik == pytest.approx(none.loglik, rel=1e-12)


# ---------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def small():
    return _three_level(seed=7)


def _fit(d, **options):
    base = {"method": "ml", "pweights": {"": "a", "school": "ws"}}
    base.update(options)
    return mixedfx.fit("y ~ x + (1 | school)", d, **base)


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1.0, "is negative at row 3"), (np.nan, "is missing at row 3"), (0.0, "is zero at row 3"), (np.inf, "infinite")],
)
def test_bad_observation_weights_are_refused_naming_the_row(small, value, message):
    d = small.copy()
    d.loc[3, "a"] = value
    with pytest.raises(DataError, match=message):
        _fit(d)


def test_a_cluster_weight_that_varies_within_its_cluster_is_refused(small):
    d = small.copy()
    d.loc[d.index[0], "ws"] = 99.0
    with pytest.raises(DataError, match="'ws' of level 'school' varies within its cluster 's0'"):
        _fit(d)


def test_text_in_a_weight_column_is_refused(small):
    d = small.astype({"a": object})
    d.loc[2, "a"] = "heavy"
    with pytest.raises(DataError, match="not numeric at row 2"):
        _fit(d)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"method": "reml"}, OptionError, "need method='ml'"),
        ({"pweights": {"": "a", "district": "ws"}}, OptionError, "key 'district' that is not a grouping factor"),
        ({"pweights": {"": "wt"}}, DataError, "Unknown variable 'wt' in pweights"),
        ({"pwscale": "sizes"}, OptionError, "pwscale must be one of"),
        ({"weights": "a"}, OptionError, "either weights"),
        ({"engine": "duckdb"}, OptionError, "rows in memory"),
        ({"pweights": None, "pwscale": "size"}, OptionError, "pwscale scales sampling weights"),
        ({"pweights": ["a", "ws"]}, OptionError, "pweights must map ''"),
        ({"pweights": {"": 3}}, OptionError, r"pweights\[''\] must name a column of the data, not int"),
        ({"pweights": {}}, OptionError, "pweights is empty"),
        ({"family": "poisson"}, OptionError, "not GLMMs"),
    ],
)
def test_options_that_do_not_apply_are_refused(small, options, error, message):
    with pytest.raises(error, match=message):
        _fit(small, **options)


def test_crossed_factors_are_refused(small):
    d = small.assign(rater=np.arange(len(small)) % 3)
    with pytest.raises(OptionError, match="nested grouping factors"):
        mixedfx.fit("y ~ x + (1 | school) + (1 | rater)", d, method="ml", pweights={"": "a"})


def test_likelihood_based_analyses_are_refused_not_faked(small, tmp_path):
    fit = _fit(small)
    with pytest.raises(OptionError, match="not available with sampling weights"):
        fit.ranef()
    with pytest.raises(OptionError, match="pseudo-likelihood"):
        mixedfx.lrtest(fit, fit)
    with pytest.raises(OptionError, match="pseudo-likelihood"):
        fit.lr_test_vs_linear()
    with pytest.raises(OptionError, match="pseudo-likelihood"):
        fit.confint(method="profile")
    with pytest.raises(OptionError, match="pseudo-likelihood"):
        fit.coef_table(dfmethod="satterthwaite")
    assert np.isnan(fit.aic) and np.isnan(fit.bic)
    with pytest.raises(OptionError, match="The report .* not available with sampling weights"):
        fit.report(tmp_path / "never.html")
    assert not (tmp_path / "never.html").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        population = fit.predict(level="population")
        assert len(population) == len(small)


def test_rows_with_missing_covariates_are_dropped_before_the_weights_are_scaled():
    pisa = datasets.load_pisa2000()
    pisa.loc[[3, 10], "female"] = np.nan
    weights = {"": "w_fstuwt", "id_school": "wnrschbw"}
    fit = mixedfx.fit("isei ~ female + (1 | id_school)", pisa, method="ml", pweights=weights, pwscale="size")
    complete = mixedfx.fit(
        "isei ~ female + (1 | id_school)", pisa.dropna(subset=["female"]), method="ml", pweights=weights, pwscale="size"
    )
    assert (fit.nobs, fit.n_missing) == (2067, 2)
    assert fit.loglik == pytest.approx(complete.loglik, rel=1e-12)


def test_three_levels_in_stata_syntax_equal_the_python_call():
    d = _three_level(seed=9)
    command = "mixed y x [pw=a] || school:, pweight(ws) || klass:, pweight(wc) pwscale(size)"
    stata = mixedfx.mixed(command, d)
    python = mixedfx.fit(
        "y ~ x + (1 | school) + (1 | klass:school)",
        d,
        method="ml",
        pweights={"": "a", "school": "ws", "klass:school": "wc"},
        pwscale="size",
    )
    assert stata.loglik == pytest.approx(python.loglik, rel=1e-12)
    np.testing.assert_allclose(stata.se.to_numpy(), python.se.to_numpy(), rtol=1e-9)


@pytest.mark.parametrize("scale", [1e-300, 1e300])
def test_top_level_weights_of_any_scale_give_the_same_estimates(pisa, scale):
    data = datasets.load_pisa2000()
    data["w_school"] = data["wnrschbw"] * scale
    weights = {"": "w_fstuwt", "id_school": "w_school"}
    fit = mixedfx.fit(PISA_FORMULA, data, method="ml", pweights=weights, pwscale="size")
    np.testing.assert_allclose(fit.fixef.to_numpy(), pisa.fixef.to_numpy(), rtol=1e-7)
    np.testing.assert_allclose(fit.se.to_numpy(), pisa.se.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(fit.re_table()["se"].to_numpy(), pisa.re_table()["se"].to_numpy(), rtol=1e-5)
    assert fit.loglik == pytest.approx(scale * pisa.loglik, rel=1e-10)
