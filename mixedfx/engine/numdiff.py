"""Finite-difference derivatives of scalar functions (deviances) of a few parameters."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numerical_gradient(
    func: Callable[[np.ndarray], float],
    x: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    f0: float | None = None,
    forward: bool = False,
) -> np.ndarray:
    """Central-difference gradient of ``func`` at ``x``, one-sided where a bound is within a step.

    ``forward=True`` uses forward differences everywhere (half the evaluations; used during
    the iterations, while the final convergence check uses central differences).
    """
    x = np.asarray(x, dtype=float)
    grad = np.empty_like(x)
    if forward:
        f0 = func(x) if f0 is None else f0
    for i in range(x.size):
        h = (1e-7 if forward else 1e-6) * max(abs(x[i]), 1.0)
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        if forward and up[i] <= upper[i]:
            grad[i] = (func(up) - f0) / h
        elif down[i] < lower[i]:
            f0 = func(x) if f0 is None else f0
            grad[i] = (func(up) - f0) / h
        elif up[i] > upper[i]:
            f0 = func(x) if f0 is None else f0
            grad[i] = (f0 - func(down)) / h
        else:
            grad[i] = (func(up) - func(down)) / (2 * h)
    return grad


def central_hessian(
    func: Callable[[np.ndarray], float], x: np.ndarray, steps: np.ndarray | float, free: np.ndarray | None = None
) -> np.ndarray:
    """Central-difference Hessian of ``func`` at ``x`` over the coordinates flagged in ``free`` (default all).

    ``steps`` is one step per coordinate (or one for all); the diagonal uses
    ``(f(x+h) - 2 f(x) + f(x-h)) / h^2``, the off-diagonal the four-point formula.
    """
    x = np.asarray(x, dtype=float)
    steps = np.broadcast_to(np.asarray(steps, dtype=float), x.shape)
    idx = np.flatnonzero(np.ones(x.size, dtype=bool) if free is None else free)
    k = idx.size
    H = np.zeros((k, k))
    f0 = func(x)
    for a, i in enumerate(idx):
        ei = np.zeros_like(x)
        ei[i] = steps[i]
        H[a, a] = (func(x + ei) - 2 * f0 + func(x - ei)) / steps[i] ** 2
        for b in range(a):
            ej = np.zeros_like(x)
            ej[idx[b]] = steps[idx[b]]
            fpp, fpm = func(x + ei + ej), func(x + ei - ej)
            fmp, fmm = func(x - ei + ej), func(x - ei - ej)
            H[a, b] = H[b, a] = (fpp - fpm - fmp + fmm) / (4 * steps[i] * steps[idx[b]])
    return H


def economical_hessian(
    func: Callable[[np.ndarray], float], x: np.ndarray, steps: np.ndarray, free: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference gradient and Hessian of ``func`` from ``1 + 2k + k(k-1)/2`` evaluations
    (``central_hessian`` takes ``1 + 2k^2``), for functions that are costly to evaluate.

    The gradient and the diagonal are central (``f(x +- h_i e_i)``); an off-diagonal entry is
    ``(f(x + h_i e_i + h_j e_j) - f(x + h_i e_i) - f(x + h_j e_j) + f(x)) / (h_i h_j)``, one more
    evaluation per pair, with an O(h) error (relative ~1e-4 at the steps the Newton polish
    takes, which changes only how fast Newton steps converge, not where to).
    """
    x = np.asarray(x, dtype=float)
    idx = np.flatnonzero(free)
    k = idx.size
    f0 = func(x)
    grad, H = np.empty(k), np.zeros((k, k))
    plus = []
    for a, i in enumerate(idx):
        e = np.zeros_like(x)
        e[i] = steps[i]
        fp, fm = func(x + e), func(x - e)
        grad[a] = (fp - fm) / (2 * steps[i])
        H[a, a] = (fp - 2 * f0 + fm) / steps[i] ** 2
        plus.append((e, fp))
        for b in range(a):
            e_b, fp_b = plus[b]
            H[a, b] = H[b, a] = (func(x + e + e_b) - fp - fp_b + f0) / (steps[i] * steps[idx[b]])
    return grad, H


def hessian_from_gradient(
    gradient: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    steps: np.ndarray | float,
    free: np.ndarray | None = None,
) -> np.ndarray:
    """Hessian over the ``free`` coordinates as central differences of an analytic ``gradient``.

    Column ``a`` is ``(g(x + h_a e_a) - g(x - h_a e_a)) / (2 h_a)``; the result is symmetrised.
    It needs ``2 k`` gradients where :func:`central_hessian` needs ``2 k^2 + 1`` values, and
    its error is ``O(h^2)`` in the third derivatives, as there.
    """
    x = np.asarray(x, dtype=float)
    steps = np.broadcast_to(np.asarray(steps, dtype=float), x.shape)
    idx = np.flatnonzero(np.ones(x.size, dtype=bool) if free is None else free)
    H = np.empty((idx.size, idx.size))
    for a, i in enumerate(idx):
        e = np.zeros_like(x)
        e[i] = steps[i]
        H[:, a] = (gradient(x + e)[idx] - gradient(x - e)[idx]) / (2.0 * steps[i])
    return 0.5 * (H + H.T)


def richardson_jacobian(
    func: Callable[[np.ndarray], np.ndarray], x: np.ndarray, step: float, free: np.ndarray | None = None
) -> np.ndarray:
    """Jacobian (len(func(x)) x k) of a vector function over the ``free`` coordinates of ``x``.

    Central differences at steps ``h`` and ``2h`` combined by Richardson extrapolation,
    ``(4 D(h) - D(2h)) / 3``: the error is ``O(h^4)``, so that derivatives of sums of many
    per-cluster terms (sandwich variances) keep their digits.
    """
    x = np.asarray(x, dtype=float)
    idx = np.flatnonzero(np.ones(x.size, dtype=bool) if free is None else free)
    columns = []
    for i in idx:
        e = np.zeros_like(x)
        e[i] = step
        near = (np.asarray(func(x + e)) - np.asarray(func(x - e))) / (2.0 * step)
        far = (np.asarray(func(x + 2 * e)) - np.asarray(func(x - 2 * e))) / (4.0 * step)
        columns.append((4.0 * near - far) / 3.0)
    return np.column_stack(columns) if columns else np.zeros((np.asarray(func(x)).size, 0))
