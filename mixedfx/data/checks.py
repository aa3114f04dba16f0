"""Checks of a model against its data: complete rows, weights, aliased fixed effects, and
grouping factors that cannot be estimated.  The checks on counts are shared by every engine
(rows in memory, DuckDB, Dask), so that each refuses the same models with the same message.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..engine.stats import scaled_gram
from ..errors import DataError, RankDeficiencyWarning

#: Relative tolerance for detecting aliased fixed-effect columns (lme4 uses 1e-7).
RANK_TOLERANCE = 1e-7


def complete_rows(data: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Boolean mask of rows with no missing value in ``columns``; errors on infinite values."""
    mask = pd.Series(True, index=data.index)
    for col in columns:
        values = data[col]
        if values.dtype == np.float64:  # the common case: no copies (NaN is the only missing value)
            numeric = values.to_numpy()
            # A finite sum means no NaN or infinity (both propagate); one pass, no temporary.
            if np.isfinite(np.add.reduce(numeric)) or np.isfinite(numeric).all():
                continue
            mask &= ~np.isnan(numeric)
            bad = np.isinf(numeric)
        elif isinstance(values.dtype, np.dtype) and values.dtype.kind in "iub":  # numpy ints/bools: never missing
            continue
        else:
            mask &= values.notna()
            if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                continue
            bad = np.isinf(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            row = data.index[np.argmax(bad)]
            raise DataError(f"Column {col!r} has infinite values (first at row {row!r}); remove or recode them.")
    return mask


def weights_vector(weights: object, data: pd.DataFrame, mask: pd.Series) -> np.ndarray | None:
    """Observation weights on the used rows (a column name or an array), validated positive."""
    if weights is None:
        return None
    if isinstance(weights, str):
        w = pd.to_numeric(data.loc[mask, weights], errors="coerce").to_numpy(dtype=float)
        label = f"weights column {weights!r}"
    else:
        w_all = np.asarray(weights, dtype=float)
        if w_all.shape != (len(data),):
            raise DataError(f"weights has {w_all.size} values for {len(data)} rows of data.")
        w = w_all[mask.to_numpy()]
        label = "weights"
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise DataError(f"{label} must be positive and finite for every row used.")
    return w


def aliased_columns(gram: np.ndarray, tolerance: float = RANK_TOLERANCE) -> np.ndarray:
    """Flags of columns that are (numerically) linear combinations of earlier ones.

    ``gram`` is ``X'X`` of columns scaled to unit norm.  Column j is aliased when its squared
    residual norm after projection on the kept earlier columns (the Schur complement, as in a
    Cholesky factorisation) is below ``tolerance^2``: the earlier columns are kept, as lme4 does.
    """
    p = gram.shape[0]
    aliased = np.zeros(p, dtype=bool)
    kept: list[int] = []
    for j in range(p):
        norm2 = gram[j, j]
        if kept:
            b = gram[kept, j]
            resid = norm2 - b @ np.linalg.solve(gram[np.ix_(kept, kept)], b)
        else:
            resid = norm2
        if norm2 > 0 and resid > tolerance**2 * norm2:
            kept.append(j)
        else:
            aliased[j] = True
    return aliased


def drop_aliased(X: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str], list[str], np.ndarray, np.ndarray]:
    """Drop columns of X that are (numerically) linear combinations of earlier columns (with a warning).

    Returns the kept columns, their names, the dropped names, and ``D^{-1} X'X D^{-1}`` of the
    kept columns with their scales ``D`` (see :func:`mixedfx.engine.stats.scaled_gram`).
    """
    if X.shape[1] == 0:
        return X, names, [], np.zeros((0, 0)), np.ones(0)
    gram, scales = scaled_gram(X)
    norms = np.sqrt(np.diag(gram))
    scale = np.where(norms > 0, norms, 1.0)
    aliased = aliased_columns(gram / np.outer(scale, scale)) | (norms == 0)
    if not aliased.any():
        return X, names, [], gram, scales  # no copy: X is the largest array of a fit
    keep = ~aliased
    dropped = [n for n, k in zip(names, keep) if not k]
    if dropped:
        warnings.warn(
            f"Fixed-effects design is rank deficient: dropping {len(dropped)} column(s) "
            f"aliased with earlier ones: {', '.join(dropped)}.",
            RankDeficiencyWarning,
            stacklevel=3,
        )
    return X[:, keep], [n for n, k in zip(names, keep) if k], dropped, gram[np.ix_(keep, keep)], scales[keep]


def check_grouping_factor(
    name: str, n_levels: int, q: int, effect_names: list[str], nobs: int, residual: bool = True
) -> None:
    """Refuse a grouping factor that cannot be estimated: one level, or (with a residual
    variance, ``residual=True``) a level per row or as many random effects as observations.
    Generalized models have no residual variance: an observation-level effect is identified."""
    if n_levels < 2:
        raise DataError(
            f"Grouping factor {name!r} has only {n_levels} level in the data used: "
            "a random effect needs at least two clusters."
        )
    if not residual:
        return
    if n_levels >= nobs:
        raise DataError(
            f"Grouping factor {name!r} has {n_levels} levels for {nobs} observations "
            "(every cluster has one observation): its variance cannot be separated from the residual."
        )
    if q * n_levels >= nobs:
        raise DataError(
            f"{nobs} observations are not more than the {q * n_levels} random effects of "
            f"({' + '.join(effect_names)} | {name}): the random-effects parameters and the residual "
            "variance are unidentifiable."
        )


def check_enough_rows(nobs: int, n_fixed: int) -> None:
    """Refuse designs with no residual degrees of freedom."""
    if nobs <= n_fixed + 1:
        raise DataError(f"{nobs} observations are too few for {n_fixed} fixed-effect and residual parameters.")


def check_finite(matrix: np.ndarray, names: list[str], index: pd.Index) -> None:
    """Refuse model columns with NaN or infinite values, naming the column and the first row.

    The raw data's missing values are gone by now (listwise deletion), so a non-finite value
    comes from a transformation that is undefined there (``np.log(0)``, ``1 / 0``, ``sqrt(-1)``).
    """
    matrix = matrix.reshape(len(index), -1)
    if np.isfinite(np.add.reduce(matrix, axis=0)).all():  # one pass: NaN and infinity propagate
        return
    for k, name in enumerate(names):
        bad = ~np.isfinite(matrix[:, k])
        if bad.any():
            raise DataError(
                f"The model column {name!r} is not finite on {int(bad.sum())} row(s) (first at row "
                f"{index[np.argmax(bad)]!r}): the transformation is undefined there (log of zero or a "
                "negative number, division by zero, ...)."
            )
