"""Reduction of pandas chunks: an in-memory DataFrame in slices, or a Dask DataFrame's partitions
by map-reduce (clusters split across partitions are summed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...engine.stats import Scaling
from ...errors import DataError, OptionError
from ...spec.formula import expand_dot, parse_formula
from ..checks import complete_rows, weights_vector
from ..columns import coded_as_categories
from ..design import model_variables
from .assemble import ClusterSums, finish, scaling_from_moments, standardised
from .plan import ColumnPlan, check_reducible, cluster_keys, model_columns, plan_columns, refuse_stateful
from .reduced import ReducedData


def complete_chunk(plan: ColumnPlan, frame: pd.DataFrame, weights: str | None) -> pd.DataFrame:
    """The chunk's complete rows, with the in-memory design's checks (infinite values, weights)."""
    used = plan.variables + ([weights] if weights else [])
    frame = frame.loc[complete_rows(frame, used).to_numpy()]
    if weights and len(frame):
        weights_vector(weights, frame, pd.Series(True, index=frame.index))
    return frame


def chunk_moments(plan: ColumnPlan, frame: pd.DataFrame, weights: str | None) -> np.ndarray:
    """Count, sums and sums of squares of X, y and every Z column, and the sum of log weights, for one
    chunk (complete rows)."""
    frame = complete_chunk(plan, frame, weights)
    if frame.empty:
        return None
    y, X, Zs = model_columns(plan, frame)
    cols = np.column_stack([X, y] + Zs)
    log_w = float(np.log(frame[weights].to_numpy(dtype=float)).sum()) if weights else 0.0
    return np.concatenate([[len(frame)], cols.sum(axis=0), (cols**2).sum(axis=0), [log_w]])


def _chunk_sums(plan: ColumnPlan, frame: pd.DataFrame, scaling: Scaling, weights: str | None, w_scale: float):
    """Per-cluster sums of one chunk, as a DataFrame keyed by the innermost factor, plus global sums."""
    frame = complete_chunk(plan, frame, weights)
    if frame.empty:
        return None
    y, X, Zs = model_columns(plan, frame)
    Xs, ys = standardised(X, y, scaling)
    Z = np.hstack(Zs)
    w = frame[weights].to_numpy(dtype=float) / w_scale if weights else np.ones(len(frame))
    keys = cluster_keys(plan, frame)
    Q, p = Z.shape[1], Xs.shape[1]
    products = [
        w[:, None] * np.einsum("ia,ib->iab", Z, Z).reshape(len(Z), Q * Q),
        w[:, None] * np.einsum("ia,ik->iak", Z, Xs).reshape(len(Z), Q * p),
        w[:, None] * Z * ys[:, None],
    ]
    table = pd.DataFrame(np.hstack(products + [np.ones((len(Z), 1))]))
    table.columns = [f"c{i}" for i in range(table.shape[1])]
    for name in keys.columns:
        table[name] = keys[name].to_numpy()
    key_cols = list(keys.columns)
    grouped = table.groupby(key_cols, sort=False).sum().reset_index()
    globals_ = (Xs.T @ (w[:, None] * Xs), Xs.T @ (w * ys), float(ys @ (w * ys)), float(np.log(w).sum()))
    return grouped, globals_


def _combine(parts: list, plan: ColumnPlan, p: int) -> ClusterSums:
    """Combine chunk results: clusters split across chunks are summed; nesting is checked."""
    parts = [part for part in parts if part is not None]
    if not parts:
        raise DataError("No complete rows in the data.")
    grouped = pd.concat([g for g, _ in parts], ignore_index=True)
    key_cols = list(dict.fromkeys(":".join(f) for _, f, *_ in plan.terms))
    inner = max(key_cols, key=lambda c: grouped[c].nunique())
    pairs = grouped[key_cols].drop_duplicates()
    if pairs[inner].duplicated().any():
        bad = pairs[inner][pairs[inner].duplicated()].iloc[0]
        raise OptionError(
            f"The grouping factors are crossed (level {bad!r} of {inner!r} meets several levels of another factor): "
            "this reduction needs one grouping factor or nested ones. Fit crossed models in memory (engine='memory')."
        )
    value_cols = [c for c in grouped.columns if c not in key_cols]
    summed = grouped.groupby(inner, sort=False)[value_cols].sum()
    keys = pairs.set_index(inner).loc[summed.index].reset_index()
    values = summed.to_numpy()
    Q = sum(len(names) for *_, names, _ in plan.terms)
    C = len(values)
    ZZ = np.ascontiguousarray(values[:, : Q * Q].T).reshape(Q, Q, C)
    ZX = np.ascontiguousarray(values[:, Q * Q : Q * Q + Q * p].T).reshape(Q, p, C)
    Zy = np.ascontiguousarray(values[:, Q * Q + Q * p : Q * Q + Q * p + Q].T)
    counts = values[:, -1]
    XX = sum(g[0] for _, g in parts)
    Xy = sum(g[1] for _, g in parts)
    yy = sum(g[2] for _, g in parts)
    slw = sum(g[3] for _, g in parts)
    return ClusterSums(keys[key_cols], counts, ZZ, ZX, Zy, XX, Xy, yy, slw)


def moments_to_scaling(plan: ColumnPlan, totals: np.ndarray, p: int, Q: int):
    """Scaling for X, y, the random-effect column moments and the weights' geometric mean, from summed
    chunk moments."""
    n = totals[0]
    k = p + 1 + Q
    mean = totals[1 : 1 + k] / n
    var = np.maximum(totals[1 + k : 1 + 2 * k] / n - mean**2, 0.0)
    sd = np.sqrt(var)
    scaling = scaling_from_moments(plan.fixed_names, mean[:p], sd[:p], float(mean[p]), float(sd[p]))
    return scaling, mean[p + 1 :], sd[p + 1 :], int(n), float(np.exp(totals[-1] / n))


def reduce_frame(
    formula: str, data: pd.DataFrame, weights: str | None = None, chunk_rows: int = 1_000_000
) -> ReducedData:
    """Reduce an in-memory DataFrame (in chunks), e.g. to save the reduction or refit cheaply."""
    parsed = parse_formula(formula)
    check_reducible(parsed)
    parsed = expand_dot(parsed, list(data.columns), [weights] if weights else [])
    variables = model_variables(parsed, list(data.columns))
    coded = coded_as_categories(parsed, data.columns)
    levels = {
        c: sorted(data[c].dropna().unique().tolist())
        for c in variables
        if c in coded or not (pd.api.types.is_numeric_dtype(data[c]) or pd.api.types.is_bool_dtype(data[c]))
    }
    prototype = data.dropna(subset=[v for v in variables if v in data.columns]).head(2000)
    plan = plan_columns(parsed, prototype, levels)
    refuse_stateful(plan)
    chunks = [data.iloc[i : i + chunk_rows] for i in range(0, len(data), chunk_rows)]
    moments = [m for m in (chunk_moments(plan, c, weights) for c in chunks) if m is not None]
    if not moments:
        raise DataError("No complete rows in the data.")
    p, Q = len(plan.fixed_names), sum(len(t[3]) for t in plan.terms)
    scaling, z_mean, z_sd, nobs, w_scale = moments_to_scaling(plan, np.sum(moments, axis=0), p, Q)
    sums = _combine([_chunk_sums(plan, c, scaling, weights, w_scale) for c in chunks], plan, p)
    return finish(parsed, plan, sums, scaling, z_mean, z_sd, nobs, len(data) - nobs, weights is not None, w_scale)


@dataclass
class DaskScan:
    """The first passes over a Dask DataFrame: the plan of the model's columns, its partitions, their
    row counts, and the scaling and column moments of the complete rows."""

    parsed: object
    plan: ColumnPlan
    parts: list
    total_rows: int
    nobs: int
    scaling: Scaling
    z_mean: np.ndarray
    z_sd: np.ndarray
    w_scale: float


def scan_dask(formula: str, frame, weights: str | None = None, check_plan=None) -> DaskScan:
    """Levels of the categorical variables, the plan (``check_plan(plan)`` may refuse it), and one
    map-reduce for the moments (uses the active Dask client)."""
    import dask

    parsed = parse_formula(formula)
    check_reducible(parsed)
    parsed = expand_dot(parsed, list(frame.columns), [weights] if weights else [])
    variables = model_variables(parsed, list(frame.columns))
    coded = coded_as_categories(parsed, frame.columns)
    categorical = [
        c
        for c in variables
        if c in coded
        or not (pd.api.types.is_numeric_dtype(frame[c].dtype) or pd.api.types.is_bool_dtype(frame[c].dtype))
    ]
    uniques = dask.compute(*[frame[c].dropna().unique() for c in categorical])
    levels = {c: sorted(pd.Series(u).tolist()) for c, u in zip(categorical, uniques)}
    prototype = frame.head(2000, npartitions=-1).dropna(subset=[v for v in variables if v in frame.columns])
    plan = plan_columns(parsed, prototype, levels)
    refuse_stateful(plan)
    if check_plan is not None:
        check_plan(plan)
    parts = frame.to_delayed()
    total_rows = dask.compute(*[dask.delayed(len)(part) for part in parts])
    moments = dask.compute(*[dask.delayed(chunk_moments)(plan, part, weights) for part in parts])
    moments = [m for m in moments if m is not None]
    if not moments:
        raise DataError("No complete rows in the data.")
    p, Q = len(plan.fixed_names), sum(len(t[3]) for t in plan.terms)
    scaling, z_mean, z_sd, nobs, w_scale = moments_to_scaling(plan, np.sum(moments, axis=0), p, Q)
    return DaskScan(parsed, plan, parts, int(sum(total_rows)), nobs, scaling, z_mean, z_sd, w_scale)


def reduce_dask(formula: str, frame, weights: str | None = None) -> ReducedData:
    """Reduce a Dask DataFrame by map-reduce over its partitions (uses the active Dask client)."""
    import dask

    scan = scan_dask(formula, frame, weights)
    plan, p = scan.plan, len(scan.plan.fixed_names)
    chunk = dask.delayed(_chunk_sums)
    results = dask.compute(*[chunk(plan, part, scan.scaling, weights, scan.w_scale) for part in scan.parts])
    sums = _combine(list(results), plan, p)
    missing = scan.total_rows - scan.nobs
    return finish(
        scan.parsed,
        plan,
        sums,
        scan.scaling,
        scan.z_mean,
        scan.z_sd,
        scan.nobs,
        missing,
        weights is not None,
        scan.w_scale,
    )
