"""Moment starting values: close to the optimum when the data allow, the default otherwise."""

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx.data.design import build_design
from mixedfx.engine.covariance import CovStructure
from mixedfx.engine.start import moment_start
from mixedfx.fitting.pipeline import deviance_stage, parameter_bounds
from mixedfx.spec.formula import parse_formula


def _growth(n_groups: int, per_group: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per_group)
    t = rng.uniform(0, 5, g.size)
    b = rng.multivariate_normal([0, 0], [[1.0, 0.2], [0.2, 0.25]], n_groups)
    y = 2 + 0.5 * t + b[g, 0] + b[g, 1] * t + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "t": t, "g": g})


def _start_and_optimum(data: pd.DataFrame, formula: str, covariance=None):
    design = build_design(parse_formula(formula), data, covariance=covariance)
    deviance, _ = deviance_stage(design, reml=True)
    default = parameter_bounds(deviance)[0]
    start = moment_start(deviance.stats, [(t.columns, t.structure) for t in design.blocks[0].terms], default)
    fit = mixedfx.fit(formula, data, covariance=covariance)
    return start, default, fit.theta_engine


@pytest.mark.parametrize("structure", ["unstructured", "independent", "exchangeable", "identity"])
def test_moment_start_is_near_the_optimum_for_every_structure(structure):
    start, default, optimum = _start_and_optimum(_growth(400, 8), "y ~ t + (1 + t | g)", {"g": structure})
    assert start.shape == default.shape
    # identity and exchangeable misspecify G = diag(1, 0.25): the moments are then a rougher guess
    tolerance = 0.1 if structure in ("unstructured", "independent") else 0.25
    assert np.abs(start - optimum).max() < tolerance * max(1.0, np.abs(optimum).max())
    assert np.abs(start - optimum).max() < np.abs(default - optimum).max()
    lower = CovStructure(structure, 2).lower_bounds()
    assert np.all(start >= lower)


def test_random_intercept_start_is_the_anova_estimate():
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(300), 5)
    data = pd.DataFrame({"y": rng.normal(size=300)[g] * 0.8 + rng.normal(size=g.size), "g": g})
    start, _, optimum = _start_and_optimum(data, "y ~ 1 + (1 | g)")
    assert start[0] == pytest.approx(optimum[0], rel=0.1)


def test_too_few_usable_clusters_keep_the_default_start():
    data = _growth(400, 8)
    data = data[data["g"] < 6]  # six clusters: fewer than MIN_CLUSTERS
    start, default, _ = _start_and_optimum(data, "y ~ t + (1 + t | g)")
    np.testing.assert_array_equal(start, default)
    # clusters with one row each cannot give a slope: only the others count, and there are none
    single = _growth(400, 1)
    single["g"] = np.arange(len(single)) // 2  # pairs: S_j of (1, t) is singular only when t repeats
    design = build_design(parse_formula("y ~ t + (1 | g)"), single)
    deviance, _ = deviance_stage(design, reml=True)
    assert np.all(np.isfinite(moment_start(deviance.stats, [(slice(0, 1), CovStructure("identity", 1))], np.ones(1))))


def test_no_variance_between_clusters_starts_off_the_bound():
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(200), 6)
    data = pd.DataFrame({"y": rng.normal(size=g.size), "g": g})  # no cluster effect at all
    start, _, _ = _start_and_optimum(data, "y ~ 1 + (1 | g)")
    assert start[0] >= 0.05  # a zero start would be a stationary point of the deviance


def test_moments_in_chunks_equal_one_pass(monkeypatch):
    import mixedfx.engine.start as start_module

    data = _growth(300, 6)
    design = build_design(parse_formula("y ~ t + (1 + t | g)"), data)
    deviance, _ = deviance_stage(design, reml=True)
    terms = [(t.columns, t.structure) for t in design.blocks[0].terms]
    whole = moment_start(deviance.stats, terms, np.zeros(3))
    monkeypatch.setattr(start_module, "CHUNK", 7)
    np.testing.assert_allclose(moment_start(deviance.stats, terms, np.zeros(3)), whole, rtol=1e-10)


def _crossed(seed: int = 2, n: int = 20_000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 800, n), rng.integers(0, 60, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + 1.2 * rng.normal(size=800)[a] + 0.6 * rng.normal(size=60)[b] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "a": a, "b": b})


@pytest.mark.parametrize("formula", ["y ~ x + (1 | a) + (1 | b)", "y ~ x + (1 | b) + (1 | a)"])
def test_anova_start_of_crossed_intercepts_is_close_and_saves_evaluations(formula):
    from mixedfx.engine.start import starting_point

    data = _crossed()
    design = build_design(parse_formula(formula), data)
    deviance, _ = deviance_stage(design, reml=True)
    default = parameter_bounds(deviance)[0]
    start, step = starting_point(deviance, default)
    fit = mixedfx.fit(formula, data)
    assert step < 1 and not np.array_equal(start, default)
    np.testing.assert_allclose(start, fit.theta_engine, rtol=0.15)  # relative SDs ~1.2 and ~0.6
    from_default = mixedfx.fit(formula, data, start=default)
    assert fit.loglik == pytest.approx(from_default.loglik, abs=1e-6)
    assert fit.optimum.n_evaluations < from_default.optimum.n_evaluations


def test_anova_start_only_for_random_intercepts():
    from mixedfx.engine.start import starting_point

    data = _crossed().assign(t=lambda d: np.tile(np.arange(4.0), len(d) // 4))
    design = build_design(parse_formula("y ~ x + (1 + t | a) + (1 | b)"), data)
    deviance, _ = deviance_stage(design, reml=True)
    default = parameter_bounds(deviance)[0]
    start, step = starting_point(deviance, default)
    np.testing.assert_array_equal(start, default)
    assert step == 1.0
