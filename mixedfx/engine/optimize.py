"""Bounded minimisation of the profiled deviance over the covariance parameters ``theta``.

With one grouping factor the likelihood has an analytic gradient and expected information:
Fisher scoring starts (one or two steps from a moment start when there are many clusters)
and L-BFGS-B (scipy) takes over if scoring stalls (its steps are projected on the bounds).
Otherwise L-BFGS-B runs with forward-difference gradients.  Both stop once the projected
gradient is below the deviance's rounding noise (:func:`gradient_tolerance`).  The optimum is then checked
(central differences for the numerical case, one-sided at an active bound), as lme4's
``checkConv`` does.  Failures are reported, never hidden: the result says whether it
converged and why not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
from scipy.optimize import minimize

from .numdiff import central_hessian, economical_hessian, numerical_gradient

#: Largest projected gradient (deviance units per unit theta) accepted at a converged optimum.
GRADIENT_TOLERANCE = 2e-3


@dataclass
class OptimumReport:
    """Outcome of the optimisation."""

    theta: np.ndarray
    deviance: float
    converged: bool
    message: str
    n_evaluations: int
    gradient: np.ndarray
    moved: bool = True  # False when the optimum is the starting point itself (nothing was learnt)
    curvature: Curvature | None = None  # the Newton polish's Hessian, where it ran


@dataclass(frozen=True)
class Curvature:
    """A central-difference Hessian of the deviance over the ``free`` coordinates at ``point``
    (the one the Newton polish computed; reusable for standard errors near its point)."""

    point: np.ndarray
    free: np.ndarray
    hessian: np.ndarray


class _Counter:
    """Wraps the objective to count evaluations, remember the best point and reuse repeated points.

    L-BFGS-B, the edge probes and the final convergence check revisit points already
    evaluated (the start, the optimum); a memo of value (and gradient) by the exact bytes
    of ``x`` saves those evaluations.
    """

    def __init__(
        self,
        func: Callable[[np.ndarray], float],
        func_and_gradient: Callable[[np.ndarray], tuple[float, np.ndarray]] | None = None,
        func_gradient_information: Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray]] | None = None,
    ):
        self.func = func
        self.func_and_gradient = func_and_gradient
        self.func_gradient_information = func_gradient_information
        self.count = 0
        self.best_x: np.ndarray | None = None
        self.best_f = np.inf
        self._values: dict[bytes, float] = {}
        self._gradients: dict[bytes, np.ndarray] = {}

    def _record(self, x: np.ndarray, f: float) -> None:
        self._values[np.asarray(x, dtype=float).tobytes()] = f
        if f < self.best_f:
            self.best_f, self.best_x = f, np.array(x, dtype=float)

    def __call__(self, x: np.ndarray) -> float:
        key = np.asarray(x, dtype=float).tobytes()
        if key in self._values:
            return self._values[key]
        self.count += 1
        f = float(self.func(x))
        self._record(x, f)
        return f

    def remember_gradient(self, x: np.ndarray, gradient: np.ndarray) -> None:
        """Store a gradient computed outside (finite differences) for :meth:`gradient_at`."""
        self._gradients[np.asarray(x, dtype=float).tobytes()] = np.array(gradient, dtype=float)

    def gradient_at(self, x: np.ndarray) -> np.ndarray | None:
        """The gradient remembered at ``x``, if any."""
        return self._gradients.get(np.asarray(x, dtype=float).tobytes())

    def with_information(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray | None]:
        """Value, analytic gradient and expected information at ``x`` (``inf``, zeros and None on failure)."""
        self.count += 1
        try:
            f, g, info = self.func_gradient_information(x)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            f, g, info = np.inf, np.zeros_like(x), None
        f = float(f)
        self._record(x, f)
        self._gradients[np.asarray(x, dtype=float).tobytes()] = np.array(g, dtype=float)
        return f, np.asarray(g, dtype=float), info

    def with_gradient(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Value and analytic gradient at ``x`` (``inf`` and zeros where the deviance fails)."""
        key = np.asarray(x, dtype=float).tobytes()
        if key in self._gradients:
            return self._values[key], self._gradients[key]
        self.count += 1
        try:
            f, g = self.func_and_gradient(x)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            f, g = np.inf, np.zeros_like(x)
        f = float(f)
        self._record(x, f)
        self._gradients[key] = np.array(g, dtype=float)
        return f, g


def gradient_tolerance(deviance: float) -> float:
    """Largest projected gradient accepted at an optimum of a deviance of this size.

    :data:`GRADIENT_TOLERANCE` for small deviances, growing with ``|f|`` (rounding noise in
    sums over n rows) and never below the optimiser's own stopping tolerance.
    """
    f = abs(deviance) if np.isfinite(deviance) else 1.0
    return max(GRADIENT_TOLERANCE * max(1.0, 1e-4 * f), 5e-7 * f)


def projected_gradient(grad: np.ndarray, x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Gradient with components that push against an active bound set to zero."""
    tol = 1e-8
    pg = grad.copy()
    pg[(x <= lower + tol) & (grad > 0)] = 0.0
    pg[(x >= upper - tol) & (grad < 0)] = 0.0
    return pg


#: Most Fisher-scoring steps before L-BFGS-B takes over, and halvings of one step.
SCORING_STEPS = 8
SCORING_HALVINGS = 8

#: Largest deviance decrease a further scoring step may promise at convergence.
SCORING_GAIN = 1e-7


def _scoring_step(g: np.ndarray, info: np.ndarray, x: np.ndarray, lower: np.ndarray, upper: np.ndarray):
    """Newton step ``-info^{-1} g`` on the parameters not held at a bound (zero on those)."""
    held = ((x <= lower) & (g > 0)) | ((x >= upper) & (g < 0))
    free = ~held
    step = np.zeros_like(x)
    step[free] = -la.cho_solve(la.cho_factor(info[np.ix_(free, free)]), g[free])
    return step


def fisher_scoring(
    counted: _Counter,
    x: np.ndarray,
    first: tuple,
    lower: np.ndarray,
    upper: np.ndarray,
    gtol: float,
    max_steps: int = SCORING_STEPS,
    gain: float = SCORING_GAIN,
) -> tuple[bool, int, np.ndarray]:
    """Newton steps with the expected information from ``x``: (converged, steps taken, last point).

    ``first`` is ``(deviance, gradient, information)`` at ``x``; converged means the
    projected gradient is below ``gtol`` and a further step would gain no more than rounding
    noise.  With many clusters the expected information is within O(1/sqrt(m)) of the
    Hessian, so from a moment start one or two steps reach the optimum (L-BFGS-B needs five
    or more evaluations to learn the curvature).  Steps are projected on the bounds (a
    parameter held at a bound it pushes against stays there) and halved until the deviance
    does not increase beyond its rounding noise.  Scoring gives up (False, and L-BFGS-B
    continues from the best point) when the information is not positive definite or
    halving does not help.
    """
    f, g, info = first
    steps = 0
    while True:
        if not np.isfinite(f) or info is None:
            return False, steps, x
        try:
            step = _scoring_step(g, info, x, lower, upper)
        except (np.linalg.LinAlgError, ValueError):
            return False, steps, x
        noise = 1e-12 * max(1.0, abs(f))
        # Converged: a flat gradient, and a next step that would gain no more than the
        # deviance's rounding noise (along a nearly flat direction a small gradient can still
        # leave 1e-5 on the table).
        flat = np.all(np.abs(projected_gradient(g, x, lower, upper)) < gtol)
        if flat and -0.5 * (g @ step) <= max(gain, noise):
            return True, steps, x
        if steps >= max_steps:
            return False, steps, x
        steps += 1
        for _ in range(SCORING_HALVINGS):
            trial = np.clip(x + step, lower, upper)
            if np.array_equal(trial, x):
                return False, steps, x
            f_trial, g_trial, info_trial = counted.with_information(trial)
            if f_trial <= f + noise:
                break
            step = step / 2
        else:
            return False, steps, x
        x, f, g, info = trial, f_trial, g_trial, info_trial


#: Newton polishing with finite-difference derivatives (numerical-gradient fits): at most this
#: many parameters, this many steps, and steps below this size (relative to 1 + |theta|) stop.
POLISH_MAX_PARAMS = 4
POLISH_STEPS = 4
POLISH_STEP_TOLERANCE = 1e-10


def _difference_steps(x: np.ndarray, lower: np.ndarray, upper: np.ndarray, size: float) -> np.ndarray:
    """Central-difference steps of relative ``size``, NaN where a bound is within the step."""
    h = size * np.maximum(np.abs(x), 0.1)
    return np.where((x - h > lower) & (x + h < upper), h, np.nan)


def _finite_difference_derivatives(func, x: np.ndarray, free: np.ndarray, steps: np.ndarray):
    """Central-difference gradient and Hessian of ``func`` over the ``free`` coordinates."""
    return _gradient_at(func, None, x, free), central_hessian(func, x, np.where(free, steps, 1.0), free)


def _stencil_derivatives(func, x: np.ndarray, free: np.ndarray, steps: np.ndarray):
    """Gradient and Hessian from the fewest evaluations (:func:`~.numdiff.economical_hessian`): for
    costly deviances, where each evaluation saved is a dense factorisation."""
    return economical_hessian(func, x, np.where(free, steps, 1.0), free)


def _gradient_derivatives(gradient, x: np.ndarray, free: np.ndarray, steps: np.ndarray):
    """Analytic gradient and the central-difference Hessian of it over the ``free`` coordinates."""
    idx = np.flatnonzero(free)
    H = np.empty((idx.size, idx.size))
    for a, i in enumerate(idx):
        e = np.zeros_like(x)
        e[i] = steps[i]
        H[a] = (gradient(x + e)[idx] - gradient(x - e)[idx]) / (2 * steps[i])
    return gradient(x)[idx], (H + H.T) / 2


def newton_polish(
    func: Callable[[np.ndarray], float],
    x: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    gradient: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, Curvature | None]:
    """:func:`_newton_rounds` until no coordinate ends just short of a bound (at most twice);
    the polished point and the last Hessian computed (None if none was)."""
    x, curvature, _ = _newton_rounds(
        func, _snap_to_bounds(func, np.array(x, dtype=float), lower, upper), lower, upper, gradient
    )
    snapped = _snap_to_bounds(func, x, lower, upper)
    if np.array_equal(snapped, x):
        return x, curvature
    x, again, _ = _newton_rounds(func, snapped, lower, upper, gradient)
    return _snap_to_bounds(func, x, lower, upper), again or curvature


def _newton_rounds(
    func: Callable[[np.ndarray], float],
    x: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    gradient: Callable[[np.ndarray], np.ndarray] | None = None,
    stencil: bool = False,
) -> tuple[np.ndarray, Curvature | None, tuple[np.ndarray, np.ndarray] | None]:
    """Newton steps with a finite-difference Hessian on the coordinates away from bounds.

    L-BFGS-B stops where its gradient is below the gradient's noise, which leaves the optimum
    uncertain to ~1e-6 relative along flat directions, so that row order (through rounding)
    moves estimates in the sixth digit.  A few Newton steps from there converge
    quadratically, to ~1e-10.  The gradient is ``gradient`` (analytic) or central differences
    of ``func``.  Coordinates held at a bound stay there; a step is taken only if it does not
    raise the deviance, unless it promises less than the deviance's rounding noise.  Returns
    the polished point (or ``x``), the Hessian with its point and coordinates, and the last
    gradient computed with its point (the free coordinates'; None if none).  ``stencil`` takes the
    first gradient from the Hessian's points (:func:`_stencil_derivatives`).
    """
    steps = _difference_steps(x, lower, upper, 1e-4)  # near the fourth root of the rounding error
    free = np.isfinite(steps)
    if not free.any() or free.sum() > POLISH_MAX_PARAMS:
        return x, None, None
    idx = np.flatnonzero(free)
    if gradient is not None:
        derivatives = _gradient_derivatives
    else:
        derivatives = _stencil_derivatives if stencil else _finite_difference_derivatives
    grad, H = derivatives(func if gradient is None else gradient, x, free, steps)
    curvature = Curvature(x.copy(), free, H)
    last = (x.copy(), grad)
    try:
        factor = la.cho_factor(H)  # computed once: Newton steps with a fixed Hessian converge fast
    except (np.linalg.LinAlgError, ValueError):
        return x, curvature, last
    for _ in range(POLISH_STEPS):
        if not np.all(np.isfinite(grad)):
            return x, curvature, last
        step = -la.cho_solve(factor, grad)
        trial = x.copy()
        trial[idx] = np.clip(x[idx] + step, lower[idx], upper[idx])
        f0 = func(x)
        # Near the optimum the quadratic model decides, not a comparison of two values that
        # differ by rounding; farther away the step must not raise the deviance.
        promised = -0.5 * float(grad @ step)
        in_noise = promised <= 1e-10 * max(1.0, abs(f0))
        if not in_noise and not func(trial) <= f0:
            return x, curvature, last
        x = trial
        if in_noise or np.max(np.abs(step) / (1.0 + np.abs(x[idx]))) < POLISH_STEP_TOLERANCE:
            break
        grad = _gradient_at(func, gradient, x, free)
        last = (x.copy(), grad)
    return x, curvature, last


def _snap_to_bounds(func, x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``x`` with coordinates that stopped just short of a bound (closer than a difference step)
    moved onto it where that does not raise the deviance beyond rounding: a variance L-BFGS-B
    left at 1e-7 is zero, and must be so whatever the row order."""
    near = (x > lower) & (x - lower < 1e-4 * np.maximum(np.abs(x), 0.1))
    f = func(x)
    for i in np.flatnonzero(near):
        trial = x.copy()
        trial[i] = lower[i]
        f_trial = func(trial)
        if f_trial <= f + 1e-12 * max(1.0, abs(f)):
            x, f = trial, f_trial
    return x


def _gradient_at(func, gradient, x: np.ndarray, free: np.ndarray) -> np.ndarray:
    """The gradient over the ``free`` coordinates: analytic, or central differences of ``func``."""
    idx = np.flatnonzero(free)
    if gradient is not None:
        return gradient(x)[idx]
    grad = np.empty(idx.size)
    for a, i in enumerate(idx):
        e = np.zeros_like(x)
        e[i] = 1e-5 * max(abs(x[i]), 0.1)  # near the cube root of the rounding error
        grad[a] = (func(x + e) - func(x - e)) / (2 * e[i])
    return grad


#: How often the optimiser is restarted from off a boundary (lme4's ``restart_edge``).
EDGE_RESTARTS = 3

#: Steps off a lower bound tried before accepting a boundary optimum.
EDGE_PROBES = (1e-3, 1e-2, 0.1, 0.5)


def _edge_restart_point(
    func: Callable[[np.ndarray], float],
    x: np.ndarray,
    lower: np.ndarray,
    mirrors: dict[int, list[int]] | None = None,
) -> np.ndarray | None:
    """A better point just off an active lower bound, or None if the boundary optimum stands.

    A relative SD of zero is a stationary point of the deviance (it is even in the
    factor's column), so a gradient method can stop there although the deviance
    decreases away from it; probing at a few distances finds such false optima.  A
    Cholesky column with a zero diagonal can leave the boundary towards either sign of the
    covariances it creates: ``mirrors[i]`` lists the coordinates (that column's
    off-diagonal entries) negated in a second, mirrored probe, so that which side the
    optimiser happened to approach from (row order, rounding) does not decide the optimum.
    """
    f0 = func(x)
    best, best_f = None, f0 - 1e-10 * max(1.0, abs(f0))
    for i in np.flatnonzero(np.isfinite(lower) & (x <= lower + 1e-10)):
        flips = (mirrors or {}).get(int(i), [])
        for step in EDGE_PROBES:
            for mirrored in (False, True) if flips else (False,):
                trial = x.copy()
                trial[i] = lower[i] + step
                if mirrored:
                    trial[flips] = -trial[flips]
                f = func(trial)
                if f < best_f:
                    best, best_f = trial, f
    return best


def minimize_deviance(
    deviance: Callable[[np.ndarray], float],
    start: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    max_iterations: int = 1000,
    value_and_gradient: Callable[[np.ndarray], tuple[float, np.ndarray]] | None = None,
    step_scale: float = 1.0,
    value_gradient_information: Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray]] | None = None,
    mirrors: dict[int, list[int]] | None = None,
    alternatives: Callable[[np.ndarray], list[np.ndarray]] | None = None,
    newton_first: bool = False,
) -> OptimumReport:
    """Minimise ``deviance`` over ``lower <= theta <= upper`` from ``start``.

    ``value_and_gradient``, when given, returns the deviance and its analytic gradient;
    otherwise gradients are central differences of ``deviance``.  ``step_scale`` is the
    length (in theta units) of the optimiser's first trial step: below 1 for a start that is
    already close to the optimum.  ``value_gradient_information``, when given, also returns
    the expected information: Fisher scoring (:func:`fisher_scoring`) then starts, and
    L-BFGS-B continues only if scoring does not converge.  At a boundary optimum the
    optimiser probes off the bound (``mirrors``: coordinates whose sign the probe also flips)
    and restarts from ``alternatives(theta)`` (points on the boundary's other faces); the
    best point found is polished by Newton steps.  ``newton_first`` (costly evaluations, a start
    near the optimum) tries those Newton steps from the start first (:func:`_newton_from_start`).
    """
    counted = _Counter(deviance, value_and_gradient, value_gradient_information)
    lower = np.asarray(lower, dtype=float)
    upper = np.asarray(upper, dtype=float)
    start = np.clip(np.asarray(start, dtype=float), lower, upper)
    if start.size == 0:
        f = counted(start)
        return OptimumReport(start, f, np.isfinite(f), "no covariance parameters", counted.count, start)
    bounds = list(zip(np.where(np.isfinite(lower), lower, None), np.where(np.isfinite(upper), upper, None)))

    if value_and_gradient is not None:
        fun = counted.with_gradient
        first = counted.with_information(start) if value_gradient_information is not None else None
        f_start = first[0] if first is not None else counted.with_gradient(start)[0]
    else:

        def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
            f = counted(x)
            if not np.isfinite(f):
                return f, np.zeros_like(x)
            grad = numerical_gradient(counted, x, lower, upper, f0=f, forward=True)
            counted.remember_gradient(x, grad)
            return f, grad

        f_start = counted(start)
    # Stop at the rounding noise of the gradient: it grows with n (measured ~2e-7 |f| for the
    # analytic gradient at 10^6 rows), so the absolute tolerance does too; below the noise
    # the iterations only wander (at 10^6 rows, a third of them did).  L-BFGS-B's own test
    # cannot take this tolerance: its projected gradient of a bounded parameter is capped
    # by the distance to the bound, so a tolerance above that distance (a relative SD of 1
    # with |f| ~ 10^7) would stop at once.  The test runs in the callback instead.
    gtol = 3e-7 * max(1.0, abs(f_start)) if np.isfinite(f_start) else 1e-7

    def stop_when_flat(intermediate_result) -> None:
        x = step_scale * np.asarray(intermediate_result.x, dtype=float)
        grad = counted.gradient_at(x)
        if grad is not None and np.all(np.abs(projected_gradient(grad, x, lower, upper)) < gtol):
            raise StopIteration

    # L-BFGS-B's first trial step has unit length; in units of step_scale it suits a start
    # that is already close (its line search would otherwise spend evaluations coming back).
    # The start itself, not step_scale * (start / step_scale), which can differ in the last
    # bit and so miss the value and gradient already computed there.
    scaled_start = start / step_scale

    def scaled(u: np.ndarray) -> tuple[float, np.ndarray]:
        u = np.asarray(u, dtype=float)
        f, g = fun(start if np.array_equal(u, scaled_start) else step_scale * u)
        return f, step_scale * np.asarray(g, dtype=float)

    scaled_bounds = [
        (None if lo is None else lo / step_scale, None if hi is None else hi / step_scale) for lo, hi in bounds
    ]

    def run(x0: np.ndarray, iterations: int = max_iterations):
        result = minimize(
            scaled,
            x0 / step_scale,
            jac=True,
            method="L-BFGS-B",
            bounds=scaled_bounds,
            callback=stop_when_flat,
            options={"maxiter": iterations, "ftol": 1e-14, "gtol": 1e-10, "maxls": 20},
        )
        result.x = step_scale * result.x
        return result

    tried_newton = (
        newton_first and value_and_gradient is None and np.isfinite(f_start) and start.size <= NEWTON_FIRST_MAX_PARAMS
    )
    if tried_newton:
        early = _newton_from_start(counted, start, lower, upper)
        if early is not None:
            return early
    scored = value_gradient_information is not None and value_and_gradient is not None and np.isfinite(f_start)
    converged, steps, _ = (
        fisher_scoring(counted, start, first, lower, upper, gtol, min(SCORING_STEPS, max_iterations))
        if scored
        else (False, 0, start)
    )
    # Scoring's steps count against the iteration limit; L-BFGS-B continues from its best point.
    # (Newton steps from the start that stopped short leave their best point too.)
    resume = counted.best_x if ((scored or tried_newton) and counted.best_x is not None) else start
    result = None if (converged or steps >= max_iterations) else run(resume, max_iterations - steps)
    if counted.best_x is None:  # nowhere finite: nothing to restart from or to polish
        message = "the deviance is not finite at any point tried"
        return OptimumReport(start, np.inf, False, message, counted.count, np.full_like(start, np.nan), False)
    for _ in range(EDGE_RESTARTS):
        restart = _edge_restart_point(counted, counted.best_x, lower, mirrors)
        if restart is None:
            break
        result = run(restart)
    if alternatives is not None and np.isfinite(counted.best_f):
        for point in alternatives(counted.best_x):  # a singular optimum: the boundary's other faces
            result = run(np.clip(point, lower, upper))
    theta, f = counted.best_x, counted.best_f
    curvature = None
    snapped = _snap_to_bounds(counted, theta, lower, upper) if np.isfinite(f) else theta
    if result is None and not np.array_equal(snapped, theta):  # scoring stopped just off a bound
        theta = fisher_scoring(counted, snapped, counted.with_information(snapped), lower, upper, gtol)[2]
    elif result is not None and np.isfinite(f):
        # Finish where L-BFGS-B stopped with Newton steps, which converge fast; their last point
        # is the optimum even where its deviance differs from the best one by rounding.
        analytic = (lambda x: counted.with_gradient(x)[1]) if value_and_gradient is not None else None
        theta, curvature = newton_polish(counted, theta, lower, upper, analytic)
        f = counted(theta)
    if value_and_gradient is not None:
        grad = counted.with_gradient(theta)[1]
    else:
        grad = numerical_gradient(counted, theta, lower, upper, f0=f)
    pg = projected_gradient(grad, theta, lower, upper)
    gradient_ok = bool(np.all(np.abs(pg) < gradient_tolerance(f)))
    finite = bool(np.isfinite(f))
    converged = finite and gradient_ok
    if not finite:
        message = "the deviance is not finite at any point tried"
    elif not gradient_ok:
        stopped = "Fisher scoring" if result is None else result.message
        message = (
            f"optimiser stopped ({stopped}) with projected gradient {np.max(np.abs(pg)):.3g} "
            f"above tolerance {gradient_tolerance(f):.3g}"
        )
    else:
        message = "converged"
    moved = not np.array_equal(theta, start)
    return OptimumReport(theta, f, converged, message, counted.count, pg, moved, curvature)


#: Newton steps from the start are tried for at most this many parameters: with three (InstEval's
#: s, d, dept) an ANOVA start is too far for one Hessian (a deviance 4 above the optimum); the
#: steps stop short and L-BFGS-B then needs more evaluations in all (96 instead of 67).
NEWTON_FIRST_MAX_PARAMS = 2


def _newton_from_start(counted: _Counter, start: np.ndarray, lower: np.ndarray, upper: np.ndarray):
    """Newton steps with a central-difference Hessian straight from a start near the optimum, or
    None when they do not end at an interior point that passes the convergence check.

    From a moment start the profiled deviance is quadratic to rounding: one Hessian (1 + 2k + k(k-1)/2
    evaluations for k parameters, with the gradient) and one or two steps reach the optimum, where L-BFGS-B with
    difference gradients first spends ~6 iterations of k + 1 evaluations learning the curvature
    and then is polished the same way (crossed factors at 10^6 rows: 35 -> 12 evaluations of a
    dense 10^4 x 10^4 factorisation).  On failure the evaluations stay memoised for the usual path.
    """
    theta, curvature, last = _newton_rounds(counted, start, lower, upper, stencil=True)
    if curvature is None or not curvature.free.all() or np.array_equal(theta, start):
        return None
    f = counted(theta)
    interior = np.isfinite(_difference_steps(theta, lower, upper, 1e-4)).all()
    if not (np.isfinite(f) and f <= counted(start) and interior):
        return None
    # The last gradient was taken before a final step that promised less than rounding noise:
    # below the tolerance there, it is below it at theta too; otherwise check theta itself.
    point, grad = last
    if np.array_equal(point, start) or not np.all(np.abs(grad) < gradient_tolerance(f)):
        grad = numerical_gradient(counted, theta, lower, upper, f0=f)
    pg = projected_gradient(grad, theta, lower, upper)
    if not np.all(np.abs(pg) < gradient_tolerance(f)):
        return None
    return OptimumReport(theta, f, True, "converged", counted.count, pg, True, curvature)
