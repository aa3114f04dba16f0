"""The inputs of a residual structure from the estimation rows: occasions, by-levels, covariates.

Checks what the structure needs of the data (a numeric time variable, distinct occasions
within each cluster, integer occasions for the discrete-time types, a non-zero covariate for a
power variance function) and hands arrays to :class:`mixedfx.engine.rside.RStructure`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..engine.rside import RStructure
from ..errors import DataError
from ..spec.residuals import ResidualSpec


def _time(spec: ResidualSpec, data: pd.DataFrame, clusters: np.ndarray) -> np.ndarray:
    """Occasion of each row: ``t(VAR)``, or the row's position within its cluster (1, 2, ...)."""
    if spec.time is None:
        return pd.Series(clusters).groupby(clusters).cumcount().to_numpy(dtype=float) + 1.0
    if spec.time not in data.columns:
        raise DataError(f"Unknown time variable {spec.time!r} in residuals(..., t({spec.time})).")
    t = pd.to_numeric(data[spec.time], errors="coerce").to_numpy(dtype=float)
    if np.isnan(t).any():
        raise DataError(f"The time variable {spec.time!r} must be numeric.")
    return t


def _by(spec: ResidualSpec, data: pd.DataFrame, n: int) -> tuple[np.ndarray, list[str]]:
    if spec.by is None:
        return np.zeros(n, dtype=int), ["all"]
    if spec.by not in data.columns:
        raise DataError(f"Unknown variable {spec.by!r} in residuals(..., by({spec.by})).")
    codes, levels = pd.factorize(data[spec.by], sort=True)
    return codes, [str(v) for v in levels]


def _variance_covariate(spec: ResidualSpec, data: pd.DataFrame) -> np.ndarray | None:
    if spec.variance is None:
        return None
    kind, name = spec.variance
    if name not in data.columns:
        raise DataError(f"Unknown variance covariate {name!r}.")
    values = pd.to_numeric(data[name], errors="coerce").to_numpy(dtype=float)
    if kind == "power" and np.any(values == 0):
        raise DataError(f"A power variance function needs {name!r} non-zero on every row.")
    return values


def _check_times(spec: ResidualSpec, data: pd.DataFrame, clusters: np.ndarray, time: np.ndarray, name: str) -> None:
    if spec.kind not in ("independent", "exchangeable"):
        repeated = pd.DataFrame({"c": clusters, "t": time}).duplicated(keep=False).to_numpy()
        if repeated.any():
            first = np.flatnonzero(repeated)[0]
            rows = np.flatnonzero(repeated & (clusters == clusters[first]) & (time == time[first]))
            label = data[name].iloc[first] if name in data.columns else clusters[first]
            label = label.item() if isinstance(label, np.generic) else label
            raise DataError(
                f"Cluster {label!r} of {name!r} has two observations at the same {spec.time or 'position'} "
                f"({time[first]:g}; rows {', '.join(repr(r) for r in data.index[rows])}): a correlation structure "
                "over time needs distinct times within each cluster. Drop or correct the duplicate."
            )
    if spec.kind in ("ar1", "ma1", "toeplitz", "banded") and np.any(time != np.round(time)):
        raise DataError(f"{spec.kind} needs integer occasions in t(); use 'exponential, t(...)' for continuous time.")
    if spec.kind in ("toeplitz", "banded"):
        occasions = np.unique(time).size
        if spec.order >= occasions:
            raise DataError(
                f"{spec.kind} {spec.order} needs more than {spec.order} occasions, but {spec.time or 'the clusters'!r} "
                f"has {occasions}: use at most {spec.kind} {occasions - 1} (or unstructured)."
            )


def residual_structure(
    spec: ResidualSpec, data: pd.DataFrame, clusters: np.ndarray, n_clusters: int, cluster_name: str = "cluster"
) -> RStructure:
    """The residual structure ``spec`` on the estimation rows ``data`` grouped by ``clusters``
    (the levels of ``cluster_name``)."""
    time = _time(spec, data, clusters)
    _check_times(spec, data, clusters, time, cluster_name)
    by_codes, by_levels = _by(spec, data, len(clusters))
    return RStructure(spec, time, by_codes, by_levels, _variance_covariate(spec, data), clusters, n_clusters)
