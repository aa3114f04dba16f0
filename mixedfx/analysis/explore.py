"""Exploratory analyses: per-cluster OLS fits and residual autocorrelation within clusters.

Residual autocorrelation (the lecture's ``autocor`` table).

Given residuals, an occasion (time) variable and a cluster variable, the occasion-by-
occasion correlation matrix pairs the residuals of the same cluster at occasions s and t
(pairwise complete: clusters missing either occasion are left out of that pair), and the
autocorrelation at lag k is the Pearson correlation of all within-cluster pairs of residuals
k occasions apart (occasion s with occasion s + k, pooled over s), as the lecture's
``autocor``: at the largest lag there is one pair of occasions, and the autocorrelation is
that entry of the matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from formulaic import model_matrix

from ..data.columns import check_columns, lme4_name, required_variables
from ..data.transforms import formula_context
from ..errors import DataError, suggest


@dataclass
class Autocorrelation:
    """``matrix``: correlation of residuals between occasions; ``acf``: by lag (with pair counts)."""

    matrix: pd.DataFrame
    acf: pd.DataFrame


def autocorrelation(residuals, time, group, max_lag: int | None = None) -> Autocorrelation:
    """Occasion-by-occasion correlation matrix and lag autocorrelations of within-cluster residuals.

    ``residuals``, ``time`` and ``group`` are equal-length sequences (e.g. columns of the
    data, or ``fit.residuals()`` with the data's occasion and id columns).  Occasions are
    the distinct values of ``time``; the lag of a pair is its distance in that ordering.
    """
    frame = pd.DataFrame({"r": np.asarray(residuals, dtype=float), "t": np.asarray(time), "g": np.asarray(group)})
    if len(frame) == 0:
        raise DataError("No residuals to correlate.")
    frame = frame.dropna()
    wide = frame.pivot_table(index="g", columns="t", values="r", aggfunc="first")
    if wide.shape[1] < 2:
        raise DataError("Residual autocorrelation needs at least two distinct occasions.")
    matrix = wide.corr(min_periods=3)
    matrix.index = [f"time{t}" if _is_number(t) else str(t) for t in matrix.index]
    matrix.columns = matrix.index
    rows = []
    n_occasions = wide.shape[1]
    max_lag = n_occasions - 1 if max_lag is None else min(max_lag, n_occasions - 1)
    values = wide.to_numpy()
    for lag in range(1, max_lag + 1):
        a = values[:, :-lag].ravel()
        b = values[:, lag:].ravel()
        both = np.isfinite(a) & np.isfinite(b)
        if both.sum() < 3:
            break
        acf = float(np.corrcoef(a[both], b[both])[0, 1])
        rows.append({"lag": lag, "acf": acf, "pairs": int(both.sum())})
    return Autocorrelation(matrix=matrix, acf=pd.DataFrame(rows).set_index("lag"))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating))


def ols_by_group(formula: str, data: pd.DataFrame, group: str, min_size: int = 1) -> pd.DataFrame:
    """Separate OLS fits per cluster: one row per cluster with n, coefficients and their SEs.

    ``formula`` is a fixed-effects formula (``"gcse ~ lrt"``).  Clusters with fewer than
    ``min_size`` rows are left out; coefficients that a cluster cannot identify (too few rows,
    a constant covariate) are NaN.  Columns: ``n``, then ``<term>`` and ``se_<term>`` per term.
    """
    if group not in data.columns:
        raise DataError(f"Unknown group column {group!r}.{suggest(group, map(str, data.columns))}")
    check_columns(required_variables(formula, "the formula"), data, "the formula")
    mm = model_matrix(formula, data, na_action="drop", context=formula_context())
    y = np.asarray(mm.lhs, dtype=float).ravel()
    X = np.asarray(mm.rhs, dtype=float)
    names = [lme4_name(str(c)) for c in mm.rhs.columns]
    groups = data.loc[mm.rhs.index, group]
    rows = {}
    for level, idx in groups.groupby(groups, observed=True, sort=True).indices.items():
        if len(idx) < min_size:
            continue
        rows[str(level)] = ols_row(X[idx], y[idx], names)
    columns = ["n"] + [c for name in names for c in (name, f"se_{name}")]
    frame = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns)  # columns even when empty
    frame.index.name = group
    return frame


def ols_row(X: np.ndarray, y: np.ndarray, names: list[str]) -> dict:
    """OLS coefficients and SEs of one cluster; NaN where not identified."""
    n, p = X.shape
    row = {"n": n}
    coef = np.full(p, np.nan)
    se = np.full(p, np.nan)
    if n >= p:
        beta, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
        if rank == p:
            coef = beta
            if n > p:
                resid = y - X @ beta
                s2 = resid @ resid / (n - p)
                se = np.sqrt(s2 * np.diag(np.linalg.inv(X.T @ X)))
    for name, c, s in zip(names, coef, se):
        row[name] = c
        row[f"se_{name}"] = s
    return row
