"""Synthetic benchmark data: two-level growth-curve data with random intercepts and slopes."""

from __future__ import annotations

import numpy as np
import pandas as pd


def growth_data(n_rows: int, rows_per_group: int = 10, seed: int = 0) -> pd.DataFrame:
    """``y = 1 + 0.5 t + 0.3 x1 - 0.2 x2 + 0.1 x3 + b0_g + b1_g t + e`` with 10 rows per group.

    ``t`` is the occasion (0..rows_per_group-1), x1..x3 standard normal covariates,
    ``(b0, b1)`` correlated (SDs 1 and 0.3, correlation 0.4), ``e`` N(0, 1).
    """
    rng = np.random.default_rng(seed)
    n_groups = n_rows // rows_per_group
    g = np.repeat(np.arange(n_groups), rows_per_group)
    t = np.tile(np.arange(rows_per_group, dtype=float), n_groups)
    x = rng.normal(size=(g.size, 3))
    cov = np.array([[1.0, 0.4 * 0.3], [0.4 * 0.3, 0.09]])
    b = rng.multivariate_normal([0.0, 0.0], cov, size=n_groups)
    y = 1 + 0.5 * t + x @ np.array([0.3, -0.2, 0.1]) + b[g, 0] + b[g, 1] * t + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "t": t, "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "g": g})


FORMULA = "y ~ t + x1 + x2 + x3 + (1 + t | g)"
