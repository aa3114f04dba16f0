"""Residual covariance structures: nlme references, dense likelihood checks, equivalences, errors."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from statsmodels.tsa.arima_process import arma_acf

import mixedfx
from conftest import load_reference
from mixedfx.cli import main
from mixedfx.errors import DataError, OptionError
from mixedfx.fitting.rside import bound_description
from mixedfx.spec.residuals import parse_residuals


def _loglik_at(fit, G: np.ndarray, sigma: float, u: np.ndarray) -> float:
    """Our log-likelihood at given parameters (G on the original scale, residual SD, R-side u)."""
    record = fit.record
    theta = record.deviance.engine_theta([G / sigma**2])
    inner = fit.rside.model.inner(u)
    return -0.5 * record.deviance_to_original_scale(inner.deviance_at(theta, (sigma / record.scaling.y_scale) ** 2))


def test_ar1_matches_nlme_and_improves_on_its_optimum(sleepstudy):
    ref = load_reference("sleepstudy_ar1_reml")
    fit = mixedfx.fit("Reaction ~ Days + (1 | Subject)", sleepstudy, residuals="ar1, t(Days)")
    at_nlme = _loglik_at(
        fit, np.array(ref["G"]["Subject"]), ref["sigma"], np.array([np.arctanh(ref["corStruct"]["Phi"])])
    )
    assert at_nlme == pytest.approx(ref["loglik"], abs=1e-6)  # same likelihood as nlme at nlme's estimates
    assert fit.loglik >= ref["loglik"] - 1e-7  # and our optimum is at least as high (here by 5e-6)
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(ref["fixef"].values()), rtol=1e-4)
    np.testing.assert_allclose(fit.se.to_numpy(), list(ref["se"].values()), rtol=1e-3)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-3)
    assert fit.G["Subject"].iloc[0, 0] == pytest.approx(ref["G"]["Subject"][0][0], rel=2e-3)
    assert fit.rside.natural()[0] == pytest.approx(ref["corStruct"]["Phi"], rel=1e-3)


def test_varident_matches_nlme_and_improves_on_its_optimum(exam):
    ref = load_reference("exam_varident_sex_reml")
    fit = mixedfx.fit("gcse ~ lrt_groupc + (1 + lrt_groupc | school)", exam, residuals="independent, by(sex)")
    at_nlme = _loglik_at(fit, np.array(ref["G"]["school"]), ref["sigma"], np.array([np.log(ref["varStruct"]["M"])]))
    assert at_nlme == pytest.approx(ref["loglik"], abs=1e-6)
    assert fit.loglik > ref["loglik"]  # nlme stopped 2.8e-3 below the optimum
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(ref["fixef"].values()), rtol=2e-3)
    np.testing.assert_allclose(fit.se.to_numpy(), list(ref["se"].values()), rtol=3e-3)
    assert fit.rside.natural()[0] == pytest.approx(ref["varStruct"]["M"], rel=1e-3)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-3)


# ---------------------------------------------------------------------------- dense checks
def _ma_coefficients(pacf):
    """Invertible MA coefficients from partial autocorrelations (Durbin-Levinson, written out)."""
    phi = []
    for k, r in enumerate(pacf):
        phi = [phi[j] - r * phi[k - 1 - j] for j in range(k)] + [r]
    return -np.array(phi)


def _correlation(kind, t, u, order=0, occasions=None):
    d = np.abs(t[:, None] - t[None, :])
    n = len(t)
    if kind == "independent":
        return np.eye(n)
    if kind == "exchangeable":
        return np.where(d == d.T, np.tanh(u[0]), 0) * (1 - np.eye(n)) + np.eye(n)
    if kind == "ar1":
        return np.tanh(u[0]) ** d
    if kind == "exponential":  # rho = exp(-1 / range), range = (median consecutive gap) * exp(u)
        return np.exp(-d * np.exp(-u[0]) / _median_gap())
    if kind == "ma1":
        return np.eye(n) + (d == 1) * 0.5 * np.tanh(u[0])
    if kind == "toeplitz":  # MA(order) with partial autocorrelations tanh(u), autocorrelations from statsmodels
        rho = arma_acf([1.0], np.r_[1.0, _ma_coefficients(np.tanh(u[:order]))], lags=order + 1)
        return np.eye(n) + sum((d == k) * rho[k] for k in range(1, order + 1))
    idx = np.searchsorted(occasions, t)
    m = len(occasions)
    sd = np.r_[1.0, np.exp(u[: m - 1])][idx]
    L = np.eye(m)
    rows, cols = np.tril_indices(m, -1)
    band = rows - cols <= (order if kind == "banded" else m)
    L[rows[band], cols[band]] = u[m - 1 :]
    S = L @ L.T
    full = S / np.sqrt(np.outer(np.diag(S), np.diag(S)))
    return full[np.ix_(idx, idx)] * np.outer(sd, sd)


def _median_gap(seed=0):
    gaps = _data(seed).sort_values(["g", "tc"]).groupby("g")["tc"].diff().dropna()
    return float(np.median(gaps[gaps > 0]))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(9):
        times = np.sort(rng.choice(np.arange(1, 6), size=rng.integers(3, 6), replace=False))
        for t in times:
            rows.append((g, t, rng.normal(), rng.choice(["a", "b"]), rng.uniform(0.5, 2)))
    d = pd.DataFrame(rows, columns=["g", "t", "x", "s", "v"])
    d["y"] = 1 + d["x"] + rng.normal(size=9)[d["g"]] + rng.normal(size=len(d))
    d["tc"] = d["t"] + rng.uniform(0, 0.9, len(d))  # continuous time
    return d


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize(
    "spec, nu",
    [
        ("independent, by(s)", 1),
        ("exchangeable", 1),
        ("ar1, t(t)", 1),
        ("ma1, t(t)", 1),
        ("toeplitz 2, t(t)", 2),
        ("banded 1, t(t)", 8),
        ("unstructured, t(t)", 14),
        ("exponential, t(tc)", 1),
        ("ar1, t(t) by(s)", 3),
    ],
)
def test_deviance_equals_dense_likelihood(spec, nu, reml):
    data = _data()
    fit = mixedfx.fit("y ~ x + (1 | g)", data, residuals=spec, method="reml" if reml else "ml")
    rng = np.random.default_rng(1)
    params = np.r_[rng.uniform(0.3, 1.5), rng.uniform(-0.25, 0.25, nu)]  # small: every R_i positive definite
    ours = fit.record.deviance_to_original_scale(fit.rside.model(params))
    parsed = parse_residuals(spec)
    structure = fit.rside.model.structure
    kind, time = parsed.kind, parsed.time or "t"
    lam = fit.record.deviance.original_lambdas(params[:1])[0]
    n = len(data)
    V = np.zeros((n, n))
    occasions = np.unique(data[time])
    for _g, rows in data.groupby("g").groups.items():
        idx = np.array([data.index.get_loc(r) for r in rows])
        t = data[time].to_numpy()[idx]
        if parsed.by:
            levels = data[parsed.by].to_numpy()[idx]
            u_by = params[1:]
            group = (levels[0] == "b") * 1
            per = 1 if kind in ("ar1",) else 0
            u_corr = u_by[group * per : group * per + per] if per else u_by
            C = _correlation(kind, t, u_corr, parsed.order, occasions)
            ratio = np.where(levels == "b", np.exp(u_by[-1]), 1.0)
            R = C * np.outer(ratio, ratio)
        else:
            R = _correlation(kind, t, params[1:], parsed.order, occasions)
        V[np.ix_(idx, idx)] = lam[0, 0] ** 2 + R
    X = np.column_stack([np.ones(n), data["x"]])
    y = data["y"].to_numpy()
    Vi_X = np.linalg.solve(V, X)
    beta = np.linalg.solve(X.T @ Vi_X, Vi_X.T @ y)
    r = y - X @ beta
    dof = n - 2 if reml else n
    s2 = r @ np.linalg.solve(V, r) / dof
    dense = np.linalg.slogdet(V)[1] + dof * (1 + np.log(2 * np.pi * s2))
    if reml:
        dense += np.linalg.slogdet(X.T @ Vi_X)[1]
    assert structure.n_params == nu
    assert ours == pytest.approx(dense, rel=1e-9)


def test_power_and_exponential_variance_functions_match_dense():
    data = _data(2)
    for kind, fn in [("power", lambda v, d: np.abs(v) ** d), ("exp", lambda v, d: np.exp(d * v))]:
        fit = mixedfx.fit("y ~ x + (1 | g)", data, variance=(kind, "v"), method="ml")
        params = np.array([0.8, 0.4])
        ours = fit.record.deviance_to_original_scale(fit.rside.model(params))
        n = len(data)
        sd = fn(data["v"].to_numpy(), 0.4)
        same = data["g"].to_numpy()[:, None] == data["g"].to_numpy()[None, :]
        lam = fit.record.deviance.original_lambdas(params[:1])[0][0, 0]
        V = lam**2 * same + np.diag(sd**2)
        X = np.column_stack([np.ones(n), data["x"]])
        y = data["y"].to_numpy()
        beta = np.linalg.solve(X.T @ np.linalg.solve(V, X), X.T @ np.linalg.solve(V, y))
        r = y - X @ beta
        dense = np.linalg.slogdet(V)[1] + n * (1 + np.log(2 * np.pi * (r @ np.linalg.solve(V, r)) / n))
        assert ours == pytest.approx(dense, rel=1e-9)


def test_marginal_exchangeable_equals_random_intercept(sleepstudy):
    marginal = mixedfx.fit("Reaction ~ Days", sleepstudy, residuals="exchangeable", group="Subject")
    mixed = mixedfx.fit("Reaction ~ Days + (1 | Subject)", sleepstudy)
    assert marginal.loglik == pytest.approx(mixed.loglik, abs=1e-6)  # compound symmetry, rho >= 0
    rho = marginal.rside.natural()[0]
    assert rho == pytest.approx(mixed.icc().iloc[0]["icc"], rel=1e-4)
    assert "Marginal (no random effects) REML regression" in marginal.summary()
    stata = mixedfx.mixed("Reaction Days || Subject:, noconstant residuals(exchangeable) reml", sleepstudy)
    assert stata.loglik == pytest.approx(marginal.loglik, abs=1e-8)
    R = marginal.wcorrelation(cluster="308").to_numpy()
    np.testing.assert_allclose(R[~np.eye(10, dtype=bool)], rho)  # compound symmetry
    assert marginal.ranef() == {} and len(marginal.predict(sleepstudy.head(3))) == 3


def test_marginal_model_report(sleepstudy, tmp_path):
    fit = mixedfx.fit("Reaction ~ Days", sleepstudy, residuals="toeplitz 2, t(Days)", group="Subject")
    html = fit.report(tmp_path / "m.html", x="Days", time="Days", progress=False).read_text()
    assert "Residual: Toeplitz 2" in html and "no random effects" in html


def test_children_autocorrelation_and_lr_test_against_exponential():
    asian = mixedfx.datasets.load_asian().drop_duplicates(["id", "age"])  # child 4326's visit is recorded twice
    formula = "weight ~ age_c + age_sp + girl + age_c_girl + age_sp_girl + (1 | id)"
    plain = mixedfx.fit(formula, asian, method="ml")
    table = mixedfx.autocorrelation(plain.residuals(level="population"), asian["occ"], asian["id"])
    assert table.matrix.shape == (5, 5)
    expo = mixedfx.fit(formula, asian, method="ml", residuals="exponential, t(age)")
    rho = expo.rside.natural()[0]
    assert 0 < rho < 1
    lr = mixedfx.lrtest(plain, expo)
    assert lr.df == 1 and lr.statistic == pytest.approx(2 * (expo.loglik - plain.loglik))
    assert expo.loglik >= plain.loglik - 1e-8  # the exponential structure nests independence (rho -> 0)
    within = expo.wcorrelation(cluster="45")
    assert within.shape[0] == (asian["id"] == 45).sum() and np.allclose(np.diag(within), 1)


def test_table_json_and_cli(sleepstudy, capsys):
    fit = mixedfx.fit("Reaction ~ Days + (1 | Subject)", sleepstudy, residuals="ar1, t(Days)")
    table = fit.re_table(scale="sd").set_index("parameter")
    assert table.loc["rho", "structure"] == "AR(1)"
    assert table.loc["rho", "lower"] < table.loc["rho", "estimate"] < table.loc["rho", "upper"]
    assert "Residual: AR(1)" in fit.summary()
    assert main(["fit", "sleepstudy", "Reaction ~ Days + (1 | Subject)", "--residuals", "ar1, t(Days)", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["residuals"]["type"] == "ar1"
    assert out["residuals"]["parameters"]["rho"] == pytest.approx(fit.rside.natural()[0])
    assert out["lr_test_vs_linear"]["df"] == 2
    rows = {r["parameter"]: r for r in out["random_effects_parameters"]}
    assert rows["rho"]["se"] > 0 and rows["rho"]["lower"] < rows["rho"]["estimate"] < rows["rho"]["upper"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("arma", "Unknown residual structure"),
        ("toeplitz", "needs its order"),
        ("exponential", "needs a time"),
        ("ar1, t(Days) foo(x)", "Unknown residuals() option"),
        ("ar1 2", "Unexpected"),
    ],
)
def test_specification_errors(text, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_residuals(text)


def test_data_and_option_errors(sleepstudy, tmp_path):
    with pytest.raises(DataError, match="Unknown variable 'Dayz'"):
        mixedfx.fit("Reaction ~ Days + (1 | Subject)", sleepstudy, residuals="ar1, t(Dayz)")
    noisy = sleepstudy.assign(t=sleepstudy["Days"] + 0.5 * (sleepstudy.index % 2))
    with pytest.raises(DataError, match="integer occasions"):
        mixedfx.fit("Reaction ~ Days + (1 | Subject)", noisy, residuals="ar1, t(t)")
    dup = sleepstudy.assign(t=sleepstudy["Days"] // 2)
    with pytest.raises(DataError, match="two observations at the same"):
        mixedfx.fit("Reaction ~ Days + (1 | Subject)", dup, residuals="ar1, t(t)")
    with pytest.raises(OptionError, match="weights"):
        mixedfx.fit("Reaction ~ Days + (1 | Subject)", sleepstudy, residuals="ar1", weights=np.ones(180))
    with pytest.raises(OptionError, match="rows in memory"):
        mixedfx.fit("Reaction ~ Days + (1 | Subject)", tmp_path / "x.parquet", residuals="ar1", engine="duckdb")
    fit = mixedfx.fit("Reaction ~ Days + (1 | Subject)", sleepstudy, residuals="ar1, t(Days)")
    with pytest.raises(OptionError, match="residual structure"):
        fit.coef_table(dfmethod="kroger")
    with pytest.raises(mixedfx.errors.FormulaError, match="group="):
        mixedfx.fit("Reaction ~ Days", sleepstudy, residuals="ar1")


@pytest.mark.parametrize("order, loglik", [(1, -904.842), (2, -885.628), (3, -879.503)])
def test_marginal_toeplitz_reaches_the_maximum(sleepstudy, order, loglik):
    """Toeplitz K (as MA(K), positive definite everywhere) on sleepstudy: the REML optima that a direct
    maximisation of the same likelihood reaches (issue #20), not the starting values."""
    fit = mixedfx.fit("Reaction ~ Days", sleepstudy, residuals=f"toeplitz {order}, t(Days)", group="Subject")
    assert fit.converged and fit.optimum.moved
    assert fit.loglik == pytest.approx(loglik, abs=1e-3)
    assert fit.loglik > loglik - 1e-3


def test_toeplitz_1_is_ma1(sleepstudy):
    a = mixedfx.fit("Reaction ~ Days", sleepstudy, residuals="toeplitz 1, t(Days)", group="Subject")
    b = mixedfx.fit("Reaction ~ Days", sleepstudy, residuals="ma1, t(Days)", group="Subject")
    assert a.loglik == pytest.approx(b.loglik, abs=1e-7)
    assert a.rside.natural()[0] == pytest.approx(b.rside.natural()[0], abs=1e-5)


def test_toeplitz_order_beyond_the_occasions_is_refused(sleepstudy):
    with pytest.raises(DataError, match="toeplitz 10 needs more than 10 occasions"):
        mixedfx.fit("Reaction ~ Days", sleepstudy, residuals="toeplitz 10, t(Days)", group="Subject")


def test_a_fit_that_did_not_move_prints_no_estimates(sleepstudy):
    with pytest.warns(Warning):
        fit = mixedfx.fit("Reaction ~ Days", sleepstudy, residuals="ar1, t(Days)", group="Subject", max_iterations=0)
    assert not fit.converged and not fit.optimum.moved
    text = str(fit.summary())
    assert "did not move from its starting values" in text and "Coef." not in text


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("name", ["toeplitz1", "toeplitz2", "toeplitz3", "unstructured4"])
def test_marginal_structures_match_nlme_gls(sleepstudy, name, method):
    """nlme gls with corARMA(q = K) (Stata's toeplitz K) and corSymm + varIdent (unstructured)."""
    ref = load_reference("sleepstudy_gls_nlme")[f"{name}_{method}"]
    if name.startswith("toeplitz"):
        data, spec = sleepstudy, f"toeplitz {name[-1]}, t(Days)"
    else:
        data, spec = sleepstudy[sleepstudy["Days"] <= 3], "unstructured, t(Days)"
    fit = mixedfx.fit("Reaction ~ Days", data, residuals=spec, group="Subject", method=method.lower())
    assert fit.converged
    assert fit.loglik > ref["loglik"] - 1e-4 and fit.loglik == pytest.approx(ref["loglik"], abs=1e-4)
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(ref["fixef"].values()), rtol=1e-4)
    # nlme's gls scales the ML covariance of beta by n / (n - p); ours is the ML one, as lme4's
    n, p = fit.nobs, len(fit.fixef)
    dof = 1.0 if method == "REML" else np.sqrt((n - p) / n)
    np.testing.assert_allclose(fit.se.to_numpy(), np.array(list(ref["se"].values())) * dof, rtol=1e-3)
    natural = fit.rside.natural()
    if name.startswith("toeplitz"):
        np.testing.assert_allclose(natural, ref["rho"], rtol=1e-3, atol=1e-4)
    else:
        labels = fit.rside.labels
        corr = [v for v, label in zip(natural, labels) if label.startswith("corr")]
        np.testing.assert_allclose(sorted(corr), sorted(ref["corr"]), rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("case", ["linear_REML", "spline_ML"])
def test_car1_random_intercept_matches_nlme_and_escapes_the_boundary_optimum(case):
    """nlme lme + corExp (Stata's exponential, rho = exp(-1/range)) on the growth data.

    For ``weight ~ age`` the likelihood has a boundary optimum (var(id) = 0, rho = .19, loglik
    -2777.857) beside the interior one (-2776.269) that the default start runs into.
    """
    ref = load_reference("asian_car1_nlme")[case]
    asian = mixedfx.datasets.load_asian().drop_duplicates(["id", "age"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no singular-fit or convergence warning
        fit = mixedfx.fit(f"{ref['formula']} + (1 | id)", asian, residuals="exponential, t(age)",
                          method=ref["method"].lower())  # fmt: skip
    assert fit.nobs == ref["nobs"]
    assert fit.loglik > ref["loglik"] - 1e-6 and fit.loglik == pytest.approx(ref["loglik"], abs=1e-4)
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(ref["fixef"].values()), rtol=1e-4)
    np.testing.assert_allclose(fit.se.to_numpy(), list(ref["se"].values()), rtol=2e-3)
    assert fit.G["id"].iloc[0, 0] == pytest.approx(ref["var_id"], rel=2e-3)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-3)
    assert fit.rside.natural()[0] == pytest.approx(ref["rho"], rel=5e-3, abs=1e-5)


def test_a_duplicated_visit_names_its_cluster_and_rows():
    asian = mixedfx.datasets.load_asian()  # child 4326 was weighed twice at the same age
    with pytest.raises(DataError, match=r"Cluster 4326 of 'id' has two observations at the same age .*rows 1323, 1324"):
        mixedfx.fit("weight ~ age + (1 | id)", asian, residuals="exponential, t(age)")
    fit = mixedfx.fit("weight ~ age + (1 | id)", asian.drop_duplicates(["id", "age"]), residuals="exponential, t(age)")
    assert fit.converged


def test_exponential_reaches_independence_and_says_so():
    """rho -> 0 is inside the exponential's parameter space (log range), whatever the unit of time."""
    data = _data()
    for unit in (1.0, 0.01):  # time in days or in hundreds of days: the same fit
        scaled = data.assign(tc=data["tc"] * unit)
        fit = mixedfx.fit("y ~ x + (1 | g)", scaled, residuals="exponential, t(tc)", method="ml")
        assert fit.converged
        independent = mixedfx.fit("y ~ x + (1 | g)", scaled, method="ml")
        assert fit.loglik >= independent.loglik - 1e-8  # nests independence
        assert fit.loglik == pytest.approx(independent.loglik, abs=1e-5)  # and here reaches it
    structure = fit.rside.model.structure
    assert "rho is at 0 (no residual correlation)" in bound_description(structure, np.array([-8.0]))
    assert bound_description(structure, np.array([0.0])) == ""
