"""The covariance of one cluster's observations implied by the fitted model (Stata's ``estat wcorrelation``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import OptionError
from ..results import FitRecord


def _cluster_rows(result: FitRecord, group: str | None, cluster: object | None) -> tuple[object, np.ndarray, str]:
    """Row positions of one cluster of ``group`` (default: the factor with fewest levels, first level)."""
    blocks = result.design.blocks
    rside = result.rside
    if not blocks and rside is not None:  # marginal model: clusters of the residual structure
        codes, uniques = pd.factorize(result.design.data[rside.cluster], sort=True)
        labels = [str(u) for u in uniques]
        label = labels[0] if cluster is None else str(cluster)
        if label not in labels:
            raise OptionError(f"{rside.cluster!r} has no level {label!r}.")
        return label, np.flatnonzero(codes == labels.index(label)), rside.cluster
    block = (
        min(blocks, key=lambda b: b.n_levels) if group is None else next((b for b in blocks if b.name == group), None)
    )
    if block is None:
        raise OptionError(f"No grouping factor {group!r}; the model has {', '.join(b.name for b in blocks)}.")
    label = block.levels[0] if cluster is None else str(cluster)
    if label not in block.levels:
        raise OptionError(f"{block.name!r} has no level {label!r}.")
    rows = np.flatnonzero(block.codes == block.levels.index(label))
    return label, rows, block.name


def wcovariance(result: FitRecord, group: str | None = None, cluster: object | None = None) -> pd.DataFrame:
    """Model-implied covariance of the observations of one cluster (Stata ``estat wcorrelation, covariance``).

    ``V = sum_k Z_k G_k Z_k' + sigma^2 W^{-1}`` over the rows of ``cluster`` (a level of
    ``group``); random slopes make its diagonal depend on the covariates (the lecture's
    ``var(xi_ij) = tau_1^2 + 2 tau_12 x + tau_2^2 x^2 + sigma^2``).
    """
    result.require_rows("The within-cluster covariance")
    label, rows, name = _cluster_rows(result, group, cluster)
    V = np.zeros((rows.size, rows.size))
    for block in result.design.blocks:
        Z = block.Z[rows]
        same = block.codes[rows][:, None] == block.codes[rows][None, :]
        V += (Z @ result.G[block.name].to_numpy() @ Z.T) * same
    rside = result.rside
    if rside is not None:
        V += rside.covariance_rows(rows, result.sigma)
    else:
        w = result.design.weights[rows] if result.design.weights is not None else np.ones(rows.size)
        V += np.diag(result.sigma**2 / w)
    index = pd.Index(result.design.row_index[rows], name=f"{name}={label}")
    return pd.DataFrame(V, index=index, columns=index)


def wcorrelation(result: FitRecord, group: str | None = None, cluster: object | None = None) -> pd.DataFrame:
    """Model-implied correlation of the observations of one cluster (Stata ``estat wcorrelation``)."""
    V = wcovariance(result, group, cluster)
    sd = np.sqrt(np.diag(V.to_numpy()))
    return V / np.outer(sd, sd)
