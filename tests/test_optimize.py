"""The optimiser wrapper: revisited points are not re-evaluated; tolerances scale with the deviance."""

import numpy as np

from mixedfx.optimize import GRADIENT_TOLERANCE, gradient_tolerance, minimize_deviance


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
