"""Cluster-robust (sandwich) covariance of the fixed effects (Stata's ``vce(robust)``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.design import nested_within
from ..errors import OptionError
from ..results import FitRecord


def robust_vcov(result: FitRecord, group: str | None = None, small_sample: bool = True) -> pd.DataFrame:
    """Cluster-robust (sandwich) covariance of the fixed effects (Stata ``vce(robust)``).

    ``B^{-1} (sum_c X_c' V_c^{-1} r_c r_c' V_c^{-1} X_c) B^{-1}`` with ``B = X' V^{-1} X``,
    ``r = y - X beta`` and clusters ``c`` the levels of ``group`` (default: the factor with
    fewest levels; every other factor must nest in it).  ``small_sample`` multiplies by
    ``C / (C - 1)`` for C clusters.
    """
    result.require_rows("The robust (sandwich) covariance")
    if result.pseudo:  # with sampling weights vcov is already the sandwich, clustered at the top level
        top = result.design.blocks[result.deviance.weights.order[-1]].name
        if group not in (None, top):
            raise OptionError(f"With sampling weights the standard errors are clustered at the top level {top!r}.")
        return result.vcov.copy()
    if result.rside is not None:
        raise OptionError("Robust standard errors are not available with a residual structure yet.")
    blocks = result.design.blocks
    top = min(blocks, key=lambda b: b.n_levels) if group is None else next((b for b in blocks if b.name == group), None)
    if top is None:
        raise OptionError(f"No grouping factor {group!r}; the model has {', '.join(b.name for b in blocks)}.")
    for block in blocks:
        if not nested_within(block.factor, top.factor):
            raise OptionError(
                f"{block.name!r} is not nested in {top.name!r}; cluster at a factor every level nests in."
            )
    X, y = result.design.X, result.design.y
    w = result.design.weights if result.design.weights is not None else np.ones(len(y))
    r = y - X @ result.fixef.to_numpy()
    order = np.argsort(top.codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(top.codes, minlength=top.n_levels))])
    scores = np.zeros((top.n_levels, X.shape[1]))
    for c in range(top.n_levels):
        rows = order[bounds[c] : bounds[c + 1]]
        V = np.diag(result.sigma**2 / w[rows])
        for block in blocks:
            Z = block.Z[rows]
            same = block.codes[rows][:, None] == block.codes[rows][None, :]
            V += (Z @ result.G[block.name].to_numpy() @ Z.T) * same
        cho = np.linalg.cholesky(V)
        Vi_X = np.linalg.solve(cho.T, np.linalg.solve(cho, X[rows]))
        scores[c] = Vi_X.T @ r[rows]
    bread = result.vcov.to_numpy()
    meat = scores.T @ scores
    factor = top.n_levels / (top.n_levels - 1) if small_sample else 1.0
    names = result.fixef.index
    return pd.DataFrame(factor * bread @ meat @ bread, index=names, columns=names)
