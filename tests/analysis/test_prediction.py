"""Predictions, BLUP standard errors, cluster coefficients, OLS by cluster, shrinkage, ranking."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import mixedfx
from mixedfx.errors import DataError, OptionError

SCHOOLS = "gcse ~ lrt_groupc + (1 + lrt_groupc | school)"


@pytest.fixture(scope="module")
def schools():
    return mixedfx.fit(SCHOOLS, mixedfx.datasets.load_exam())


@pytest.fixture(scope="module")
def growth():
    data = mixedfx.datasets.load_asian()
    return mixedfx.fit("weight ~ age_c + age_sp + girl + age_c_girl + age_sp_girl + (1 | id)", data, method="ml")


def _dense_prediction_error(fit):
    """Var(b_hat - b) = G - G Z' P Z G for a single-factor fit, computed densely."""
    block = fit.design.blocks[0]
    n, q, m = fit.nobs, block.q, block.n_levels
    Z = np.zeros((n, m * q))
    for a in range(q):
        Z[np.arange(n), block.codes * q + a] = block.Z[:, a]
    G = np.kron(np.eye(m), fit.G[block.name].to_numpy())
    V = Z @ G @ Z.T + fit.sigma**2 * np.eye(n)
    X = fit.design.X
    Vi = np.linalg.inv(V)
    P = Vi - Vi @ X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)
    C = G - G @ Z.T @ P @ Z @ G
    return np.sqrt(np.diag(C)).reshape(m, q)


def test_comparative_standard_errors_match_dense_formula(sleepstudy):
    fit = mixedfx.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    table = fit.ranef_table()
    expected = _dense_prediction_error(fit)
    for k, term in enumerate(["(Intercept)", "Days"]):
        mine = table.loc[table["term"] == term, "se_comparative"].to_numpy()
        np.testing.assert_allclose(mine, expected[:, k], rtol=1e-8)
    assert (table["se_comparative"] >= table["se"]).all()  # beta uncertainty only adds
    stacks = fit.ranef_conditional_covariance()["Subject"]
    assert stacks.shape == (18, 2, 2)
    np.testing.assert_allclose(np.sqrt(stacks[:, 1, 1]), table.loc[table["term"] == "Days", "se"], rtol=1e-12)
    np.testing.assert_allclose(stacks, stacks.transpose(0, 2, 1))


def test_comparative_standard_errors_with_crossed_factors():
    data = mixedfx.datasets.load_penicillin()
    fit = mixedfx.fit("diameter ~ 1 + (1 | plate) + (1 | sample)", data)
    n = fit.nobs
    Zs, Gs = [], []
    for block in fit.design.blocks:
        Z = np.zeros((n, block.n_levels))
        Z[np.arange(n), block.codes] = 1.0
        Zs.append(Z)
        Gs.append(np.full(block.n_levels, fit.G[block.name].iloc[0, 0]))
    Z, G = np.hstack(Zs), np.diag(np.concatenate(Gs))
    Vi = np.linalg.inv(Z @ G @ Z.T + fit.sigma**2 * np.eye(n))
    X = fit.design.X
    P = Vi - Vi @ X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)
    expected = np.sqrt(np.diag(G - G @ Z.T @ P @ Z @ G))
    np.testing.assert_allclose(fit.ranef_table()["se_comparative"].to_numpy(), expected, rtol=1e-8)


def test_predictions_equal_manual_computation(schools):
    data = mixedfx.datasets.load_exam().iloc[[0, 100, 2000]]
    coefs = schools.coef_by_group()["school"]
    manual = [
        coefs.loc[str(row.school), "(Intercept)"] + coefs.loc[str(row.school), "lrt_groupc"] * row.lrt_groupc
        for row in data.itertuples()
    ]
    np.testing.assert_allclose(schools.predict(data)["prediction"], manual, rtol=1e-12)
    xb = schools.fixef["(Intercept)"] + schools.fixef["lrt_groupc"] * data["lrt_groupc"]
    np.testing.assert_allclose(schools.predict(data, level="population")["prediction"], xb, rtol=1e-12)


def test_estimation_data_predictions_match_new_data_path(schools):
    data = mixedfx.datasets.load_exam()
    a = schools.predict()
    b = schools.predict(data)
    np.testing.assert_allclose(a["prediction"], b["prediction"], rtol=1e-12)
    np.testing.assert_allclose(a["se_fixed"], b["se_fixed"], rtol=1e-12)


def test_fitted_plus_residuals_is_y(schools):
    np.testing.assert_allclose(schools.fitted() + schools.residuals(), schools.design.y, rtol=1e-12)
    pearson = schools.residuals(kind="pearson")
    np.testing.assert_allclose(pearson * schools.sigma, schools.residuals(), rtol=1e-12)
    marginal = schools.residuals(level="population")
    np.testing.assert_allclose(marginal, schools.design.y - schools.predict(level="population")["prediction"])


def test_unseen_groups_fall_back_or_raise(schools):
    new = pd.DataFrame({"lrt_groupc": [1.0, 2.0], "school": ["1", "999"]})
    with pytest.warns(UserWarning, match="not in the fit"):
        pred = schools.predict(new)
    population = schools.predict(new, level="population")
    assert pred["prediction"].iloc[1] == pytest.approx(population["prediction"].iloc[1])
    assert pred["prediction"].iloc[0] != pytest.approx(population["prediction"].iloc[0])
    with pytest.raises(DataError, match="not in the fit"):
        schools.predict(new, strict=True)
    with pytest.raises(DataError, match="no column 'school'"):
        schools.predict(new.drop(columns="school"))


def test_prediction_intervals_widen_in_the_right_order(schools):
    data = mixedfx.datasets.load_exam().head(5)
    conf = schools.predict(data, level="population", interval="confidence")
    pred = schools.predict(data, level="population", interval="prediction")
    subj = schools.predict(data, level="subject", interval="prediction")
    width = lambda f: (f["upper"] - f["lower"]).to_numpy()  # noqa: E731
    assert (width(conf) < width(subj)).all() and (width(subj) < width(pred)).all()
    with pytest.raises(OptionError, match="interval"):
        schools.predict(data, interval="credible")


def test_coef_by_group_is_fixed_plus_random(schools):
    coefs = schools.coef_by_group()["school"]
    ranef = schools.ranef()["school"]
    np.testing.assert_allclose(coefs["lrt_groupc"], schools.fixef["lrt_groupc"] + ranef["lrt_groupc"])


def test_ols_by_group_matches_statsmodels():
    data = mixedfx.datasets.load_exam()
    table = mixedfx.ols_by_group("gcse ~ lrt_groupc", data, "school", min_size=5)
    assert table["n"].min() >= 5
    assert len(table) == (data.groupby("school", observed=True).size() >= 5).sum()
    school = data[data["school"] == "7"]
    ols = sm.OLS(school["gcse"], sm.add_constant(school["lrt_groupc"])).fit()
    assert table.loc["7", "lrt_groupc"] == pytest.approx(ols.params["lrt_groupc"], rel=1e-10)
    assert table.loc["7", "se_lrt_groupc"] == pytest.approx(ols.bse["lrt_groupc"], rel=1e-10)
    with pytest.raises(DataError, match="Unknown group column"):
        mixedfx.ols_by_group("gcse ~ lrt_groupc", data, "schol")


def test_random_intercept_shrinkage_factor_is_exact():
    data = mixedfx.datasets.load_exam()
    fit = mixedfx.fit("gcse ~ lrt + (1 | school)", data)
    table = fit.shrinkage()
    psi = fit.G["school"].iloc[0, 0]
    expected = psi / (psi + fit.sigma**2 / table["n"])
    np.testing.assert_allclose(table["shrinkage_(Intercept)"], expected, rtol=1e-8)


def test_rank_orders_and_flags(schools):
    ranks = schools.rank(level=95)
    assert list(ranks["rank"]) == list(range(1, 66))
    assert ranks["estimate"].is_monotonic_decreasing
    above = ranks[ranks["flag"] == "above"]
    below = ranks[ranks["flag"] == "below"]
    assert (above["lower"] > 0).all() and (below["upper"] < 0).all()
    assert len(above) > 0 and len(below) > 0
    slope = schools.rank(term="lrt_groupc", se="conditional")
    assert slope.index[0] == schools.ranef()["school"]["lrt_groupc"].idxmax()
    with pytest.raises(OptionError, match="not a random effect"):
        schools.rank(term="sex")


def test_growth_curves_by_gender_and_individuals(growth):

    ages = np.linspace(0.1, 2.5, 7)
    curves = growth.predict_grid(
        {"age": ages}, by={"girl": [0.0, 1.0]}, groups=[2, 3], derive=mixedfx.datasets.add_spline_terms
    )
    pop = curves[curves["curve"] == "population"]
    assert len(pop) == 14 and set(pop["girl"]) == {0.0, 1.0}
    boys = pop[pop["girl"] == 0.0]
    b = growth.fixef
    manual = b["(Intercept)"] + b["age_c"] * (ages - 1) + b["age_sp"] * np.maximum(ages - 1, 0)
    np.testing.assert_allclose(boys["prediction"], manual, rtol=1e-12)
    assert (pop["lower"] < pop["prediction"]).all()
    child = curves[curves["curve"] == "2"]
    shift = growth.ranef()["id"].loc["2", "(Intercept)"]
    girls = pop[pop["girl"] == 1.0]["prediction"].to_numpy()
    np.testing.assert_allclose(child["prediction"].to_numpy(), girls + shift, rtol=1e-10)  # child 2 is a girl


def test_unseen_category_levels_are_refused(exam):
    fit = mixedfx.fit("gcse ~ lrt + sex + (1 | school)", exam)
    new = exam.head(3).assign(sex=["F", "M", "X"])
    with pytest.raises(DataError, match="'sex' has level\\(s\\) 'X' \\(first at row 2\\) that the fit never saw"):
        fit.predict(new)


def test_missing_groups_and_covariates_in_new_data(exam):
    fit = mixedfx.fit("gcse ~ lrt + (1 | school)", exam)
    new = exam.head(3).copy()
    new["school"] = new["school"].astype(object)
    new.loc[new.index[0], "school"] = np.nan
    with pytest.warns(UserWarning, match="population-level predictions"):
        out = fit.predict(new)
    population = fit.predict(new, level="population")
    assert out["prediction"].iloc[0] == pytest.approx(population["prediction"].iloc[0])
    new.loc[new.index[1], "lrt"] = np.nan
    with pytest.warns(UserWarning, match="missing covariates; their predictions are NaN"):
        out = fit.predict(new, level="population")
    assert np.isnan(out["prediction"].iloc[1]) and np.isfinite(out["prediction"].iloc[[0, 2]]).all()
