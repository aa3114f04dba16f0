"""From per-cluster sums to the engine's sufficient statistics, and the saved reduction.

Every backend (:mod:`~mixedfx.data.reduce.sqlscan`, :mod:`~mixedfx.data.reduce.chunks`)
produces :class:`ClusterSums`: for each cluster of the innermost factor, ``Z'Z``, ``Z'X~`` and
``Z'y~`` (all factors' random-effect columns ``Z``, standardised ``X~`` and ``y~``) and the
labels of the outer levels it belongs to, plus the global ``X~'X~``, ``X~'y~``, ``y~'y~``.
:func:`assemble` turns that into the engine's statistics and :func:`finish` into a
:class:`ReducedData`, which keeps them with the model's metadata so that the reduction can
be saved and refitted (ML or REML, other covariance structures) without the rows (see
:mod:`mixedfx.data.reduce.reduced`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...engine.stats import Scaling, SufficientStats
from ...errors import DataError, RankDeficiencyWarning
from ..checks import aliased_columns, check_grouping_factor
from ..levels import LevelLabels
from .plan import ColumnPlan
from .reduced import ReducedData


@dataclass
class ClusterSums:
    """Per innermost-cluster cross-products and global sums (see the module docstring)."""

    keys: pd.DataFrame  # one column per grouping factor (labels), one row per innermost cluster
    counts: np.ndarray
    ZZ: np.ndarray  # (Q, Q, C) over all factors' random-effect columns: element-major, as the engine's stacks
    ZX: np.ndarray  # (Q, p, C)
    Zy: np.ndarray  # (Q, C)
    XX: np.ndarray
    Xy: np.ndarray
    yy: float
    sum_log_weights: float = 0.0
    ZW: np.ndarray | None = None  # (Q, p+1, C) holding ZX and Zy as views, when built so


def _block_order(plan: ColumnPlan, keys: pd.DataFrame) -> list[str]:
    """Factor names, most levels first (the innermost factor first)."""
    names = list(dict.fromkeys(":".join(f) for _, f, *_ in plan.terms))
    if len(names) == 1:  # nothing to order (and no hash table over millions of cluster keys)
        return names
    return sorted(names, key=lambda n: -keys[n].nunique())


def z_layout(plan: ColumnPlan) -> dict[str, list[int]]:
    """Positions of each factor's columns in the concatenated Z of all terms (plan order)."""
    layout: dict[str, list[int]] = {}
    offset = 0
    for _, factor, _, names, _ in plan.terms:
        layout.setdefault(":".join(factor), []).extend(range(offset, offset + len(names)))
        offset += len(names)
    return layout


def assemble(sums: ClusterSums, plan: ColumnPlan, p: int) -> tuple[SufficientStats, list[str], dict, dict, dict]:
    """Engine statistics (raw random-effect columns) from per-innermost-cluster sums.

    Requires nesting: every outer factor must be constant within each innermost cluster.
    Clusters that arrive sorted by label (as the SQL reduction delivers them) are used in
    place, without copying the stacks.
    """
    keys = sums.keys
    order = _block_order(plan, keys)
    inner = order[0]
    counts_c, ZZ, ZX, Zy = sums.counts, sums.ZZ, sums.ZX, sums.Zy
    # Levels in the in-memory engine's order: numbers numerically, anything else as text.
    inner_keys = keys[inner].to_numpy()
    if inner_keys.dtype.kind not in "iuf":
        inner_keys = inner_keys.astype(str)
    if inner_keys.size > 1 and not np.all(inner_keys[1:] > inner_keys[:-1]):
        sort = np.argsort(inner_keys, kind="stable")
        inner_keys = inner_keys[sort]
        if np.any(inner_keys[1:] == inner_keys[:-1]):
            raise DataError(f"Internal error: clusters of {inner!r} are not unique after reduction.")
        keys = keys.iloc[sort].reset_index(drop=True)
        counts_c, ZZ, ZX, Zy = counts_c[sort], ZZ[:, :, sort], ZX[:, :, sort], Zy[:, sort]
    layout = z_layout(plan)
    level_lists, codes, counts = {}, {}, {}
    for name in order:
        if name == inner:  # sorted and unique: the clusters are the levels
            level_lists[name] = LevelLabels(inner_keys)
            codes[name] = np.arange(len(keys))
            counts[name] = counts_c.astype(int)
            continue
        labels, inverse = np.unique(keys[name].to_numpy().astype(str), return_inverse=True)
        level_lists[name] = [str(v) for v in labels]
        codes[name] = inverse
        counts[name] = np.bincount(inverse, weights=counts_c, minlength=len(labels)).astype(int)
    i1 = layout[inner]
    q1, m1 = len(i1), len(level_lists[inner])
    whole = i1 == list(range(ZZ.shape[0]))
    stats = SufficientStats(
        n=int(counts_c.sum()),
        p=p,
        XtX=sums.XX,
        Xty=sums.Xy,
        yty=float(sums.yy),
        sum_log_weights=sums.sum_log_weights,
        first_q=q1,
        first_ZtZ=ZZ if whole else np.ascontiguousarray(ZZ[np.ix_(i1, i1)]),
        first_ZtX=ZX if whole else np.ascontiguousarray(ZX[i1]),
        first_Zty=Zy if whole else np.ascontiguousarray(Zy[i1]),
        rest_sizes=[(len(layout[n]), len(level_lists[n])) for n in order[1:]],
        first_ZtW=sums.ZW if (whole and sums.ZW is not None and ZX.base is sums.ZW) else None,
    )
    if len(order) > 1:
        _assemble_rest(stats, order, layout, codes, level_lists, ZZ, ZX, Zy, q1, m1)
    return stats, order, level_lists, counts, layout


def _assemble_rest(stats, order, layout, codes, level_lists, ZZ, ZX, Zy, q1, m1) -> None:
    """Cross-products of the outer (nesting) factors, placed at each cluster's outer levels."""
    offsets, dims = {}, {}
    total = 0
    for name in order[1:]:
        offsets[name] = total
        dims[name] = len(layout[name]) * len(level_lists[name])
        total += dims[name]
    C = ZZ.shape[2]
    i1 = layout[order[0]]
    rows, cols, vals = [], [], []
    outer_rows, outer_cols, outer_vals = [], [], []
    zx = np.zeros((total, ZX.shape[1]))
    zy = np.zeros(total)
    cluster = np.arange(C)
    for k in order[1:]:
        ik, qk = layout[k], len(layout[k])
        base_k = offsets[k] + codes[k] * qk
        for a in range(qk):
            for b in range(q1):
                rows.append(base_k + a)
                cols.append(cluster * q1 + b)
                vals.append(ZZ[ik[a], i1[b]])
            np.add.at(zx, base_k + a, ZX[ik[a]].T)
            np.add.at(zy, base_k + a, Zy[ik[a]])
        for j in order[1:]:
            ij, qj = layout[j], len(layout[j])
            base_j = offsets[j] + codes[j] * qj
            for a in range(qk):
                for b in range(qj):
                    outer_rows.append(base_k + a)
                    outer_cols.append(base_j + b)
                    outer_vals.append(ZZ[ik[a], ij[b]])
    stats.rest_Z1 = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(total, m1 * q1)
    ).tocsr()
    stats.rest_ZtZ = sp.coo_matrix(  # duplicates (clusters of one outer level) are summed
        (np.concatenate(outer_vals), (np.concatenate(outer_rows), np.concatenate(outer_cols))), shape=(total, total)
    ).tocsr()
    stats.rest_ZtX = zx
    stats.rest_Zty = zy


def scaling_from_moments(names: list[str], mean: np.ndarray, sd: np.ndarray, y_mean: float, y_sd: float) -> Scaling:
    """The :class:`Scaling` that ``mixedfx.stats.standardise`` would compute, from column moments."""
    p = len(names)
    T = np.eye(p)
    intercept = next((j for j in range(p) if sd[j] == 0 and mean[j] != 0), None)
    value = float(mean[intercept]) if intercept is not None else 1.0
    for j in range(p):
        if j == intercept:
            continue
        shift = float(mean[j]) if intercept is not None else 0.0
        scale = float(sd[j]) if intercept is not None else float(np.sqrt(sd[j] ** 2 + mean[j] ** 2))
        scale = scale if scale > 0 else 1.0
        T[j, j] = 1.0 / scale
        if intercept is not None:
            T[intercept, j] = -shift / (scale * value)
    shift_y = y_mean if intercept is not None else 0.0
    scale_y = y_sd if intercept is not None else float(np.sqrt(y_sd**2 + y_mean**2))
    return Scaling(T, shift_y, scale_y if scale_y > 0 else 1.0, intercept, value)


def standardised(X: np.ndarray, y: np.ndarray, scaling: Scaling) -> tuple[np.ndarray, np.ndarray]:
    Xs = X @ scaling.T
    return Xs, (y - scaling.y_shift) / scaling.y_scale


def kept_scaling(scaling: Scaling, idx: np.ndarray) -> Scaling:
    """The scaling of the fixed-effects columns ``idx`` (sorted) only, after aliased ones are dropped."""
    return Scaling(
        scaling.T[np.ix_(idx, idx)],
        scaling.y_shift,
        scaling.y_scale,
        None if scaling.intercept is None else int(np.searchsorted(idx, scaling.intercept)),
        scaling.intercept_value,
    )


def kept_fixed_columns(XX: np.ndarray, names: list[str]) -> list[bool]:
    """Columns kept by the rank check (as in memory), from the standardised X'X."""
    d = np.sqrt(np.maximum(np.diag(XX), 0.0))
    d = np.where(d > 0, d, 1.0)
    keep = list(~aliased_columns(XX / np.outer(d, d)) & (np.diag(XX) > 0))
    dropped = [n for n, k in zip(names, keep) if not k]
    if dropped:
        warnings.warn(
            f"Fixed-effects design is rank deficient: dropping {', '.join(dropped)}.",
            RankDeficiencyWarning,
            stacklevel=4,
        )
    return keep


def finish(parsed, plan, sums, scaling, z_mean, z_sd, nobs, n_missing, weighted, weight_scale=1.0) -> ReducedData:
    """Assemble statistics and metadata into a :class:`ReducedData`."""
    p = len(plan.fixed_names)
    keep = kept_fixed_columns(sums.XX, plan.fixed_names)
    stats, order, level_lists, counts, layout = assemble(sums, plan, p)
    dropped = [n for n, k in zip(plan.fixed_names, keep) if not k]
    if dropped:
        idx = np.flatnonzero(keep)
        stats.XtX, stats.Xty = stats.XtX[np.ix_(idx, idx)], stats.Xty[idx]
        stats.first_ZtX = np.ascontiguousarray(stats.first_ZtX[:, idx])
        stats.first_ZtW = None  # the combined stack no longer matches
        if stats.rest_ZtX is not None:
            stats.rest_ZtX = stats.rest_ZtX[:, idx]
        stats.p = len(idx)
        scaling = kept_scaling(scaling, idx)
    moments = {}
    for name in order:
        cols = layout[name]
        moments[name] = (z_mean[cols], z_sd[cols])
    plan.fixed_names = [n for n, k in zip(plan.fixed_names, keep) if k]
    reduced = ReducedData(parsed, plan, order, level_lists, counts, moments, stats, scaling, nobs, n_missing, dropped)
    reduced.weighted, reduced.weight_scale = weighted, weight_scale
    for block in reduced.blocks():
        check_grouping_factor(block.name, block.n_levels, block.q, block.names, nobs)
    return reduced
