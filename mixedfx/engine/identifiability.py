"""Which variance parameters the data can identify, from the sufficient statistics alone.

So every engine (rows in memory, DuckDB, Dask) makes the same checks:

- the response's variation left by the fixed effects, ``r'r`` for OLS residuals ``r``: zero
  means y is constant (or an exact function of X) and there is nothing to model;
- for each random-effect column ``z`` of a grouping factor, the share of ``sum_j |z_j|^2``
  (``z_j`` the column restricted to level j) that lies outside the span of X:
  ``1 - sum_j z_j'X M^{-1} X'z_j / sum_j z_j'z_j`` with ``M = X'X``; zero means the random
  effect is confounded with fixed effects (``y ~ C(g) + (1 | g)``) and its variance is not
  identified;
- for each random slope on a factor with a random intercept, the share of its sum of squares
  that varies within levels, ``sum_j (S_j[b,b] - S_j[a,b]^2 / S_j[a,a]) / sum_j S_j[b,b]`` for
  intercept column a: zero means the slope is constant within every cluster, so it only
  shifts the intercept (identified at most through differences in variance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as la

from .covariance import BlockLayout
from .stats import SufficientStats

#: Shares below this count as zero (rounding in sums of squares of standardised columns).
ZERO_SHARE = 1e-10


@dataclass
class Identifiability:
    """Diagnostics per block (engine order): each column's share outside span(X), and within levels."""

    residual_share: float  # r'r / y'y of the standardised response after OLS on X
    outside_fixed: list[np.ndarray]
    within_levels: list[np.ndarray]  # NaN for columns without a within-level question


def _level_blocks(stats: SufficientStats) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per block: the per-level stacks ``Z_j'Z_j`` (q, q, m) and ``Z_j'X`` (q, p, m)."""
    out = [(stats.first_ZtZ, stats.first_ZtX)]
    offset = 0
    for q, m in stats.rest_sizes:
        idx = offset + np.arange(m)[:, None] * q + np.arange(q)[None, :]  # (m, q)
        ZtZ = np.empty((q, q, m))
        for a in range(q):
            for b in range(q):
                ZtZ[a, b] = np.asarray(stats.rest_ZtZ[idx[:, a], idx[:, b]]).ravel()
        ZtX = stats.rest_ZtX[idx].transpose(1, 2, 0)
        out.append((ZtZ, ZtX))
        offset += q * m
    return out


def identifiability(stats: SufficientStats, layouts: list[BlockLayout]) -> Identifiability:
    """The diagnostics of the module docstring for a model's statistics."""
    p = stats.p
    if p:
        cho = la.cho_factor(stats.XtX + 1e-14 * np.trace(stats.XtX) * np.eye(p))
        rss = stats.yty - stats.Xty @ la.cho_solve(cho, stats.Xty)
    else:
        cho, rss = None, stats.yty
    residual_share = float(rss / stats.yty) if stats.yty > 0 else 0.0
    outside, within = [], []
    for (ZtZ, ZtX), layout in zip(_level_blocks(stats), layouts):
        q = ZtZ.shape[0]
        total = np.array([float(ZtZ[a, a].sum()) for a in range(q)])
        explained = np.zeros(q)
        if cho is not None:
            for a in range(q):
                A = ZtX[a]  # (p, m)
                explained[a] = float(np.einsum("pm,pm->", A, la.cho_solve(cho, A)))
        outside.append(np.where(total > 0, 1.0 - explained / np.where(total > 0, total, 1.0), 0.0))
        shares = np.full(q, np.nan)
        intercept = layout.names.index("(Intercept)") if "(Intercept)" in layout.names else None
        if intercept is not None:
            a = intercept
            for b in range(q):
                if b == a or total[b] <= 0:
                    continue
                with np.errstate(all="ignore"):
                    spread = ZtZ[b, b] - np.where(ZtZ[a, a] > 0, ZtZ[a, b] ** 2 / ZtZ[a, a], 0.0)
                shares[b] = float(np.maximum(spread, 0.0).sum() / total[b])
        within.append(shares)
    return Identifiability(residual_share, outside, within)
