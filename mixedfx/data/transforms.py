"""Transforms a formula may call besides formulaic's own: R's functions with R's arguments and results.

- ``poly(x, degree, raw=FALSE)``: R's orthogonal polynomials (formulaic's, which equal R's)
  or raw powers, with columns named ``1 .. degree`` either way, as R;
- ``bs(x, df, knots, degree=3, intercept=FALSE)``: R's B-splines (formulaic's, which equal
  R's), extrapolated beyond the boundary knots as R does (the end polynomials, with a warning);
- ``ns(x, df, knots, intercept=FALSE)``: R's natural cubic splines (``splines::ns``);
- ``I()``, with a logical result coded as R codes it (a factor with levels FALSE, TRUE);
- ``as.numeric`` and ``factor``.

The stateful ones keep their state (polynomial coefficients, knots) the way formulaic's
stateful transforms do, so predictions on new data reuse the fitted basis.  The state is
learnt from the estimation rows, after listwise deletion (R's model frame learns it before
deleting rows that miss other variables: with missing data, R's knots can differ).
:func:`formula_context` is the namespace every formula is evaluated in.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
from formulaic.materializers.types import FactorValues
from formulaic.transforms import TRANSFORMS as FORMULAIC_TRANSFORMS
from formulaic.utils.stateful_transforms import stateful_transform
from scipy.interpolate import BSpline

from ..errors import FormulaError
from ..spec.expressions import evaluation_context


def as_numeric(values) -> np.ndarray:
    """R's ``as.numeric``: numbers as floats, a factor as its level codes 1..k (as R does)."""
    series = pd.Series(values)
    if isinstance(series.dtype, pd.CategoricalDtype):
        return series.cat.codes.to_numpy(dtype=float) + 1.0
    return pd.to_numeric(series, errors="raise").to_numpy(dtype=float)


def identity(values):
    """R's ``I()``: the value as it is, but a logical result is a factor with levels FALSE, TRUE.

    R codes a logical as a factor (``I(x > 4)TRUE``; in an interaction without its main
    effect, both levels); formulaic would enter it as a 0/1 number.
    """
    array = np.asarray(values)
    if array.dtype == bool:
        return pd.Series(pd.Categorical(array, categories=[False, True]))
    return values


def _numbered(values: np.ndarray) -> FactorValues:
    """Columns named ``1 .. k``, as R names the columns of a basis (``poly(x, 2)1``)."""
    values = np.asarray(values, dtype=float)
    return FactorValues(values, column_names=tuple(str(k) for k in range(1, values.shape[1] + 1)))


@stateful_transform
def poly(x, degree: int = 1, raw: bool = False, _state: dict = {}) -> FactorValues:  # noqa: B006 (formulaic's state)
    """R's ``poly``: orthogonal polynomials of degrees 1..``degree`` (``raw=True``: the powers).

    The orthogonal basis is formulaic's three-term recurrence, which equals R's QR-based
    ``poly`` (same normalisation and signs); its coefficients are the state reused on new data.
    """
    values = np.asarray(x, dtype=float)
    if not isinstance(degree, (int, np.integer)) or isinstance(degree, bool) or degree < 1:
        raise FormulaError(f"poly(): degree must be a whole number of at least 1, not {degree!r}.")
    if raw:
        return _numbered(np.column_stack([values**k for k in range(1, degree + 1)]))
    if not _state:
        unique = np.unique(values[np.isfinite(values)]).size
        if degree >= unique:
            raise FormulaError(f"poly(): degree {degree} must be less than the number of unique points ({unique}).")
    return _numbered(FORMULAIC_TRANSFORMS["poly"](values, degree, raw=False, _state=_state))


@stateful_transform
def bs(x, df=None, knots=None, degree: int = 3, intercept: bool = False, _state: dict = {}) -> FactorValues:  # noqa: B006
    """R's ``splines::bs`` (formulaic's B-splines equal R's; R's argument ``intercept``).

    Beyond the boundary knots (new data) the basis continues the end polynomials, as R's
    ``predict`` does, with a warning.
    """
    values = np.asarray(x, dtype=float)
    fitted = bool(_state)
    out = FORMULAIC_TRANSFORMS["bs"](
        values, df=df, knots=knots, degree=degree, include_intercept=intercept, extrapolation="extend", _state=_state
    )
    if fitted:
        _warn_outside(values, _state.get("lower_bound"), _state.get("upper_bound"), "bs")
    return _numbered(np.column_stack([np.asarray(column, dtype=float) for column in out.values()]))


def _warn_outside(values: np.ndarray, lower, upper, name: str) -> None:
    if lower is None or upper is None:
        return
    outside = (values < lower) | (values > upper)
    if outside.any():
        warnings.warn(
            f"{name}(): {int(outside.sum())} value(s) beyond the boundary knots [{lower:g}, {upper:g}]; "
            "the spline is extrapolated.",
            UserWarning,
            stacklevel=4,
        )


def _spline_design(knots: np.ndarray, x: np.ndarray, derivative: int = 0) -> np.ndarray:
    """Cubic B-spline basis (or its ``derivative``) at ``x`` for the full knot sequence ``knots``
    (R's ``splines::splineDesign(knots, x, ord = 4, derivs)``)."""
    n_basis = len(knots) - 4
    spline = BSpline(knots, np.eye(n_basis), 3, extrapolate=True)
    return np.atleast_2d((spline.derivative(derivative) if derivative else spline)(x))


def _natural_basis(x: np.ndarray, interior: np.ndarray, boundary: np.ndarray, intercept: bool) -> np.ndarray:
    """R's ``ns`` basis: cubic B-splines with zero second derivative at both boundary knots.

    Inside the boundary knots the B-spline basis, outside it the tangent line at the nearer
    boundary (a natural spline is linear there); then the columns are projected, as R does,
    onto the complement of the two constraints: ``t(qr.qty(qr(t(C)), t(B)))[, -(1:2)]``.
    """
    knots = np.sort(np.r_[np.repeat(boundary, 4), interior])
    basis = np.empty((x.size, len(knots) - 4))
    inside = (x >= boundary[0]) & (x <= boundary[1])
    basis[inside] = _spline_design(knots, x[inside])
    for side, pivot in ((x < boundary[0], boundary[0]), (x > boundary[1], boundary[1])):
        if side.any():
            value, slope = _spline_design(knots, np.array([pivot])), _spline_design(knots, np.array([pivot]), 1)
            basis[side] = value + np.outer(x[side] - pivot, slope[0])
    constraints = _spline_design(knots, boundary, 2)
    if not intercept:
        constraints, basis = constraints[:, 1:], basis[:, 1:]
    q, _ = np.linalg.qr(constraints.T, mode="complete")
    return (q.T @ basis.T).T[:, 2:]


@stateful_transform
def ns(x, df=None, knots=None, intercept: bool = False, _state: dict = {}) -> FactorValues:  # noqa: B006
    """R's ``splines::ns``: a natural cubic spline basis with ``df`` columns (or given ``knots``).

    Interior knots at the quantiles ``1/(k+1), ..., k/(k+1)`` of ``x`` (``k = df - 1 -
    intercept``; R's type-7 quantiles), boundary knots at its range; the knots are the state
    reused on new data, where values beyond the boundary continue the spline linearly.
    """
    values = np.asarray(x, dtype=float)
    if "boundary" not in _state:
        finite = values[np.isfinite(values)]
        if knots is None:
            if df is None:
                df = 1 + int(intercept)
            n_interior = int(df) - 1 - int(intercept)
            if n_interior < 0:
                raise FormulaError(f"ns(): df = {df} is too small (at least {1 + int(intercept)}).")
            probabilities = np.linspace(0, 1, n_interior + 2)[1:-1]
            knots = np.quantile(finite, probabilities) if n_interior else np.array([])
        _state["interior"] = [float(k) for k in np.sort(np.asarray(knots, dtype=float))]
        _state["boundary"] = [float(finite.min()), float(finite.max())]
        fitted = False
    else:
        fitted = True
    interior, boundary = np.asarray(_state["interior"]), np.asarray(_state["boundary"])
    if fitted:
        _warn_outside(values, *boundary, "ns")
    out = np.full((values.size, len(interior) + 1 + int(intercept)), np.nan)
    ok = np.isfinite(values)
    out[ok] = _natural_basis(values[ok], interior, boundary, intercept)
    return _numbered(out)


#: Transforms whose value on a row depends on the whole column (their state): they cannot be
#: evaluated chunk by chunk (reductions) or row by row (offsets).
STATEFUL = frozenset({"poly", "scale", "center", "standardize", "bs", "cr", "cs", "cc", "ns", "lag", "hashed"})


def calls_stateful(expr: str) -> str | None:
    """The first stateful transform ``expr`` calls, or None."""
    for name in sorted(STATEFUL):
        if re.search(rf"(?<![\w.]){name}\s*\(", expr):
            return name
    return None


#: The transforms formulas call, by name: formulaic's (but its unrestricted ``np``), then mixedfx's.
TRANSFORMS = {
    **{name: value for name, value in FORMULAIC_TRANSFORMS.items() if name != "np"},
    "I": identity,
    "as_numeric": as_numeric,
    "factor": FORMULAIC_TRANSFORMS["C"],
    "poly": poly,
    "bs": bs,
    "ns": ns,
}


def formula_context() -> dict:
    """The namespace formulas are evaluated in: restricted numpy, formulaic's transforms, mixedfx's."""
    return evaluation_context(extra=TRANSFORMS)
