"""Residual autocorrelation within clusters (the lecture's ``autocor`` table).

Given residuals, an occasion (time) variable and a cluster variable, the occasion-by-
occasion correlation matrix pairs the residuals of the same cluster at occasions s and t
(pairwise complete: clusters missing either occasion are left out of that pair), and the
autocorrelation by lag k averages over all within-cluster pairs k occasions apart (ranked
order of the observed occasions within each cluster), each pair standardised by the
overall residual SD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import DataError


@dataclass
class Autocorrelation:
    """``matrix``: correlation of residuals between occasions; ``acf``: by lag (with pair counts)."""

    matrix: pd.DataFrame
    acf: pd.DataFrame


def autocorrelation(residuals, time, group, max_lag: int | None = None) -> Autocorrelation:
    """Occasion-by-occasion correlation matrix and lag autocorrelations of within-cluster residuals.

    ``residuals``, ``time`` and ``group`` are equal-length sequences (e.g. columns of the
    data, or ``fit.residuals()`` with the data's occasion and id columns).  Occasions are
    the distinct values of ``time``; the lag of a pair is its distance in the cluster's
    own ordering of occasions.
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
    frame = frame.sort_values(["g", "t"])
    frame["order"] = frame.groupby("g").cumcount()
    sd = frame["r"].std(ddof=0)
    centred = (frame["r"] - frame["r"].mean()) / sd
    frame["z"] = centred
    rows = []
    longest = int(frame["order"].max())
    max_lag = longest if max_lag is None else min(max_lag, longest)
    by_cluster = frame.set_index(["g", "order"])["z"]
    for lag in range(1, max_lag + 1):
        later = by_cluster.copy()
        later.index = pd.MultiIndex.from_arrays(
            [later.index.get_level_values(0), later.index.get_level_values(1) - lag]
        )
        pairs = pd.concat([by_cluster.rename("a"), later.rename("b")], axis=1, join="inner")
        if len(pairs) < 2:
            break
        rows.append({"lag": lag, "acf": float((pairs["a"] * pairs["b"]).mean()), "pairs": len(pairs)})
    return Autocorrelation(matrix=matrix, acf=pd.DataFrame(rows).set_index("lag"))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating))
