"""Finite-difference derivatives against closed forms."""

from __future__ import annotations

import numpy as np

from mixedfx.engine.numdiff import (
    central_hessian,
    economical_hessian,
    hessian_from_gradient,
    numerical_gradient,
    richardson_jacobian,
)


def _f(x: np.ndarray) -> float:
    """exp(x0) x1^2 + sin(x2) x0 + x1 x2^3: every second derivative nonzero somewhere."""
    return float(np.exp(x[0]) * x[1] ** 2 + np.sin(x[2]) * x[0] + x[1] * x[2] ** 3)


def _grad(x: np.ndarray) -> np.ndarray:
    return np.array(
        [
            np.exp(x[0]) * x[1] ** 2 + np.sin(x[2]),
            2 * np.exp(x[0]) * x[1] + x[2] ** 3,
            np.cos(x[2]) * x[0] + 3 * x[1] * x[2] ** 2,
        ]
    )


def _hess(x: np.ndarray) -> np.ndarray:
    e = np.exp(x[0])
    return np.array(
        [
            [e * x[1] ** 2, 2 * e * x[1], np.cos(x[2])],
            [2 * e * x[1], 2 * e, 3 * x[2] ** 2],
            [np.cos(x[2]), 3 * x[2] ** 2, -np.sin(x[2]) * x[0] + 6 * x[1] * x[2]],
        ]
    )


X = np.array([0.3, -1.2, 0.7])


def test_hessian_from_gradient_matches_closed_form():
    np.testing.assert_allclose(hessian_from_gradient(_grad, X, 1e-4), _hess(X), rtol=1e-7, atol=1e-8)


def test_hessian_from_gradient_over_free_coordinates_is_the_submatrix():
    free = np.array([True, False, True])
    H = hessian_from_gradient(_grad, X, 1e-4, free)
    np.testing.assert_allclose(H, _hess(X)[np.ix_(free, free)], rtol=1e-7, atol=1e-8)


def test_central_hessian_matches_closed_form():
    np.testing.assert_allclose(central_hessian(_f, X, 1e-4), _hess(X), rtol=1e-5, atol=1e-5)


def test_numerical_gradient_is_one_sided_at_a_bound():
    lower, upper = np.array([0.3, -5.0, -5.0]), np.full(3, 5.0)
    g = numerical_gradient(_f, X, lower, upper)
    np.testing.assert_allclose(g, _grad(X), rtol=1e-5)


def test_richardson_jacobian_is_exact_to_fourth_order():
    def from_func(x):
        return np.array([np.sin(x[0]) * x[1], np.exp(x[1]), x[0] ** 3])

    x = np.array([0.4, -0.7])
    exact = np.array([[np.cos(0.4) * -0.7, np.sin(0.4)], [0.0, np.exp(-0.7)], [3 * 0.4**2, 0.0]])
    got = richardson_jacobian(from_func, x, 1e-2)
    np.testing.assert_allclose(got, exact, atol=1e-9)
    only_second = richardson_jacobian(from_func, x, 1e-2, free=np.array([False, True]))
    np.testing.assert_allclose(only_second[:, 0], exact[:, 1], atol=1e-9)


def test_economical_hessian_takes_one_evaluation_per_pair_and_is_accurate():
    calls = []

    def f(x):
        calls.append(x.copy())
        return np.exp(x[0]) * np.sin(x[1]) + x[0] * x[2] ** 2 + np.cos(x[2])

    x = np.array([0.3, 0.8, -0.5])
    grad, H = economical_hessian(f, x, np.full(3, 1e-4), np.ones(3, dtype=bool))
    assert len(calls) == 1 + 2 * 3 + 3
    exact_grad = [np.exp(0.3) * np.sin(0.8) + 0.25, np.exp(0.3) * np.cos(0.8), 2 * 0.3 * -0.5 - np.sin(-0.5)]
    exact_H = [
        [np.exp(0.3) * np.sin(0.8), np.exp(0.3) * np.cos(0.8), -1.0],
        [np.exp(0.3) * np.cos(0.8), -np.exp(0.3) * np.sin(0.8), 0.0],
        [-1.0, 0.0, 0.6 - np.cos(-0.5)],
    ]
    np.testing.assert_allclose(grad, exact_grad, rtol=1e-7)
    np.testing.assert_allclose(H, exact_H, atol=5e-4)
