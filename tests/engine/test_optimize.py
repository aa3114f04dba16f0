"""The optimiser wrapper: revisited points are not re-evaluated; tolerances scale with the deviance."""

import numpy as np
import pytest

from mixedfx.engine.optimize import GRADIENT_TOLERANCE, gradient_tolerance, minimize_deviance


def _quadratic():
    centre = np.array([0.7, 1.3])
    calls = {"value": 0, "gradient": 0}

    def value(x):
        calls["value"] += 1
        return float(((x - centre) ** 2).sum() * 10 + 5)

    def value_and_gradient(x):
        calls["gradient"] += 1
        return float(((x - centre) ** 2).sum() * 10 + 5), 20 * (x - centre)

    return centre, calls, value, value_and_gradient


def test_minimum_found_and_revisited_points_cost_nothing():
    centre, calls, value, value_and_gradient = _quadratic()
    report = minimize_deviance(
        value, np.array([2.0, 2.0]), np.zeros(2), np.full(2, np.inf), value_and_gradient=value_and_gradient
    )
    assert report.converged
    np.testing.assert_allclose(report.theta, centre, atol=1e-6)
    assert report.n_evaluations == calls["value"] + calls["gradient"]
    # the start, the edge probe at the optimum and the final check reuse remembered values
    assert calls["value"] == 0


def test_gradient_tolerance_grows_with_the_deviance():
    assert gradient_tolerance(10.0) == GRADIENT_TOLERANCE
    assert gradient_tolerance(1e6) > gradient_tolerance(1e4) > gradient_tolerance(10.0)
    assert gradient_tolerance(1e6) == max(GRADIENT_TOLERANCE * 100, 5e-7 * 1e6)


def test_large_deviance_near_a_bound_is_still_minimised():
    """L-BFGS-B caps a bounded parameter's projected gradient by its distance to the bound; a
    tolerance scaled to a deviance of 10^7 must not end the search at the start (it once did)."""

    def value_and_gradient(x):
        return float(8.5e6 + 1e7 * (x[0] - 1.0) ** 2), np.array([2e7 * (x[0] - 1.0)])

    report = minimize_deviance(
        lambda x: value_and_gradient(x)[0],
        np.array([1.0022]),
        np.zeros(1),
        np.full(1, np.inf),
        value_and_gradient=value_and_gradient,
    )
    assert report.converged
    assert report.theta[0] == pytest.approx(1.0, abs=1e-6)


def test_a_short_first_step_reaches_the_same_optimum_and_respects_bounds():
    centre = np.array([0.7, -0.4])  # the second coordinate's optimum lies below its bound 0

    def value_and_gradient(x):
        return float(((x - centre) ** 2).sum() * 50 + 3), 100 * (x - centre)

    for scale in (1.0, 0.1):
        report = minimize_deviance(
            lambda x: value_and_gradient(x)[0],
            np.array([0.6, 0.2]),
            np.zeros(2),
            np.full(2, np.inf),
            value_and_gradient=value_and_gradient,
            step_scale=scale,
        )
        assert report.converged
        np.testing.assert_allclose(report.theta, [0.7, 0.0], atol=1e-7)


def test_scaled_first_step_does_not_evaluate_the_start_twice():
    """With a first-step scale like 0.1, start / 0.1 * 0.1 differs from the start in the last bit;
    the optimiser's first evaluation must still be the one already made at the start."""
    centre, calls, value, value_and_gradient = _quadratic()
    points = []

    def recorded(x):
        points.append(np.array(x))
        return value_and_gradient(x)

    start = np.array([0.7, 1.7])  # 1.7 / 0.1 * 0.1 != 1.7
    bounds = (np.zeros(2), np.full(2, np.inf))
    report = minimize_deviance(value, start, *bounds, value_and_gradient=recorded, step_scale=0.1)
    assert report.converged
    near_start = [p for p in points if np.allclose(p, start, rtol=1e-12, atol=0)]
    assert len(near_start) == 1


def _growth(n_groups=2000, seed=3):
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), 6)
    t = np.tile(np.arange(6.0), n_groups)
    b = rng.multivariate_normal([0, 0], [[1.0, 0.1], [0.1, 0.09]], n_groups)
    y = 1 + 0.5 * t + b[g, 0] + b[g, 1] * t + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "t": t, "g": g})


def test_fisher_scoring_reaches_the_lbfgs_optimum_in_a_few_evaluations():
    """Scoring from the moment start: two or three evaluations, the same optimum as L-BFGS-B alone."""
    import mixedfx
    from mixedfx.data.design import build_design
    from mixedfx.engine.start import starting_point
    from mixedfx.fitting.pipeline import deviance_stage, parameter_bounds
    from mixedfx.spec.formula import parse_formula

    data = _growth()
    fit = mixedfx.fit("y ~ t + (1 + t | g)", data)
    assert fit.converged and fit.optimum.n_evaluations <= 3
    design = build_design(parse_formula("y ~ t + (1 + t | g)"), data)
    deviance, _ = deviance_stage(design, True)
    theta0, lower, upper = parameter_bounds(deviance)
    start, step = starting_point(deviance, theta0)
    plain = minimize_deviance(
        deviance, start, lower, upper, value_and_gradient=deviance.deviance_and_gradient, step_scale=step
    )
    assert plain.n_evaluations > fit.optimum.n_evaluations
    assert fit.optimum.deviance <= plain.deviance + 1e-9 * abs(plain.deviance)
    np.testing.assert_allclose(fit.theta_engine, plain.theta, rtol=1e-4)


def test_fisher_scoring_respects_the_iteration_limit_and_falls_back_at_a_bound():
    import mixedfx
    from mixedfx.errors import ConvergenceWarning

    data = _growth(200)
    with pytest.warns(ConvergenceWarning):
        stopped = mixedfx.fit("y ~ t + (1 + t | g)", data, max_iterations=1, start=np.array([3.0, 0.0, 1.0]))
    assert not stopped.converged and stopped.optimum.n_evaluations <= 3
    # No slope variance at all: the fit ends on the bound (scoring's steps are projected on it).
    flat = data.copy()
    rng = np.random.default_rng(0)
    flat["y"] = 1 + 0.5 * flat["t"] + rng.normal(size=200)[flat["g"]] + rng.normal(size=len(flat))
    with pytest.warns(mixedfx.errors.SingularFitWarning):
        singular = mixedfx.fit("y ~ t + (1 + t | g)", flat)
    assert singular.converged and singular.singular


def test_fisher_scoring_follows_a_nearly_flat_direction_onto_the_bound():
    """A slope SD near zero: the deviance is flat there, so a small gradient still left 3e-6 of
    log-likelihood when scoring gave up at the bound; projected steps reach the boundary optimum
    that L-BFGS-B alone finds (and the fit is reported singular)."""
    import warnings

    import pandas as pd

    import mixedfx
    import mixedfx.fitting.pipeline

    rng = np.random.default_rng(2)
    m, per = 2000, 3
    g = np.repeat(np.arange(m), per)
    t = np.tile(np.arange(per, dtype=float), m)
    x = rng.normal(size=g.size)
    b = rng.normal(size=(m, 3)) * [1.0, 0.01, 0.3]
    data = pd.DataFrame(
        {"y": 1 + 0.5 * t + 0.2 * x + b[g, 0] + b[g, 1] * t + rng.normal(size=g.size), "t": t, "x": x, "g": g}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scored = mixedfx.fit("y ~ t + x + (1 + t | g)", data, method="ml")

        def without_scoring(*args, **kwargs):
            return minimize_deviance(*args, **{**kwargs, "value_gradient_information": None})

        original = mixedfx.fitting.pipeline.minimize_deviance
        mixedfx.fitting.pipeline.minimize_deviance = without_scoring
        try:
            plain = mixedfx.fit("y ~ t + x + (1 + t | g)", data, method="ml")
        finally:
            mixedfx.fitting.pipeline.minimize_deviance = original
    assert scored.converged and scored.singular
    assert scored.loglik >= plain.loglik - 1e-8
