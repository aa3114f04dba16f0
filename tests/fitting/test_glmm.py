"""GLMM fits against lme4's glmer (tests/reference/make_glmm.R), and GLMM input checks.

lme4's Laplace log-likelihood uses the log-determinant of the PIRLS factor from the last
iteration's weights (one step stale), so its optimum sits slightly below the exact Laplace
optimum: ours must be at least as high and within 1e-3.  Its AGQ values (constants left out)
are compared exactly after removing our constants.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import mixedfx
from conftest import glmm_reference_names, load_reference, reference_data
from mixedfx.analysis.glmm import _marginal_mean
from mixedfx.engine.laplace import ClusteredLaplace, SparseLaplace
from mixedfx.engine.numdiff import central_hessian
from mixedfx.errors import DataError, FormulaError, OptionError
from mixedfx.fitting import glmm as glmm_fitting
from mixedfx.fitting.glmm import deviance_hessian


def _fit(ref: dict) -> mixedfx.GLMMResults:
    data = reference_data(ref)
    family = ref["family"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mixedfx.fit(ref["formula"], data, family=family, link=ref["link"], nagq=ref["nAGQ"])


@pytest.fixture(scope="module", params=glmm_reference_names())
def case(request):
    ref = load_reference(request.param)
    return ref, _fit(ref)


def _comparable_loglik(fit: mixedfx.GLMMResults, ref: dict) -> float:
    """Our log-likelihood as lme4 reports it: without constants for nAGQ > 1."""
    if ref["nAGQ"] <= 1:
        return fit.loglik
    rec = fit.record
    return fit.loglik - float(np.sum(rec.family.saturated_loglik(rec.data.y, rec.data.m)))


def test_loglik_matches_lme4(case):
    ref, fit = case
    ll = _comparable_loglik(fit, ref)
    tol = 1e-6 if ref["nAGQ"] > 1 else 1e-3
    assert ll >= ref["loglik"] - 1e-6
    assert ll <= ref["loglik"] + tol


def test_fixed_effects_and_se_match_lme4(case):
    ref, fit = case
    names = list(ref["fixef"])
    est, se = fit.fixef[names].to_numpy(), fit.se[names].to_numpy()
    ref_est, ref_se = np.array([ref["fixef"][n] for n in names]), np.array([ref["se"][n] for n in names])
    exact = ref["nAGQ"] > 1
    scale = np.maximum(np.abs(ref_est), ref_se)
    assert np.all(np.abs(est - ref_est) <= (5e-4 if exact else 2e-3) * scale), (est, ref_est)
    np.testing.assert_allclose(se, ref_se, rtol=1e-4 if exact else 2e-2)


def test_variances_match_lme4(case):
    ref, fit = case
    ours = fit.varcorr["vcov"].to_numpy()
    theirs = np.array([row["vcov"] for row in ref["varcorr"]])
    np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-4)


def test_conditional_modes_match_lme4(case):
    ref, fit = case
    for factor, values in ref["ranef"].items():
        ours = fit.ranef()[factor]
        mode = np.array(values["mode"], dtype=float).reshape(len(values["levels"]), -1)
        got = ours.loc[[str(x) for x in values["levels"]], ours.columns[: mode.shape[1]]]
        np.testing.assert_allclose(got.to_numpy(), mode, atol=5e-3 * max(1.0, np.abs(mode).max()))


def test_agq_with_one_node_is_laplace():
    data = mixedfx.datasets.load("cbpp")
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    laplace = mixedfx.fit(formula, data, family="binomial")
    ev = laplace.record
    from_quadrature = -0.5 * _quadrature(ev, 1)
    assert from_quadrature == pytest.approx(laplace.loglik, abs=1e-9)


def _quadrature(record, nodes):
    ev = ClusteredLaplace(record.data)
    mode = ev.mode(record.optimum.beta, record.theta)
    return ev.quadrature(record.optimum.beta, record.theta, mode, nodes)


def test_laplace_gradient_matches_finite_differences():
    fit = mixedfx.fit("use ~ age + urban + (1 | district)", mixedfx.datasets.load("contraception"), family="binomial")
    ev = ClusteredLaplace(fit.record.data)
    beta, theta = fit.record.optimum.beta + 0.05, fit.theta * 1.3
    _, g_theta, g_beta = ev.laplace_gradient(beta, theta)
    h = 1e-6
    numeric = [
        (ev.deviance(beta + h * e, theta) - ev.deviance(beta - h * e, theta)) / (2 * h) for e in np.eye(beta.size)
    ]
    np.testing.assert_allclose(g_beta, numeric, rtol=1e-5, atol=1e-6)
    numeric_theta = (ev.deviance(beta, theta + h) - ev.deviance(beta, theta - h)) / (2 * h)
    assert g_theta[0] == pytest.approx(numeric_theta, rel=1e-5)


@pytest.mark.parametrize("nodes", [3, 7])
def test_quadrature_gradient_matches_finite_differences(nodes):
    fit = mixedfx.fit("use ~ age + urban + (1 | district)", mixedfx.datasets.load("contraception"), family="binomial")
    ev = ClusteredLaplace(fit.record.data)
    beta, theta = fit.record.optimum.beta + 0.05, fit.theta * 1.3
    value, g_theta, g_beta = ev.quadrature_gradient(beta, theta, nodes)
    assert value == pytest.approx(ev.deviance(beta, theta, nodes), abs=1e-9)
    h = 1e-6
    numeric = [
        (ev.deviance(beta + h * e, theta, nodes) - ev.deviance(beta - h * e, theta, nodes)) / (2 * h)
        for e in np.eye(beta.size)
    ]
    np.testing.assert_allclose(g_beta, numeric, rtol=1e-5, atol=1e-6)
    numeric_theta = (ev.deviance(beta, theta + h, nodes) - ev.deviance(beta, theta - h, nodes)) / (2 * h)
    assert g_theta[0] == pytest.approx(numeric_theta, rel=1e-5)


def test_poisson_quadrature_gradient_matches_finite_differences():
    ref = load_reference("poisson_exposure_agq7")
    fit = mixedfx.fit(ref["formula"], reference_data(ref), family="poisson", nagq=7)
    ev = ClusteredLaplace(fit.record.data)
    beta, theta = fit.record.optimum.beta - 0.03, fit.theta * 0.8
    _, g_theta, g_beta = ev.quadrature_gradient(beta, theta, 7)
    h = 1e-6
    numeric = [
        (ev.deviance(beta + h * e, theta, 7) - ev.deviance(beta - h * e, theta, 7)) / (2 * h) for e in np.eye(beta.size)
    ]
    np.testing.assert_allclose(g_beta, numeric, rtol=1e-5, atol=1e-6)
    numeric_theta = (ev.deviance(beta, theta + h, 7) - ev.deviance(beta, theta - h, 7)) / (2 * h)
    assert g_theta[0] == pytest.approx(numeric_theta, rel=1e-5)


@pytest.mark.parametrize(
    "dataset, formula, family",
    [
        ("verbagg", "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", "binomial"),
        ("grouseticks", "TICKS ~ YEAR + cHEIGHT + (1 | INDEX) + (1 | BROOD) + (1 | LOCATION)", "poisson"),
    ],
)
def test_sparse_laplace_gradient_matches_finite_differences(dataset, formula, family):
    """Crossed and nested scalar factors: the analytic gradient through selected entries of H^-1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = mixedfx.fit(formula, mixedfx.datasets.load(dataset), family=family)
    ev = SparseLaplace(fit.record.data)
    assert ev.has_gradient
    beta, theta = fit.record.optimum.beta + 0.05, fit.theta * 1.2 + 0.05
    value, g_theta, g_beta = ev.laplace_gradient(beta, theta)
    assert value == pytest.approx(ev.deviance(beta, theta), abs=1e-9)
    h = 1e-4  # central differences: error O(h^2) here, PIRLS noise / h below it
    numeric_beta = [
        (ev.deviance(beta + h * e, theta) - ev.deviance(beta - h * e, theta)) / (2 * h) for e in np.eye(beta.size)
    ]
    numeric_theta = [
        (ev.deviance(beta, theta + h * e) - ev.deviance(beta, theta - h * e)) / (2 * h) for e in np.eye(theta.size)
    ]
    np.testing.assert_allclose(g_beta, numeric_beta, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_theta, numeric_theta, rtol=1e-6, atol=1e-6)


def test_sparse_gradient_is_not_claimed_for_a_random_slope():
    data = mixedfx.datasets.load("contraception")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = mixedfx.fit("use ~ age + urban + (1 + urban | district) + (1 | livch)", data, family="binomial")
    ev = SparseLaplace(fit.record.data)
    assert not ev.has_gradient and ev.laplace_gradient(fit.record.optimum.beta, fit.theta) is None


def test_stata_melogit_defaults_to_seven_points():
    data = mixedfx.datasets.load("contraception")
    fit = mixedfx.melogit("use age urban livch || district:", data)
    assert fit.nagq == 7
    same = mixedfx.fit("use ~ age + urban + livch + (1 | district)", data, family="binomial", nagq=7)
    assert fit.loglik == pytest.approx(same.loglik, abs=1e-9)
    assert fit.loglik > mixedfx.fit("use ~ age + urban + livch + (1 | district)", data, family="binomial").loglik
    assert "Odds Ratio" in mixedfx.melogit("use age || district:, or", mixedfx.datasets.load("contraception")).summary()


def test_mepoisson_exposure_is_an_offset():
    ref = load_reference("poisson_exposure_laplace")
    data = reference_data(ref)
    fit = mixedfx.mepoisson("y x, exposure(exposure) || g:, laplace irr", data)
    assert fit.loglik == pytest.approx(ref["loglik"], abs=1e-3)
    assert "IRR" in fit.summary()


def test_bernoulli_proportion_and_cbind_agree():
    cbpp = mixedfx.datasets.load("cbpp")
    counts = mixedfx.fit("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    cbpp["prop"] = cbpp["incidence"] / cbpp["size"]
    prop = mixedfx.fit("prop ~ period + (1 | herd)", cbpp, family="binomial", weights="size")
    assert prop.loglik == pytest.approx(counts.loglik, abs=1e-8)
    rows = cbpp.loc[cbpp.index.repeat(cbpp["size"])].copy()
    rows["y"] = np.concatenate([np.r_[np.ones(k), np.zeros(m - k)] for k, m in zip(cbpp["incidence"], cbpp["size"])])
    bern = mixedfx.fit("y ~ period + (1 | herd)", rows, family="bernoulli")
    np.testing.assert_allclose(bern.fixef, counts.fixef, atol=1e-5)


def test_predictions_conditional_fixed_marginal():
    fit = mixedfx.fit("use ~ age + urban + (1 | district)", mixedfx.datasets.load("contraception"), family="binomial")
    conditional = fit.predict()["prediction"]
    np.testing.assert_allclose(conditional, fit.record.family.mean(fit.record.eta))
    fixed = fit.predict(level="fixed", kind="link", interval=True)
    assert (fixed["lower"] < fixed["prediction"]).all() and (fixed["prediction"] < fixed["upper"]).all()
    marginal = fit.predict(level="marginal")["prediction"]
    at_zero = fit.record.family.mean(fixed["prediction"])
    # averaging a logistic curve over random intercepts pulls probabilities towards 1/2
    assert ((marginal - 0.5).abs() <= (at_zero - 0.5).abs() + 1e-12).all()
    new = pd.DataFrame({"age": [0.0], "urban": ["Y"], "district": ["no such district"]})
    assert fit.predict(new, level="conditional")["prediction"].iloc[0] == pytest.approx(
        fit.predict(new, level="fixed")["prediction"].iloc[0]
    )


def test_lr_test_and_icc():
    fit = mixedfx.fit("use ~ age + urban + (1 | district)", mixedfx.datasets.load("contraception"), family="binomial")
    lr = fit.lrtest_vs_glm()
    assert lr.kind == "chibar2(01)" and lr.statistic > 0
    var = fit.G["district"].iloc[0, 0]
    assert fit.icc()["icc"].iloc[0] == pytest.approx(var / (var + np.pi**2 / 3))


@pytest.mark.parametrize(
    "formula, data, family, error, match",
    [
        ("y ~ x + (1 | g)", {"y": [0, 1, 2, 0], "x": [1, 2, 3, 4], "g": list("aabb")}, "bernoulli", DataError, "0/1"),
        ("y ~ x + (1 | g)", {"y": [0, -1, 2, 0], "x": [1, 2, 3, 4], "g": list("aabb")}, "poisson", DataError, ">= 0"),
        ("y ~ x + (1 | g)", {"y": [0, 0, 0, 0], "x": [1, 2, 3, 4], "g": list("aabb")}, "bernoulli", DataError, "only"),
        ("y ~ x + (1 | g)", {"y": list("abca"), "x": [1, 2, 3, 4], "g": list("aabb")}, "binomial", DataError, "two"),
        ("y ~ x + (1 | g)", {"y": [0, 1, 0, 1], "x": [1, 2, 3, 4], "g": list("aabb")}, "gamma", OptionError, "family"),
        ("cbind(y, n - y) ~ x + (1 | g)", {"y": [0, 1, 0, 1], "n": [1, 0, 1, 2], "x": [1, 2, 3, 4], "g": list("aabb")},
         "binomial", DataError, "failures|count"),
    ],
)  # fmt: skip
def test_bad_input_is_refused(formula, data, family, error, match):
    with pytest.raises(error, match=match):
        mixedfx.fit(formula, pd.DataFrame(data), family=family)


def test_cbind_needs_a_family_and_quadrature_one_factor():
    cbpp = mixedfx.datasets.load("cbpp")
    with pytest.raises(FormulaError, match="family"):
        mixedfx.fit("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp)
    verb = mixedfx.datasets.load("verbagg")
    with pytest.raises(OptionError, match="one grouping factor"):
        mixedfx.fit("r2 ~ Anger + (1 | id) + (1 | item)", verb, family="binomial", nagq=7)


def test_non_integer_counts_warn():
    rng = np.random.default_rng(3)
    data = pd.DataFrame({"y": rng.poisson(3, 60) + 0.5, "x": rng.normal(size=60), "g": np.repeat(np.arange(12), 5)})
    with pytest.warns(UserWarning, match="non-integer"):
        mixedfx.fit("y ~ x + (1 | g)", data, family="poisson")


def test_separation_warns():
    rng = np.random.default_rng(4)
    x = rng.normal(size=200)
    data = pd.DataFrame({"y": (x > 0).astype(float), "x": x, "g": np.repeat(np.arange(20), 10)})
    with pytest.warns(UserWarning, match="separated"):
        mixedfx.fit("y ~ x + (1 | g)", data, family="bernoulli")


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"family": "binomial", "link": "log"}, OptionError, "link 'log'"),
        ({"family": "poisson", "link": "logit"}, OptionError, "link 'logit'"),
        ({"family": "bernoulli", "weights": "n"}, FormulaError, "one trial per row"),
        ({"family": "binomial", "nagq": -1}, OptionError, "nagq"),
        ({"family": "binomial", "nagq": 2.5}, OptionError, "nagq"),
    ],
)
def test_bad_options_are_refused(options, error, match):
    data = pd.DataFrame({"y": [0, 1, 0, 1, 1, 0], "n": [1] * 6, "x": np.arange(6.0), "g": list("aabbcc")})
    with pytest.raises(error, match=match):
        mixedfx.fit("y ~ x + (1 | g)", data, **options)


def test_cbind_with_weights_is_refused():
    cbpp = mixedfx.datasets.load("cbpp")
    with pytest.raises(FormulaError, match="give no weights"):
        mixedfx.fit("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial", weights="size")


@pytest.mark.parametrize(
    "command, match",
    [
        ("melogit use age || district:, intpoints(0)", "intpoints"),
        ("melogit use age || district:, exposure(age)", "exposure"),
        ("melogit use age || district:, offset(1+age)", "variable"),
    ],
)
def test_bad_stata_options_are_refused(command, match):
    with pytest.raises(OptionError, match=match):
        mixedfx.mixed(command, mixedfx.datasets.load("contraception"))


def test_cluster_with_only_zeros_has_a_finite_mode_shrunk_below_the_others():
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(30), 20)
    y = (rng.random(g.size) < 1 / (1 + np.exp(-rng.normal(0, 1, 30)[g]))).astype(float)
    y[g == 0] = 0.0
    fit = mixedfx.fit("y ~ 1 + (1 | g)", pd.DataFrame({"y": y, "g": g}), family="bernoulli")
    modes = fit.ranef()["g"]
    first = modes.iloc[0]
    assert np.isfinite(first.to_numpy(dtype=float)).all()
    # all 20 rows 0: the lowest mode, yet finite (the penalty keeps it off -inf)
    assert first.iloc[0] == modes.iloc[:, 0].min() and first.iloc[0] > -10


def test_covariance_from_gradient_differences_matches_deviance_differences():
    """The fixed-effects covariance comes from differences of the analytic gradient; the
    four-point Hessian of the deviance itself gives the same matrix."""
    fit = mixedfx.fit("use ~ age + urban + (1 | district)", mixedfx.datasets.load("contraception"), family="binomial")
    rec = fit.record
    ev = ClusteredLaplace(rec.data)
    x = np.concatenate([rec.theta, rec.optimum.beta])
    k = rec.theta.size
    lower = np.zeros(k)
    H_gradient, free = deviance_hessian(ev, x, k, 1, lower)
    steps = 1e-4 * np.maximum(np.abs(x), 1.0)
    H_values = central_hessian(lambda p: ev.deviance(p[k:], p[:k]), x, steps, free)
    np.testing.assert_allclose(H_gradient, H_values, rtol=1e-4, atol=1e-4)


def test_wald_intervals_cover_the_truth_in_simulation():
    """Seeded simulation of a random-intercept logit model (60 clusters of 15, var(u) = 0.5):
    95% Wald intervals of the fixed effects cover the true values in 95% of 200 data sets
    (binomial SD 1.5%), and the mean estimate of var(u) is within 15% of the truth."""
    rng = np.random.default_rng(20261204)
    truth = np.array([-0.3, 0.8])
    clusters, size, var_u, reps = 60, 15, 0.5, 200
    g = np.repeat(np.arange(clusters), size).astype(str)
    covered, variances = np.zeros(2), []
    for _ in range(reps):
        x = rng.normal(size=g.size)
        eta = (
            truth[0]
            + truth[1] * x
            + rng.normal(scale=np.sqrt(var_u), size=clusters)[np.repeat(np.arange(clusters), size)]
        )
        y = rng.binomial(1, 1.0 / (1.0 + np.exp(-eta)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = mixedfx.fit("y ~ x + (1 | g)", pd.DataFrame({"y": y, "x": x, "g": g}), family="bernoulli")
        table = fit.coef_table()
        low, high = table["lower"].to_numpy(), table["upper"].to_numpy()
        covered += (low <= truth) & (truth <= high)
        variances.append(float(fit.varcorr["vcov"].iloc[0]))
    coverage = covered / reps
    assert np.all((coverage >= 0.91) & (coverage <= 0.985)), coverage
    assert abs(np.mean(variances) / var_u - 1.0) < 0.15, np.mean(variances)


@pytest.mark.parametrize("family, formula", [("binomial", "use ~ age + urban + (1 | district)"), ("poisson", None)])
def test_marginal_mean_intervals_are_the_delta_method_in_beta(family, formula):
    """se of E[g^-1(x'b + sqrt(v) z)] equals central differences of it in b through vcov; the
    interval (on the logit/log of the mean) contains the mean and stays in range."""
    if family == "binomial":
        fit = mixedfx.fit(formula, mixedfx.datasets.load("contraception"), family=family)
    else:
        ref = load_reference("poisson_exposure_laplace")
        fit = mixedfx.fit(ref["formula"], reference_data(ref), family=family)
    rec = fit.record
    out = fit.predict(kind="response", level="marginal", interval=True)
    X, offset = rec.design.X, np.zeros(rec.nobs) if rec.design.offset is None else rec.design.offset
    v = np.full(rec.nobs, float(next(iter(rec.G.values())).iloc[0, 0]))
    b, h = rec.fixef.to_numpy(), 1e-6
    J = np.column_stack(
        [
            (_marginal_mean(rec, offset + X @ (b + h * e), v) - _marginal_mean(rec, offset + X @ (b - h * e), v))
            / (2 * h)
            for e in np.eye(b.size)
        ]
    )
    se = np.sqrt(np.einsum("ij,jk,ik->i", J, rec.vcov.to_numpy(), J))
    np.testing.assert_allclose(out["se"].to_numpy(), se, rtol=1e-6)
    assert ((out["lower"] < out["prediction"]) & (out["prediction"] < out["upper"])).all()
    assert (out["lower"] > 0).all() and (family == "poisson" or (out["upper"] < 1).all())


def _crossed_counts(seed: int, sd_b: float, family: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 3000
    a, b, x = rng.integers(0, 300, n), rng.integers(0, 15, n), rng.normal(size=n)
    eta = -0.3 + 0.5 * x + rng.normal(scale=0.7, size=300)[a] + rng.normal(scale=sd_b, size=15)[b]
    y = rng.binomial(1, 1 / (1 + np.exp(-eta))) if family == "bernoulli" else rng.poisson(np.exp(eta))
    return pd.DataFrame({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str)})


@pytest.mark.parametrize(
    "seed, sd_b, family, formula",
    [
        (0, 0.4, "poisson", "y ~ x + (1 | a) + (1 | b)"),
        (3, 0.0, "bernoulli", "y ~ x + (1 | b/a)"),  # finite differences stop at var(b) = 0 here
        (1, 0.0, "poisson", "y ~ x + (1 | a) + (1 | b)"),
    ],
)
def test_sparse_analytic_gradient_fit_is_at_least_as_good_as_finite_differences(
    seed, sd_b, family, formula, monkeypatch
):
    data = _crossed_counts(seed, sd_b, family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analytic = mixedfx.fit(formula, data, family=family)
        monkeypatch.setattr(glmm_fitting, "has_analytic_gradient", lambda ev, nagq: False)
        numeric = mixedfx.fit(formula, data, family=family)
    assert analytic.loglik >= numeric.loglik - 1e-8
    assert analytic.converged
