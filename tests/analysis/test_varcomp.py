"""Inference: df against lmerTest/pbkrtest, the lecture's table, variance-component CIs, tests."""

import numpy as np
import pandas as pd
import pytest

import mixedfx
from conftest import lme4_reference_names, load_reference, reference_data, simulate_two_level
from mixedfx.errors import OptionError

DF_REL = 1e-3  # near-singular asian_spline_slope_reml (corr 0.993) agrees to 3e-4, the rest to 1e-5


@pytest.fixture(scope="module", params=lme4_reference_names())
def case(request):
    ref = load_reference(request.param)
    return ref, mixedfx.fit(ref["formula"], reference_data(ref), method=ref["method"].lower())


def test_satterthwaite_df_match_lmertest(case):
    ref, fit = case
    table = fit.coef_table(dfmethod="satterthwaite")
    for name, df in ref["df_satterthwaite"].items():
        assert table.loc[name, "df"] == pytest.approx(df, rel=DF_REL), name


@pytest.mark.parametrize("name", [n for n in lme4_reference_names() if "df_kenward_roger" in load_reference(n)])
def test_kenward_roger_df_match_pbkrtest(name):
    ref = load_reference(name)
    fit = mixedfx.fit(ref["formula"], reference_data(ref), method=ref["method"].lower())
    table = fit.coef_table(dfmethod="kroger")
    for name, df in ref["df_kenward_roger"].items():
        assert table.loc[name, "df"] == pytest.approx(df, rel=DF_REL), name


def test_kenward_roger_refuses_ml(sleepstudy):
    fit = mixedfx.fit("Reaction ~ Days + (Days | Subject)", sleepstudy, method="ml")
    with pytest.raises(OptionError, match="REML"):
        fit.coef_table(dfmethod="kroger")


def test_lecture_schools_table_to_three_digits():
    """The lecture's Stata table (a slightly different data release: ~0.1-1.5% apart)."""
    fit = mixedfx.mixed(
        "mixed gcse lrt_groupc || school: lrt_groupc, cov(uns) reml stddev", mixedfx.datasets.load_exam()
    )
    coef = fit.coef_table()
    assert coef.loc["lrt_groupc", "estimate"] == pytest.approx(0.5529766, rel=2e-3)
    assert coef.loc["lrt_groupc", "se"] == pytest.approx(0.0199474, rel=2e-2)
    re = fit.re_table().set_index("parameter")
    lecture = {
        "sd(lrt_groupc)": (0.1202955, 0.0190615, 0.0881804, 0.1641069),
        "sd(_cons)": (4.220941, 0.3997349, 3.505889, 5.081833),
        "corr(lrt_groupc,_cons)": (0.5481782, 0.13837, 0.2241939, 0.7630512),
        "sd(Residual)": (7.432694, 0.0838333, 7.270187, 7.598834),
    }
    for name, (est, se, lo, hi) in lecture.items():
        row = re.loc[name]
        assert row["estimate"] == pytest.approx(est, rel=2e-2), name
        assert row["se"] == pytest.approx(se, rel=2e-2), name
        assert row["lower"] == pytest.approx(lo, rel=3e-2), name
        assert row["upper"] == pytest.approx(hi, rel=2e-2), name
    lr = fit.lr_test_vs_linear()
    assert lr.kind == "chi2" and lr.df == 3 and lr.statistic == pytest.approx(835.32, rel=5e-3)
    text = str(fit)
    assert "Mixed-effects REML regression" in text and "school: Unstructured" in text
    assert "corr(lrt_gr~c,_cons)" in text and "LR test is conservative" in text  # Stata abbreviates
    assert text.index("sd(lrt_gr~c)") < text.index("sd(_cons)")  # slopes first, as Stata


def test_children_random_intercept_icc_and_lr_test():
    fit = mixedfx.mixed(
        "mixed weight age_c age_sp girl age_c_girl age_sp_girl || id:, variance", mixedfx.datasets.load_asian()
    )
    ref = load_reference("asian_spline_intercept_ml")
    assert fit.method == "ML" and fit.loglik == pytest.approx(ref["loglik"], abs=1e-4)
    var_id = fit.G["id"].iloc[0, 0]
    icc = fit.icc()
    assert icc.loc["id", "icc"] == pytest.approx(var_id / (var_id + fit.sigma**2), rel=1e-10)
    assert icc.loc["id", "lower"] < icc.loc["id", "icc"] < icc.loc["id", "upper"]
    lr = fit.lr_test_vs_linear()
    assert lr.kind == "chibar2(01)"
    X, y = fit.design.X, fit.design.y
    rss = np.sum((y - X @ np.linalg.lstsq(X, y, rcond=None)[0]) ** 2)
    n = len(y)
    ols_loglik = -n / 2 * (1 + np.log(2 * np.pi * rss / n))
    assert lr.statistic == pytest.approx(2 * (fit.loglik - ols_loglik), rel=1e-8)
    assert lr.pvalue < 1e-10
    assert "chibar2(01)" in str(fit) and "id: Identity" in str(fit)


def test_nested_icc_levels():
    fit = mixedfx.fit("strength ~ 1 + (1 | batch/cask)", mixedfx.datasets.load_pastes())
    icc = fit.icc()
    assert list(icc.index) == ["batch", "batch|cask"]
    v_batch, v_cask = fit.G["batch"].iloc[0, 0], fit.G["cask:batch"].iloc[0, 0]
    total = v_batch + v_cask + fit.sigma**2
    assert icc.loc["batch", "icc"] == pytest.approx(v_batch / total)
    assert icc.loc["batch|cask", "icc"] == pytest.approx((v_batch + v_cask) / total)


def test_icc_refuses_random_slopes(sleepstudy):
    with pytest.raises(ValueError, match="random slopes"):
        mixedfx.fit("Reaction ~ Days + (Days | Subject)", sleepstudy).icc()


def test_within_cluster_covariance_shows_slope_heteroskedasticity(exam):
    fit = mixedfx.fit("gcse ~ lrt_groupc + (1 + lrt_groupc | school)", exam)
    V = fit.wcovariance(cluster="1")
    G = fit.G["school"].to_numpy()
    x = exam.loc[exam["school"] == "1", "lrt_groupc"].to_numpy()
    expected = G[0, 0] + 2 * G[0, 1] * x + G[1, 1] * x**2 + fit.sigma**2  # the lecture's var(xi_ij)
    np.testing.assert_allclose(np.diag(V.to_numpy()), expected, rtol=1e-12)
    R = fit.wcorrelation(cluster="1").to_numpy()
    np.testing.assert_allclose(np.diag(R), 1.0)
    assert fit.recovariance()["school"].shape == (2, 2)


def test_random_intercept_within_correlation_is_the_icc(sleepstudy):
    fit = mixedfx.fit("Reaction ~ Days + (1 | Subject)", sleepstudy)
    R = fit.wcorrelation(group="Subject", cluster="308").to_numpy()
    np.testing.assert_allclose(R[0, 1:], fit.icc().iloc[0]["icc"])


def test_lrtest_between_nested_models(exam):
    small = mixedfx.fit("gcse ~ lrt_groupc + (1 | school)", exam, method="ml")
    big = mixedfx.fit("gcse ~ lrt_groupc + (1 + lrt_groupc | school)", exam, method="ml")
    lr = mixedfx.lrtest(big, small)
    assert lr.df == 2 and lr.statistic == pytest.approx(2 * (big.loglik - small.loglik))
    table = mixedfx.compare(small, big)
    assert list(table["df"]) == [4, 6] and table["aic"].iloc[1] == pytest.approx(big.aic)
    reml_a = mixedfx.fit("gcse ~ lrt_groupc + (1 | school)", exam)
    reml_b = mixedfx.fit("gcse ~ lrt_groupc + sex + (1 | school)", exam)
    with pytest.raises(ValueError, match="REML fits with different fixed effects"):
        mixedfx.lrtest(reml_a, reml_b)
    with pytest.raises(ValueError, match="ML and the other REML"):
        mixedfx.lrtest(small, reml_b)
    with pytest.raises(ValueError, match="different observations"):
        mixedfx.lrtest(small, mixedfx.fit("gcse ~ lrt_groupc + (1 | school)", exam.iloc[:3000], method="ml"))


def test_lincom_and_wald_test():
    fit = mixedfx.mixed("weight age_c age_sp girl age_c_girl age_sp_girl || id:", mixedfx.datasets.load_asian())
    combo = fit.lincom("age_c + age_c_girl")
    L = np.zeros(len(fit.fixef))
    L[[1, 4]] = 1
    assert combo["estimate"] == pytest.approx(fit.fixef["age_c"] + fit.fixef["age_c_girl"])
    assert combo["se"] == pytest.approx(np.sqrt(L @ fit.vcov.to_numpy() @ L))
    single = fit.test("age_c_girl = 0")
    assert single["chi2"] == pytest.approx((fit.fixef["age_c_girl"] / fit.se["age_c_girl"]) ** 2)
    joint = fit.test("age_c_girl", "age_sp_girl = 0")
    assert joint["df"] == 2 and 0 < joint["p"] < 1
    same = fit.test("age_c = -age_sp")
    assert same["df"] == 1
    assert fit.lincom("2*_cons")["estimate"] == pytest.approx(2 * fit.fixef["(Intercept)"])
    with pytest.raises(OptionError, match="Unknown coefficient 'age_cc'"):
        fit.lincom("age_cc")


def test_robust_vcov_matches_dense_sandwich(sleepstudy):
    fit = mixedfx.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    block = fit.design.blocks[0]
    X, y = fit.design.X, fit.design.y
    r = y - X @ fit.fixef.to_numpy()
    bread = np.zeros((2, 2))
    scores = []
    for j in range(block.n_levels):
        rows = block.codes == j
        Z = block.Z[rows]
        V = Z @ fit.G["Subject"].to_numpy() @ Z.T + fit.sigma**2 * np.eye(rows.sum())
        Vi = np.linalg.inv(V)
        bread += X[rows].T @ Vi @ X[rows]
        scores.append(X[rows].T @ Vi @ r[rows])
    S = np.array(scores)
    B = np.linalg.inv(bread)
    expected = 18 / 17 * B @ S.T @ S @ B
    np.testing.assert_allclose(fit.robust_vcov().to_numpy(), expected, rtol=1e-8)
    table = fit.coef_table(vce="robust")
    np.testing.assert_allclose(table["se"], np.sqrt(np.diag(expected)), rtol=1e-8)
    assert "Robust SE" in fit.summary(vce="robust")


def test_variance_component_intervals_cover_the_truth():
    """Parametric simulation: 95% CIs of var(_cons) and var(Residual) cover the truth ~95% of the time."""
    rng = np.random.default_rng(2024)
    n_groups, size, tau2, sigma2, reps = 40, 8, 1.0, 1.0, 150
    g = np.repeat(np.arange(n_groups), size)
    x = rng.normal(size=g.size)
    covered = np.zeros(2)
    for _ in range(reps):
        y = 1 + 0.5 * x + rng.normal(0, np.sqrt(tau2), n_groups)[g] + rng.normal(0, np.sqrt(sigma2), g.size)
        fit = mixedfx.fit("y ~ x + (1 | g)", pd.DataFrame({"y": y, "x": x, "g": g}))
        table = fit.re_table(scale="var")
        for k, truth in enumerate([tau2, sigma2]):
            covered[k] += table["lower"].iloc[k] <= truth <= table["upper"].iloc[k]
    rate = covered / reps
    mc_error = np.sqrt(0.95 * 0.05 / reps)
    assert np.all(np.abs(rate - 0.95) < 3.5 * mc_error), rate


def test_variance_component_se_matches_simulation_spread():
    """The delta-method SE of log-SD agrees with the spread of estimates across simulated data sets."""
    base = simulate_two_level(n_groups=60, size=6, seed=11, slope=False)
    fit = mixedfx.fit("y ~ x + (1 | g)", base)
    table = fit.re_table(scale="sd")
    rng = np.random.default_rng(5)
    tau, sigma = fit.G["g"].iloc[0, 0] ** 0.5, fit.sigma
    xb = fit.predict(level="population")["prediction"].to_numpy()
    codes = fit.design.blocks[0].codes
    estimates = []
    for _ in range(120):
        y = xb + rng.normal(0, tau, 60)[codes] + rng.normal(0, sigma, len(xb))
        refit = mixedfx.fit("y ~ x + (1 | g)", base.assign(y=y))
        estimates.append(refit.re_table(scale="sd")["estimate"].to_numpy())
    spread = np.std(np.array(estimates), axis=0, ddof=1)
    np.testing.assert_allclose(table["se"].to_numpy(), spread, rtol=0.25)
