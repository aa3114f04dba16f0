"""Hard data and numerical edge cases: nothing silently wrong (property-based where it helps)."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mixedfx
from mixedfx.cli import main
from mixedfx.errors import ConvergenceWarning, DataError, IdentifiabilityWarning, SingularFitWarning

#: Property tests (hypothesis profile from conftest: derandomised; longer in CI's second job).
SETTINGS = pytest.mark.property


@st.composite
def designs(draw):
    """Random two-level data: 3-12 clusters of 3-9 rows (so a random slope is identifiable)."""
    n_groups = draw(st.integers(3, 12))
    sizes = draw(st.lists(st.integers(3, 9), min_size=n_groups, max_size=n_groups))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), sizes)
    x = rng.normal(size=g.size)
    tau, slope_sd = draw(st.floats(0.0, 3.0)), draw(st.floats(0.0, 1.0))
    y = 1 + 0.5 * x + rng.normal(0, tau + 1e-9, n_groups)[g] + rng.normal(0, slope_sd + 1e-9, n_groups)[g] * x
    y += rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": g}), seed


def _quiet_fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mixedfx.fit(*args, **kwargs)


@SETTINGS
@given(designs())
def test_row_order_and_cluster_labels_do_not_matter(case):
    data, seed = case
    base = _quiet_fit("y ~ x + (1 + x | g)", data, method="ml")
    perm = np.random.default_rng(seed).permutation(len(data))
    shuffled = data.iloc[perm].copy()
    relabel = {g: f"cluster_{(7 * g + 3) % 101}" for g in data["g"].unique()}
    shuffled["g"] = shuffled["g"].map(relabel)
    other = _quiet_fit("y ~ x + (1 + x | g)", shuffled, method="ml")
    assert other.loglik == pytest.approx(base.loglik, abs=1e-8)
    _same_variance_components(other, base)
    np.testing.assert_allclose(other.fitted().loc[data.index], base.fitted(), atol=1e-6 * data["y"].std())


def _same_variance_components(a, b, rtol: float = 1e-8) -> None:
    """Variances, covariances and the residual variance equal to ``rtol`` (relative to the largest variance)."""
    va, vb = a.varcorr["vcov"].to_numpy(), b.varcorr["vcov"].to_numpy()
    np.testing.assert_allclose(va, vb, rtol=rtol, atol=rtol * np.abs(vb).max())


@st.composite
def crossed_or_nested(draw):
    """Random intercepts on two factors: crossed (a x b, some cells empty) or b nested in a."""
    nested = draw(st.booleans())
    n_a, n_b = draw(st.integers(3, 8)), draw(st.integers(3, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    a = np.repeat(np.arange(n_a), n_b * 3)
    b = np.tile(np.repeat(np.arange(n_b), 3), n_a)
    keep = rng.random(a.size) < 0.8
    a, b = a[keep], b[keep]
    sd_a, sd_b = draw(st.floats(0.0, 2.0)), draw(st.floats(0.0, 2.0))
    inner = a * n_b + b if nested else b
    y = rng.normal(0, sd_a + 1e-9, n_a)[a] + rng.normal(0, sd_b + 1e-9, inner.max() + 1)[inner]
    data = pd.DataFrame({"y": y + rng.normal(size=a.size), "a": a, "b": b})
    return data, seed, "y ~ 1 + (1 | a/b)" if nested else "y ~ 1 + (1 | a) + (1 | b)"


@SETTINGS
@given(crossed_or_nested())
def test_row_order_and_labels_do_not_matter_for_crossed_and_nested_factors(case):
    data, seed, formula = case
    try:
        base = _quiet_fit(formula, data, method="ml")
    except DataError:  # a draw with too few rows for its levels
        return
    shuffled = data.iloc[np.random.default_rng(seed).permutation(len(data))].copy()
    shuffled["a"] = shuffled["a"].map(lambda v: f"A{(5 * v + 1) % 17}")
    shuffled["b"] = shuffled["b"].map(lambda v: f"B{(3 * v + 2) % 13}")
    other = _quiet_fit(formula, shuffled, method="ml")
    assert other.loglik == pytest.approx(base.loglik, abs=1e-8)
    _same_variance_components(other, base)


@SETTINGS
@given(designs(), st.sampled_from([1e-6, 1e-3, 1e3, 1e6]))
def test_scaling_y_scales_estimates_exactly(case, factor):
    data, _ = case
    base = _quiet_fit("y ~ x + (1 | g)", data)
    scaled = _quiet_fit("y ~ x + (1 | g)", data.assign(y=data["y"] * factor))
    np.testing.assert_allclose(scaled.fixef, base.fixef * factor, rtol=1e-6, atol=1e-9 * factor)
    assert scaled.sigma == pytest.approx(base.sigma * factor, rel=1e-6)
    n, p = base.nobs, len(base.fixef)
    assert scaled.loglik == pytest.approx(base.loglik - (n - p) * np.log(factor), abs=1e-6)


@SETTINGS
@given(designs(), st.lists(st.floats(0.0, 2.0), min_size=3, max_size=3), st.floats(-1.0, 1.0))
def test_deviance_equals_dense_marginal_likelihood(case, diag, off):
    from mixedfx.data.design import build_design
    from mixedfx.fitting.pipeline import deviance_stage
    from mixedfx.spec.formula import parse_formula

    data, _ = case
    design = build_design(parse_formula("y ~ x + (1 + x | g)"), data)
    deviance, scaling = deviance_stage(design, reml=False)
    theta = np.array([diag[0], off, diag[1]])
    dev = deviance.solve(theta).deviance + design.nobs * 2 * np.log(scaling.y_scale)
    lam = deviance.original_lambdas(theta)[0]
    block = design.blocks[0]
    Z = np.zeros((design.nobs, 2 * block.n_levels))
    for a in range(2):
        Z[np.arange(design.nobs), block.codes * 2 + a] = block.Z[:, a]
    ZL = Z @ np.kron(np.eye(block.n_levels), lam)
    V = ZL @ ZL.T + np.eye(design.nobs)
    X, y = design.X, design.y
    beta = np.linalg.solve(X.T @ np.linalg.solve(V, X), X.T @ np.linalg.solve(V, y))
    r = y - X @ beta
    n = design.nobs
    s2 = r @ np.linalg.solve(V, r) / n
    dense = np.linalg.slogdet(V)[1] + n * np.log(2 * np.pi * s2) + n
    assert dev == pytest.approx(dense, rel=1e-9, abs=1e-7)


@SETTINGS
@given(designs())
def test_ml_fit_is_never_worse_than_its_start(case):
    from mixedfx.data.design import build_design
    from mixedfx.fitting.pipeline import deviance_stage, parameter_bounds
    from mixedfx.spec.formula import parse_formula

    data, _ = case
    fit = _quiet_fit("y ~ x + (1 + x | g)", data, method="ml")
    design = build_design(parse_formula(fit.formula), data)
    deviance, _ = deviance_stage(design, reml=False)
    start = parameter_bounds(deviance)[0]
    assert fit.deviance <= fit.record.deviance_to_original_scale(deviance(start)) + 1e-8


def test_huge_offsets_match_the_centred_fit():
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(40), 8)
    year = 2000 + rng.integers(0, 21, g.size)
    income = 2e6 + 3e5 * rng.normal(size=g.size)
    y = 0.3 * (year - 2010) + 1e-6 * (income - 2e6) + rng.normal(size=40)[g] * (1 + 0.1 * (year - 2010))
    y += rng.normal(size=g.size)
    raw = pd.DataFrame({"y": y, "year": year, "income": income, "g": g})
    centred = raw.assign(year=raw["year"] - 2010, income=(raw["income"] - 2e6) / 1e5)
    a = mixedfx.fit("y ~ year + income + (1 + year | g)", raw, method="ml")
    b = mixedfx.fit("y ~ year + income + (1 + year | g)", centred, method="ml")
    assert a.converged and b.converged
    assert a.loglik == pytest.approx(b.loglik, abs=1e-6)
    assert a.fixef["year"] == pytest.approx(b.fixef["year"], rel=1e-6)
    assert a.fixef["income"] * 1e5 == pytest.approx(b.fixef["income"], rel=1e-6)
    np.testing.assert_allclose(a.fitted(), b.fitted(), atol=1e-6)
    assert a.G["g"].iloc[1, 1] == pytest.approx(b.G["g"].iloc[1, 1], rel=1e-4)


def test_slope_constant_within_every_cluster():
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(30), 6)
    z = rng.normal(size=30)[g]
    data = pd.DataFrame({"y": z + rng.normal(size=30)[g] + rng.normal(size=g.size), "z": z, "g": g})
    with pytest.warns(IdentifiabilityWarning, match="'z' on 'g' is constant within every cluster"):
        fit = mixedfx.fit("y ~ z + (1 + z | g)", data)
    assert np.all(np.isfinite(fit.fixef)) and np.isfinite(fit.loglik)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentifiabilityWarning)
        mixedfx.fit("y ~ z + (1 | g)", data)  # no random slope, no warning


def test_clusters_of_size_one_and_very_unbalanced_clusters():
    rng = np.random.default_rng(3)
    sizes = [1] * 20 + [2] * 10 + [200]
    g = np.repeat(np.arange(len(sizes)), sizes)
    data = pd.DataFrame({"y": rng.normal(size=31)[g] + rng.normal(size=g.size), "g": g})
    fit = mixedfx.fit("y ~ 1 + (1 | g)", data)
    assert fit.converged and fit.group_sizes.loc["g", "min"] == 1 and fit.group_sizes.loc["g", "max"] == 200


def test_non_convergence_is_reported_everywhere(sleepstudy, tmp_path, capsys):
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        fit = mixedfx.fit("Reaction ~ Days + (Days | Subject)", sleepstudy, max_iterations=1)
    assert not fit.converged
    assert fit.to_dict()["converged"] is False
    assert "convergence not achieved" in fit.summary()


def test_nan_free_tables_or_an_explanation():
    data = pd.DataFrame(
        {"y": np.r_[np.zeros(5), np.ones(5)] + np.tile([0.1, -0.1, 0.2, -0.2, 0.0], 2), "g": np.repeat(["a", "b"], 5)}
    )
    data["y"] -= data.groupby("g")["y"].transform("mean")  # no between-cluster variance at all
    with pytest.warns(SingularFitWarning):
        fit = mixedfx.fit("y ~ 1 + (1 | g)", data)
    text = fit.summary()
    assert "singular" in text  # the missing SE/CI of the zero variance is explained
    table = fit.re_table()
    assert np.isnan(table["se"].iloc[0]) and np.isfinite(table["se"].iloc[-1])


def test_latin1_csv_and_cli_debug(tmp_path, capsys):
    path = tmp_path / "latin1.csv"
    frame = mixedfx.datasets.load_sleepstudy().assign(Subject=lambda d: "s\xe9" + d["Subject"])
    frame.to_csv(path, index=False, encoding="latin-1")
    assert main(["fit", str(path), "Reaction ~ Days + (1 | Subject)", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ngroups"] == {"Subject": 18}
    with pytest.raises(Exception, match="Unknown variable"):
        main(["fit", str(path), "Reaction ~ Dayz + (1 | Subject)", "--debug"])
