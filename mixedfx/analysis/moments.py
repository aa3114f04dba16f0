"""Tables of a method-of-moments fit: Wald inference on the GLS fixed effects, bootstrap inference
on the moment variance components."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..results.moments import BOOTSTRAP_REPLICATES, MomentsRecord
from ..spec.options import confidence_level
from .wald import z_columns


def moments_coef_table(record: MomentsRecord, level: float = 95) -> pd.DataFrame:
    """GLS fixed effects with SE, z, p and normal CI (SEs given the estimated components)."""
    return pd.DataFrame(z_columns(record.fixef, record.se, level))


def moments_component_table(record: MomentsRecord, level: float = 95, replicates: int | None = None) -> pd.DataFrame:
    """Variance components with parametric-bootstrap SEs and percentile intervals.

    Columns ``group``, ``estimate``, ``se`` (SD of the replicates), ``lower``, ``upper``
    (their ``(1 - level)/2`` and ``(1 + level)/2`` quantiles); ``attrs["replicates"]`` the count.
    """
    replicates = BOOTSTRAP_REPLICATES if replicates is None else int(replicates)
    draws = record.bootstrap(replicates) if replicates > 1 else np.full((1, len(record.components)), np.nan)
    alpha = 1.0 - confidence_level(level)
    lower, upper = np.quantile(draws, [alpha / 2, 1 - alpha / 2], axis=0) if replicates > 1 else (draws[0], draws[0])
    out = pd.DataFrame(
        {
            "group": list(record.components.index),
            "estimate": record.components.to_numpy(),
            "se": draws.std(axis=0, ddof=1) if replicates > 1 else np.nan,
            "lower": lower,
            "upper": upper,
        }
    )
    out.attrs["replicates"] = replicates
    return out
