"""Pluggable data reduction: fit from sufficient statistics computed by DuckDB, Dask or pandas.

For one grouping factor, or factors nested in one another, the likelihood needs the data
only through per-cluster cross-products.  Every backend here produces the same thing,
:class:`ClusterSums`: for each cluster of the innermost factor, ``Z'Z``, ``Z'X~`` and
``Z'y~`` (all factors' random-effect columns ``Z``, standardised ``X~`` and ``y~``) and the
labels of the outer levels it belongs to, plus the global ``X~'X~``, ``X~'y~``, ``y~'y~``.
:func:`assemble` turns that into the engine's statistics, and :class:`ReducedData` keeps
them with the model's metadata so the reduction can be saved and refitted (ML or REML,
other covariance structures) without touching the rows again.

Three passes over the data: (1) counts, missing values and the levels of categorical
variables; (2) means and SDs of the model's columns; (3) the cross-products.  The DuckDB
backend does all three in SQL; the column expressions are derived from formulaic's column
names and checked against formulaic on a sample before use, so the SQL computes exactly
the design formulaic would.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from formulaic import model_matrix

from .covariance import CovStructure, canonical_structure
from .design import (
    Design,
    LevelLabels,
    ReBlock,
    ReTerm,
    _check_columns,
    _required_variables,
    aliased_columns,
    lme4_name,
)
from .errors import DataError, FormulaError, OptionError, RankDeficiencyWarning, suggest
from .formula import ParsedFormula, parse_formula
from .spec.expressions import evaluation_context
from .stats import Scaling, SufficientStats

# ---------------------------------------------------------------------------- data model


@dataclass
class ColumnPlan:
    """The model's columns: names and how to compute them (formulaic specs, SQL expressions)."""

    response: str
    fixed_names: list[str]
    fixed_spec: object
    terms: list[tuple[str, tuple[str, ...], str, list[str], object]]  # expr, factor, kind, names, spec
    categorical_levels: dict[str, list]
    variables: list[str]


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


@dataclass
class ReducedData:
    """A model's data reduced to sufficient statistics; fit it with :func:`fit_reduced`."""

    formula: ParsedFormula
    plan: ColumnPlan
    blocks: list[ReBlock]
    stats: SufficientStats  # standardised X and y; random-effect columns as in stats.column_transforms
    scaling: Scaling
    nobs: int
    n_missing: int
    dropped_fixed: list[str] = field(default_factory=list)
    weighted: bool = False

    def save(self, path: str | Path) -> Path:
        """Write the reduction to ``path`` (pickle); reload with :func:`load_reduced`."""
        path = Path(path)
        with open(path, "wb") as handle:
            pickle.dump(self, handle, protocol=pickle.HIGHEST_PROTOCOL)
        return path


def load_reduced(path: str | Path) -> ReducedData:
    """Load a reduction saved with :meth:`ReducedData.save` (only load files you trust)."""
    with open(path, "rb") as handle:
        data = pickle.load(handle)
    if not isinstance(data, ReducedData):
        raise DataError(f"{str(path)!r} does not hold a mixedfx reduction.")
    return data


# ---------------------------------------------------------------------------- column planning


def _check_reducible(parsed: ParsedFormula) -> None:
    if not parsed.random:
        raise FormulaError(f"The formula {parsed.text!r} has no random-effects term; add one such as (1 | group).")


def plan_columns(parsed: ParsedFormula, prototype: pd.DataFrame, levels: dict[str, list]) -> ColumnPlan:
    """Formulaic specs of the model's columns, built on a sample with every categorical level."""
    frame = prototype.copy()
    for col, values in levels.items():
        frame[col] = pd.Categorical(frame[col], categories=values)
    mm = model_matrix(parsed.fixed_formula, frame, na_action="raise", context=evaluation_context())
    if mm.lhs.shape[1] != 1:
        raise DataError(f"The response {parsed.response!r} must be one numeric column.")
    terms = []
    for term in parsed.random:
        zm = model_matrix(term.expr, frame, na_action="raise", context=evaluation_context())
        terms.append((term.expr, term.factor, term.covariance, [lme4_name(str(c)) for c in zm.columns], zm.model_spec))
    variables = _vars(parsed)
    return ColumnPlan(
        response=parsed.response,
        fixed_names=[lme4_name(str(c)) for c in mm.rhs.columns],
        fixed_spec=mm.rhs.model_spec,
        terms=terms,
        categorical_levels=levels,
        variables=variables,
    )


def _matrices(plan: ColumnPlan, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """y, X and each term's Z for a chunk of rows (categoricals coded with the full level sets)."""
    frame = frame.copy()
    for col, values in plan.categorical_levels.items():
        frame[col] = pd.Categorical(frame[col], categories=values)
    context = evaluation_context()
    X = np.asarray(plan.fixed_spec.get_model_matrix(frame, na_action="raise", context=context), dtype=float)
    y = np.asarray(model_matrix(plan.response, frame, na_action="raise", context=context), dtype=float)[:, -1]
    Zs = [
        np.asarray(spec.get_model_matrix(frame, na_action="raise", context=context), dtype=float)
        for *_, spec in plan.terms
    ]
    return y, X, Zs


def _keys(plan: ColumnPlan, frame: pd.DataFrame) -> pd.DataFrame:
    """Level labels of every grouping factor, one column per factor (``g2:g1`` joined by ':')."""
    from .design import factor_labels

    out = {}
    for _, factor, *_ in plan.terms:
        name = ":".join(factor)
        if name not in out:
            out[name] = factor_labels(frame, factor)
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------- assembling statistics


def _block_order(plan: ColumnPlan, keys: pd.DataFrame) -> list[str]:
    """Factor names, most levels first (the innermost factor first)."""
    names = list(dict.fromkeys(":".join(f) for _, f, *_ in plan.terms))
    if len(names) == 1:  # nothing to order (and no hash table over millions of cluster keys)
        return names
    return sorted(names, key=lambda n: -keys[n].nunique())


def _make_blocks(
    plan: ColumnPlan, order: list[str], level_lists: dict, counts: dict, moments: dict, covariance: dict | None
) -> list[ReBlock]:
    """Metadata-only :class:`ReBlock` objects (no rows) in engine order."""
    blocks = []
    for name in order:
        block = ReBlock(
            name, tuple(name.split(":")), None, level_lists[name], None, counts=counts[name], moments=moments[name]
        )
        start = 0
        for expr, factor, kind, names, spec in plan.terms:
            if ":".join(factor) != name:
                continue
            if covariance:
                for key in (name, factor[0]):
                    if key in covariance:
                        kind = canonical_structure(covariance[key])
                        break
            block.terms.append(
                ReTerm(expr, names, CovStructure(kind, len(names)), slice(start, start + len(names)), spec)
            )
            start += len(names)
        blocks.append(block)
    return blocks


def _z_layout(plan: ColumnPlan) -> dict[str, list[int]]:
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
    layout = _z_layout(plan)
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
    dense = np.zeros((total, total))
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
                    np.add.at(dense, (base_k + a, base_j + b), ZZ[ik[a], ij[b]])
    stats.rest_Z1 = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(total, m1 * q1)
    ).tocsr()
    stats.rest_ZtZ = dense
    stats.rest_ZtX = zx
    stats.rest_Zty = zy


# ---------------------------------------------------------------------------- scaling from moments


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


def _standardised(X: np.ndarray, y: np.ndarray, scaling: Scaling) -> tuple[np.ndarray, np.ndarray]:
    Xs = X @ scaling.T
    return Xs, (y - scaling.y_shift) / scaling.y_scale


def _drop_aliased_from_crossproducts(XX: np.ndarray, names: list[str]) -> list[bool]:
    """Columns kept by the rank check (as in memory), from the standardised X'X."""
    import warnings

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


# ---------------------------------------------------------------------------- pandas chunks (Dask partitions)


def _chunk_moments(plan: ColumnPlan, frame: pd.DataFrame, weights: str | None) -> np.ndarray:
    """Count, sums and sums of squares of X, y and every Z column for one chunk (complete rows)."""
    frame = frame.dropna(subset=plan.variables + ([weights] if weights else []))
    if frame.empty:
        return None
    y, X, Zs = _matrices(plan, frame)
    cols = np.column_stack([X, y] + Zs)
    return np.concatenate([[len(frame)], cols.sum(axis=0), (cols**2).sum(axis=0)])


def _chunk_sums(plan: ColumnPlan, frame: pd.DataFrame, scaling: Scaling, weights: str | None):
    """Per-cluster sums of one chunk, as a DataFrame keyed by the innermost factor, plus global sums."""
    frame = frame.dropna(subset=plan.variables + ([weights] if weights else []))
    if frame.empty:
        return None
    y, X, Zs = _matrices(plan, frame)
    Xs, ys = _standardised(X, y, scaling)
    Z = np.hstack(Zs)
    w = frame[weights].to_numpy(dtype=float) if weights else np.ones(len(frame))
    keys = _keys(plan, frame)
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


def _moments_to_scaling(plan: ColumnPlan, totals: np.ndarray, p: int, Q: int):
    """Scaling for X, y and the random-effect column moments from summed chunk moments."""
    n = totals[0]
    k = p + 1 + Q
    mean = totals[1 : 1 + k] / n
    var = np.maximum(totals[1 + k : 1 + 2 * k] / n - mean**2, 0.0)
    sd = np.sqrt(var)
    scaling = scaling_from_moments(plan.fixed_names, mean[:p], sd[:p], float(mean[p]), float(sd[p]))
    return scaling, mean[p + 1 :], sd[p + 1 :], int(n)


# ---------------------------------------------------------------------------- public reducers


def _finish(parsed, plan, sums, scaling, z_mean, z_sd, nobs, n_missing, weighted) -> ReducedData:
    """Assemble statistics and metadata into a :class:`ReducedData`."""
    p = len(plan.fixed_names)
    keep = _drop_aliased_from_crossproducts(sums.XX, plan.fixed_names)
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
        scaling = Scaling(
            scaling.T[np.ix_(idx, idx)],
            scaling.y_shift,
            scaling.y_scale,
            None if scaling.intercept is None else int(np.searchsorted(idx, scaling.intercept)),
            scaling.intercept_value,
        )
    moments = {}
    for name in order:
        cols = layout[name]
        moments[name] = (z_mean[cols], z_sd[cols])
    blocks = _make_blocks(plan, order, level_lists, counts, moments, None)
    plan.fixed_names = [n for n, k in zip(plan.fixed_names, keep) if k]
    if blocks[0].n_levels >= nobs:
        raise DataError(f"Grouping factor {blocks[0].name!r} has as many levels as observations.")
    return ReducedData(parsed, plan, blocks, stats, scaling, nobs, n_missing, dropped, weighted)


def reduce_frame(
    formula: str, data: pd.DataFrame, weights: str | None = None, chunk_rows: int = 1_000_000
) -> ReducedData:
    """Reduce an in-memory DataFrame (in chunks), e.g. to save the reduction or refit cheaply."""
    parsed = parse_formula(formula)
    _check_reducible(parsed)
    levels = {
        c: sorted(data[c].dropna().unique().tolist())
        for c in data.columns
        if not pd.api.types.is_numeric_dtype(data[c]) and not pd.api.types.is_bool_dtype(data[c])
    }
    _check_variables(parsed, list(data.columns))
    variables = _vars(parsed)
    prototype = data.dropna(subset=[v for v in variables if v in data.columns]).head(2000)
    plan = plan_columns(parsed, prototype, {c: v for c, v in levels.items() if c in variables})
    chunks = [data.iloc[i : i + chunk_rows] for i in range(0, len(data), chunk_rows)]
    moments = [m for m in (_chunk_moments(plan, c, weights) for c in chunks) if m is not None]
    if not moments:
        raise DataError("No complete rows in the data.")
    p, Q = len(plan.fixed_names), sum(len(t[3]) for t in plan.terms)
    scaling, z_mean, z_sd, nobs = _moments_to_scaling(plan, np.sum(moments, axis=0), p, Q)
    sums = _combine([_chunk_sums(plan, c, scaling, weights) for c in chunks], plan, p)
    return _finish(parsed, plan, sums, scaling, z_mean, z_sd, nobs, len(data) - nobs, weights is not None)


def reduce_dask(formula: str, frame, weights: str | None = None) -> ReducedData:
    """Reduce a Dask DataFrame by map-reduce over its partitions (uses the active Dask client)."""
    import dask

    parsed = parse_formula(formula)
    _check_reducible(parsed)
    _check_variables(parsed, list(frame.columns))
    variables = _vars(parsed)
    categorical = [
        c
        for c in variables
        if c in frame.columns
        and not pd.api.types.is_numeric_dtype(frame[c].dtype)
        and not pd.api.types.is_bool_dtype(frame[c].dtype)
    ]
    uniques = dask.compute(*[frame[c].dropna().unique() for c in categorical])
    levels = {c: sorted(pd.Series(u).tolist()) for c, u in zip(categorical, uniques)}
    prototype = frame.head(2000, npartitions=-1).dropna(subset=[v for v in variables if v in frame.columns])
    plan = plan_columns(parsed, prototype, levels)
    parts = frame.to_delayed()
    total_rows = dask.compute(*[dask.delayed(len)(part) for part in parts])
    moments = dask.compute(*[dask.delayed(_chunk_moments)(plan, part, weights) for part in parts])
    moments = [m for m in moments if m is not None]
    if not moments:
        raise DataError("No complete rows in the data.")
    p, Q = len(plan.fixed_names), sum(len(t[3]) for t in plan.terms)
    scaling, z_mean, z_sd, nobs = _moments_to_scaling(plan, np.sum(moments, axis=0), p, Q)
    results = dask.compute(*[dask.delayed(_chunk_sums)(plan, part, scaling, weights) for part in parts])
    sums = _combine(list(results), plan, p)
    return _finish(parsed, plan, sums, scaling, z_mean, z_sd, nobs, int(sum(total_rows)) - nobs, weights is not None)


def _vars(parsed: ParsedFormula) -> list[str]:
    """The data columns a model uses (every expression checked as in memory)."""
    variables = set(_required_variables(parsed.fixed_formula, "the fixed part"))
    for term in parsed.random:
        variables |= _required_variables(term.expr, f"random term ({term.expr} | {term.group_name})")
        variables |= set(term.factor)
    return sorted(variables)


def _check_variables(parsed: ParsedFormula, columns: list[str]) -> None:
    """Refuse variables that are not columns (with suggestions), as the in-memory design does."""
    _check_columns(set(_vars(parsed)), columns, "the formula")


# ---------------------------------------------------------------------------- fitting


def fit_reduced(reduced: ReducedData, method: str = "reml", covariance: dict[str, str] | None = None):
    """Fit a model from a :class:`ReducedData` (no rows needed)."""

    from .likelihood import ProfiledDeviance
    from .model import _check_method, warn_fit_problems
    from .optimize import minimize_deviance
    from .results import MixedResults
    from .start import starting_point

    reml = _check_method(method)
    blocks = _make_blocks(
        reduced.plan,
        [b.name for b in reduced.blocks],
        {b.name: b.levels for b in reduced.blocks},
        {b.name: b.level_counts for b in reduced.blocks},
        {b.name: b.moments for b in reduced.blocks},
        covariance,
    )
    transforms = [b.standardising_transform() for b in blocks]
    factors = [(b.n_params, b.factor_matrix, b.factor_jacobian) for b in blocks]
    # The statistics are transformed in place (no second copy); every deviance built on them
    # restores its own transform before it reads them (see ProfiledDeviance.use_columns).
    deviance = ProfiledDeviance(reduced.stats, factors, reml, column_transforms=transforms)
    start = np.concatenate([t.structure.start() for b in blocks for t in b.terms])
    start, step_scale = starting_point(deviance, blocks, start)
    lower = np.concatenate([t.structure.lower_bounds() for b in blocks for t in b.terms])
    upper = np.concatenate([t.structure.upper_bounds() for b in blocks for t in b.terms])
    gradient = deviance.deviance_and_gradient if deviance.single_factor else None
    information = deviance.deviance_gradient_information if deviance.single_factor else None
    report = minimize_deviance(
        deviance,
        start,
        lower,
        upper,
        value_and_gradient=gradient,
        step_scale=step_scale,
        value_gradient_information=information,
    )
    design = Design(
        formula=reduced.formula,
        y=None,
        X=None,
        fixed_names=list(reduced.plan.fixed_names),
        blocks=blocks,
        weights=None,
        n_missing=reduced.n_missing,
        dropped_fixed=list(reduced.dropped_fixed),
        row_index=None,
        fixed_spec=reduced.plan.fixed_spec,
        response_name=reduced.formula.response,
        data=None,
    )
    design.n_rows = reduced.nobs
    result = MixedResults(design, deviance, reduced.scaling, report, reml)
    warn_fit_problems(result, stacklevel=3)
    return result


# ---------------------------------------------------------------------------- SQL translation (DuckDB)

_SQL_FUNCTIONS = {
    "np.log": "ln",
    "np.log10": "log10",
    "np.exp": "exp",
    "np.sqrt": "sqrt",
    "np.abs": "abs",
    "log": "ln",
    "exp": "exp",
    "sqrt": "sqrt",
    "abs": "abs",
}


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "(["
        depth -= ch in ")]"
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _numeric_sql(expr: str, columns: list[str]) -> str:
    """SQL for a numeric formulaic factor: a column, I(...) arithmetic, np.log(...) and the like."""
    expr = expr.strip()
    if expr.startswith("I(") and expr.endswith(")"):
        expr = expr[2:-1]
    out = expr
    for py, sql in sorted(_SQL_FUNCTIONS.items(), key=lambda kv: -len(kv[0])):
        out = re.sub(rf"(?<![\w.]){re.escape(py)}\(", f"{sql}(", out)
    out = out.replace("**", "^")

    def column(match: re.Match) -> str:
        word = match.group(0)
        if word in columns:
            return f"CAST({_quote(word)} AS DOUBLE)"
        if word in {"ln", "log10", "exp", "sqrt", "abs"}:
            return word
        raise FormulaError(
            f"{word!r} in {expr!r} is not supported by the duckdb engine (columns and "
            "+ - * / ** with np.log, np.exp, np.sqrt, np.abs only)."
        )

    out = re.sub(r"(?<![\w.\"])[A-Za-z_]\w*", column, out)
    if re.search(r"[^\w\s().+\-*/^,\"]", out):
        raise FormulaError(f"The expression {expr!r} is not supported by the duckdb engine.")
    return f"({out})"


def _column_sql(name: str, columns: list[str]) -> str:
    """SQL for one formulaic model-matrix column (by its formulaic name)."""
    if name == "Intercept":
        return _lit(1.0)
    factors = []
    for part in _split_top(name, ":"):
        m = re.fullmatch(r"(.*)\[(T\.)?(.*)\]", part)
        if m:
            var = m.group(1)
            c = re.fullmatch(r"C\(\s*([A-Za-z_]\w*)\s*(,.*)?\)", var)
            var = c.group(1) if c else var
            if var not in columns:
                raise FormulaError(f"Categorical term {part!r} is not supported by the duckdb engine.")
            level = m.group(3).replace("'", "''")
            factors.append(f"(CASE WHEN CAST({_quote(var)} AS VARCHAR) = '{level}' THEN {_lit(1)} ELSE {_lit(0)} END)")
        else:
            factors.append(_numeric_sql(part, columns))
    return " * ".join(factors)


def _source_sql(source: str | Path | list) -> str:
    """A DuckDB table function for files: Parquet or CSV, one path, a glob or a directory."""
    paths = [str(p) for p in source] if isinstance(source, (list, tuple)) else [str(source)]
    expanded = []
    for path in paths:
        if Path(path).is_dir():
            found = sorted(Path(path).glob("*.parquet")) or sorted(Path(path).glob("*.csv"))
            if not found:
                raise DataError(f"No .parquet or .csv files in the directory {path!r}.")
            expanded += [str(f) for f in found]
        else:
            expanded.append(path)
    if not expanded:
        raise DataError("No data files given.")
    suffix = Path(expanded[0].replace("*", "x")).suffix.lower()
    listing = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in expanded) + "]"
    if suffix in (".parquet", ".pq"):
        return f"read_parquet({listing})"
    if suffix in (".csv", ".tsv", ".txt"):
        return f"read_csv_auto({listing})"
    raise DataError(f"The duckdb engine reads .parquet and .csv files, not {suffix!r}.")


def reduce_duckdb(formula: str, source, weights: str | None = None, connection=None) -> ReducedData:
    """Reduce Parquet/CSV files (a path, glob, directory or list) in SQL with DuckDB.

    The rows never enter Python: DuckDB computes the level lists, the column moments and
    the per-cluster cross-products; only one row per cluster comes back.
    """
    import duckdb

    con = connection or duckdb.connect()
    src = _source_sql(source)
    parsed = parse_formula(formula)
    _check_reducible(parsed)
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {src}").df()
    except duckdb.Error as exc:
        raise DataError(f"DuckDB cannot read {source!r}: {str(exc).splitlines()[0]}") from exc
    columns = described["column_name"].tolist()
    types = dict(zip(described["column_name"], described["column_type"]))
    _check_variables(parsed, columns)
    variables = [v for v in _vars(parsed) if v in columns]
    used = variables + ([weights] if weights else [])
    if weights and weights not in columns:
        raise DataError(f"Unknown weights column {weights!r}.{suggest(weights, columns)}")
    complete = " AND ".join(f"{_quote(v)} IS NOT NULL" for v in used)
    categorical = [v for v in variables if not (_is_numeric_type(types[v]) or "BOOLEAN" in types[v])]
    levels = {}
    for v in categorical:  # one pass per categorical variable: its levels
        rows = con.execute(f"SELECT DISTINCT {_quote(v)} FROM {src} WHERE {complete} ORDER BY 1").fetchall()
        levels[v] = [r[0] for r in rows]
    prototype = con.execute(f"SELECT {', '.join(_quote(v) for v in used)} FROM {src} WHERE {complete} LIMIT 2000").df()
    if prototype.empty:
        raise DataError("No complete rows in the data.")
    plan = plan_columns(parsed, prototype, levels)
    fixed_sql = [_column_sql(n, columns) for n in _formulaic_names(plan.fixed_spec)]
    z_sql = [_column_sql(n, columns) for *_, spec in plan.terms for n in _formulaic_names(spec)]
    y_sql = _numeric_sql(plan.response, columns)
    _verify_sql(con, plan, prototype, fixed_sql, z_sql, y_sql)
    w_sql = f"CAST({_quote(weights)} AS DOUBLE)" if weights else _lit(1.0)
    key_exprs = {}
    for _, factor, *_ in plan.terms:
        name = ":".join(factor)
        if len(factor) == 1 and _is_numeric_type(types[factor[0]]):
            key_exprs[name] = _quote(factor[0])  # numbers come back as numbers, not 10^7 strings
        else:
            key_exprs[name] = "concat_ws(':', " + ", ".join(f"CAST({_quote(f)} AS VARCHAR)" for f in factor) + ")"
    p = len(fixed_sql)
    # One pass for the count, the moments of every model column and the global cross-products
    # (of columns centred on the means of a sample, so that calendar-year-like offsets cannot
    # cancel digits: see _global_products), one for the numbers of clusters.
    shifts = _pilot_shifts(con, src, complete, fixed_sql + [y_sql])
    centred = [e if c == 0.0 else f"(({e}) - {_lit(c)})" for e, c in zip(fixed_sql + [y_sql], shifts)]
    every = fixed_sql + [y_sql] + z_sql
    k = len(every)
    aggregates = ["count(*)"] + [f"avg({e})" for e in every] + [f"stddev_pop({e})" for e in every]
    aggregates += [f"sum({w_sql} * {centred[i]} * {centred[j]})" for i in range(p + 1) for j in range(i, p + 1)]
    aggregates += [f"sum(ln({w_sql}))"]
    row = con.execute(f"SELECT {', '.join(aggregates)} FROM {src} WHERE {complete}").fetchone()
    nobs = int(row[0])
    mean, sd = np.array(row[1 : 1 + k], dtype=float), np.nan_to_num(np.array(row[1 + k : 1 + 2 * k], dtype=float))
    cross = np.zeros((p + 1, p + 1))
    cross[np.triu_indices(p + 1)] = row[1 + 2 * k : 1 + 2 * k + (p + 1) * (p + 2) // 2]
    cross = cross + np.triu(cross, 1).T
    slw = float(row[-1])
    # Cluster counts in a query of their own: DuckDB runs DISTINCT beside ~50 other aggregates slowly.
    counted = ", ".join(f"count(DISTINCT {e})" for e in key_exprs.values())
    distinct = dict(zip(key_exprs, con.execute(f"SELECT {counted} FROM {src} WHERE {complete}").fetchone()))
    total = con.execute(f"SELECT count(*) FROM {src}").fetchone()[0]  # Parquet: from the metadata
    scaling = scaling_from_moments(plan.fixed_names, mean[:p], sd[:p], float(mean[p]), float(sd[p]))
    xs = [f"({_affine_sql(fixed_sql, scaling.T[:, j])})" for j in range(p)]  # columns of X T
    ys = f"(({y_sql}) - {_lit(scaling.y_shift)}) / {_lit(scaling.y_scale)}"
    products = _global_products(cross, shifts, mean, scaling)
    if products is None:  # a sample-constant column that is not the intercept: sum the standardised columns
        glob = [f"sum({w_sql} * {xs[i]} * {xs[j]})" for i in range(p) for j in range(p)]
        glob += [f"sum({w_sql} * {xs[i]} * {ys})" for i in range(p)] + [f"sum({w_sql} * {ys} * {ys})"]
        g = np.array(con.execute(f"SELECT {', '.join(glob)} FROM {src} WHERE {complete}").fetchone(), dtype=float)
        products = np.zeros((p + 1, p + 1))
        products[:p, :p] = g[: p * p].reshape(p, p)
        products[:p, p] = products[p, :p] = g[p * p : p * p + p]
        products[p, p] = g[-1]
    XX, Xy, yy = products[:p, :p], products[:p, p], products[p, p]
    Q = len(z_sql)
    order = sorted(key_exprs, key=lambda n: -distinct[n])
    inner = order[0]
    for name in order[1:]:  # outer keys come back as text (few levels)
        factor = name.split(":")
        key_exprs[name] = "concat_ws(':', " + ", ".join(f"CAST({_quote(f)} AS VARCHAR)" for f in factor) + ")"
    parts = [f"{key_exprs[inner]} AS k0"]
    parts += [f"min({key_exprs[n]}) AS k{i}" for i, n in enumerate(order[1:], start=1)]
    parts += [f"count(DISTINCT {key_exprs[n]}) AS d{i}" for i, n in enumerate(order[1:], start=1)]
    values = [f"sum({w_sql} * {z_sql[a]} * {z_sql[b]})" for a in range(Q) for b in range(Q)]
    values += [f"sum({w_sql} * {z_sql[a]} * {xs[j]})" for a in range(Q) for j in range(p)]
    values += [f"sum({w_sql} * {z_sql[a]} * {ys})" for a in range(Q)]
    values += ["count(*)"]
    parts += [f"{v} AS v{i}" for i, v in enumerate(values)]
    # Ordered by cluster label (numbers numerically, text in binary collation = numpy's string
    # order): the stacks are filled in place, in chunks of rows, never holding the whole result twice.
    query = f"SELECT {', '.join(parts)} FROM {src} WHERE {complete} GROUP BY {key_exprs[inner]} ORDER BY k0"
    if distinct[inner] > SPILL_CLUSTERS:
        sums = _fetch_through_parquet(con, query, order, distinct[inner], Q, p)
    else:
        sums = _fetch_cluster_sums(con.execute(query), order, distinct[inner], Q, p)
    sums.XX, sums.Xy, sums.yy = XX, Xy, float(yy)
    sums.sum_log_weights = float(slw) if weights else 0.0
    return _finish(
        parsed, plan, sums, scaling, mean[p + 1 :], sd[p + 1 :], int(nobs), int(total - nobs), weights is not None
    )


def _is_numeric_type(sql_type: str) -> bool:
    """True for DuckDB integer and floating-point column types."""
    return any(t in sql_type for t in ("INT", "DOUBLE", "FLOAT", "REAL", "DECIMAL", "NUMERIC"))


#: DuckDB vectors (2048 rows each) per fetched chunk of the per-cluster result.
FETCH_VECTORS = 256

#: Above this many clusters the per-cluster result goes through a temporary Parquet file, so
#: that DuckDB has released its memory before the engine's stacks are filled.
SPILL_CLUSTERS = 1_000_000


def _cluster_stacks(n_clusters: int, Q: int, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Empty Z'Z (Q, Q, C), Z'[X y] (Q, p+1, C) and counts, with the target row of each SQL value column."""
    ZW = np.empty((Q, p + 1, n_clusters))  # Z'X and Z'y in one stack (the engine's Z'[X y])
    ZZ = np.empty((Q, Q, n_clusters))
    counts = np.empty(n_clusters)
    targets = [ZZ[a, b] for a in range(Q) for b in range(Q)]
    targets += [ZW[a, j] for a in range(Q) for j in range(p)] + [ZW[a, p] for a in range(Q)] + [counts]
    return ZZ, ZW, counts, targets


def _crossed_error(inner: str, outer: str) -> OptionError:
    return OptionError(
        f"The grouping factors {inner!r} and {outer!r} are crossed: this reduction needs one grouping factor or "
        "nested ones. Fit crossed models in memory (engine='memory')."
    )


def _fetch_cluster_sums(cursor, order: list[str], n_clusters: int, Q: int, p: int) -> ClusterSums:
    """Copy the per-cluster SQL result chunk by chunk into the engine's element-major stacks.

    Columns: ``k0`` (cluster key), ``k1..`` (outer keys), ``d1..`` (distinct outer levels per
    cluster: more than one means crossed factors), then Z'Z, Z'X, Z'y sums and the count.
    """
    n_outer = len(order) - 1
    ZZ, ZW, counts, targets = _cluster_stacks(n_clusters, Q, p)
    key_parts: list[list[np.ndarray]] = [[] for _ in range(n_outer + 1)]
    offset = 0
    while True:
        chunk = cursor.fetch_df_chunk(FETCH_VECTORS)
        if len(chunk) == 0:
            break
        n = len(chunk)
        if offset + n > n_clusters:
            raise DataError("The data changed while they were being reduced (more clusters than counted).")
        for i in range(1, n_outer + 1):
            if chunk[f"d{i}"].max() > 1:
                raise _crossed_error(order[0], order[i])
        key_parts[0].append(chunk["k0"].to_numpy())
        for i in range(1, n_outer + 1):
            key_parts[i].append(chunk[f"k{i}"].to_numpy().astype(str))
        for column, target in zip(chunk.columns[1 + 2 * n_outer :], targets):
            target[offset : offset + n] = chunk[column].to_numpy(dtype=float)
        offset += n
    if offset != n_clusters:
        raise DataError("The data changed while they were being reduced (fewer clusters than counted).")
    keys = pd.DataFrame({name: np.concatenate(parts) for name, parts in zip(order, key_parts)})
    return ClusterSums(keys, counts, ZZ, ZW[:, :p], ZW[:, p], None, None, 0.0, ZW=ZW)


def _fetch_through_parquet(con, query: str, order: list[str], n_clusters: int, Q: int, p: int) -> ClusterSums:
    """Like :func:`_fetch_cluster_sums`, but DuckDB first writes the whole result to a temporary
    Parquet file and frees its memory; the stacks are then filled one column at a time."""
    import tempfile

    n_outer = len(order) - 1
    with tempfile.TemporaryDirectory(prefix="mixedfx-") as folder:
        path = str(Path(folder) / "clusters.parquet").replace("'", "''")
        con.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet)")
        source = f"read_parquet('{path}')"
        columns = con.execute(f"DESCRIBE SELECT * FROM {source}").df()["column_name"].tolist()
        for i in range(1, n_outer + 1):
            if con.execute(f"SELECT max(d{i}) FROM {source}").fetchone()[0] > 1:
                raise _crossed_error(order[0], order[i])
        if con.execute(f"SELECT count(*) FROM {source}").fetchone()[0] != n_clusters:
            raise DataError("The data changed while they were being reduced (cluster count differs).")
        ZZ, ZW, counts, targets = _cluster_stacks(n_clusters, Q, p)
        for column, target in zip(columns[1 + 2 * n_outer :], targets):
            target[:] = con.execute(f"SELECT {_quote(column)} FROM {source}").fetchnumpy()[column]
        keys = pd.DataFrame({order[0]: con.execute(f"SELECT k0 FROM {source}").fetchnumpy()["k0"]})
        for i in range(1, n_outer + 1):
            keys[order[i]] = np.asarray(con.execute(f"SELECT k{i} FROM {source}").fetchnumpy()[f"k{i}"]).astype(str)
    return ClusterSums(keys, counts, ZZ, ZW[:, :p], ZW[:, p], None, None, 0.0, ZW=ZW)


def _pilot_shifts(con, src: str, complete: str, exprs: list[str]) -> list[float]:
    """Means of the columns on a sample of complete rows (0 for a column constant there, such as the
    intercept), used to centre the global cross-products; all 0 when no column is constant."""
    aggregates = [f"avg({e})" for e in exprs] + [f"min({e}) = max({e})" for e in exprs]
    row = con.execute(
        f"SELECT {', '.join(aggregates)} FROM (SELECT * FROM {src} WHERE {complete} LIMIT 2000)"
    ).fetchone()
    k = len(exprs)
    means, constant = row[:k], row[k:]
    if not any(constant[:-1]):  # no intercept-like column to absorb the shifts
        return [0.0] * k
    return [0.0 if flat else float(m) for m, flat in zip(means, constant)]


def _global_products(cross: np.ndarray, shifts: list[float], mean: np.ndarray, scaling: Scaling) -> np.ndarray | None:
    """``[X~ y~]'[X~ y~]`` (weighted) from the cross-products of ``[X y]`` centred on ``shifts``.

    With an intercept column ``X_k = v`` (never shifted), ``X_j = X_j^c + c_j X_k / v``, so
    ``[X~ y~] = [X^c y^c] N`` where N is the standardisation with the intercept row holding
    ``(c_j - mean_j) / (s_j v)`` (and ``(c_y - y_shift) / (y_scale v)`` for y): both small,
    computed from differences of nearby numbers.  None when the shifts cannot be absorbed
    (a column was shifted but the model has no intercept).
    """
    p = scaling.T.shape[0]
    N = np.zeros((p + 1, p + 1))
    N[:p, :p] = scaling.T
    N[p, p] = 1.0 / scaling.y_scale
    k = scaling.intercept
    if k is None:
        return cross if not any(shifts) else None
    if shifts[k] != 0.0:
        return None
    v = scaling.intercept_value
    for j in range(p):
        if j != k:
            N[k, j] = (shifts[j] - mean[j]) * scaling.T[j, j] / v
    N[k, p] = (shifts[p] - scaling.y_shift) / (scaling.y_scale * v)
    return N.T @ cross @ N


def _lit(value: float) -> str:
    """A DOUBLE literal (DuckDB reads ``1.5`` as DECIMAL, whose sums of products can overflow)."""
    return f"CAST({float(value)!r} AS DOUBLE)"


def _affine_sql(columns_sql: list[str], coefficients: np.ndarray) -> str:
    """SQL for ``sum_k c_k * column_k`` (one standardised column ``X T[:, j]``)."""
    terms = [f"{_lit(c)} * ({s})" for s, c in zip(columns_sql, coefficients) if c != 0]
    return " + ".join(terms) if terms else _lit(0.0)


def _formulaic_names(spec) -> list[str]:
    return [str(c) for c in spec.column_names]


def _verify_sql(con, plan: ColumnPlan, prototype: pd.DataFrame, fixed_sql, z_sql, y_sql) -> None:
    """Check the SQL expressions against formulaic's matrices on the sample (exactness guard)."""
    con.register("mixedfx_prototype", prototype)
    try:
        exprs = fixed_sql + z_sql + [y_sql]
        got = np.array(con.execute(f"SELECT {', '.join(exprs)} FROM mixedfx_prototype").fetchall(), dtype=float)
    finally:
        con.unregister("mixedfx_prototype")
    y, X, Zs = _matrices(plan, prototype)
    want = np.column_stack([X] + Zs + [y])
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-10, atol=1e-12):
        raise FormulaError(
            "The duckdb engine could not reproduce this formula's design in SQL; "
            "use engine='memory' (or simplify the transformations)."
        )
