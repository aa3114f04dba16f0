"""Random intercepts, crossed or nested, out of core: the rows reduced to *cells* for the method of moments.

A cell is a combination of levels of every grouping factor.  The moment estimator, its exact
expectations, the GLS fixed effects and the parametric bootstrap need, per cell, only the count
``n_c`` and the sums ``sum x``, ``sum x x'``, ``sum y``, ``sum y^2``, ``sum x y`` of the
standardised columns (:mod:`mixedfx.engine.moments`).  DuckDB computes them with one
``GROUP BY`` over the files (the rows never enter Python), Dask by map-reduce over its
partitions; a cell of one row keeps only ``sum x`` and ``sum y``.  For ratings-like data (a user
rates a movie once) the cells are the rows; with repeated rows per cell they are far fewer.

The checks are the likelihood reductions': the same scan (:func:`~.sqlscan.scan_files`) and chunk
moments, every formula expression verified, missing values dropped and counted.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...engine.moments import CellSums, ResponseSums, unpack_symmetric
from ...engine.stats import Scaling
from ...errors import DataError, OptionError
from ...spec.formula import ParsedFormula
from ..checks import check_grouping_factor
from ..design import Design, ReBlock
from ..levels import LevelLabels
from .assemble import kept_fixed_columns, kept_scaling, standardised
from .chunks import complete_chunk, scan_dask
from .plan import ColumnPlan, cluster_keys, model_columns
from .reduced import make_blocks, rowless_design
from .sql import quote
from .sqlscan import scan_files


@dataclass
class ReducedCells:
    """A random-intercepts model's data reduced to cells (see the module docstring).

    ``codes[k]`` is each cell's level of ``factors[k]``; ``X`` holds the cells' ``sum x`` of the
    standardised fixed-effects columns; ``cells`` and ``response`` the rest of the sums.
    """

    formula: ParsedFormula
    plan: ColumnPlan
    factors: list[str]
    levels: dict[str, LevelLabels]
    codes: list[np.ndarray]
    counts: dict[str, np.ndarray]
    X: np.ndarray
    cells: CellSums
    response: ResponseSums
    scaling: Scaling
    nobs: int
    n_missing: int
    dropped_fixed: list[str]

    @property
    def n_cells(self) -> int:
        return self.X.shape[0]

    def blocks(self) -> list[ReBlock]:
        """Metadata-only grouping blocks (no rows), one per factor."""
        moments = {name: (np.ones(1), np.zeros(1)) for name in self.factors}
        return make_blocks(self.plan, self.factors, self.levels, self.counts, moments, None)

    def design(self) -> Design:
        """A :class:`~mixedfx.data.design.Design` without rows: names, blocks and counts for the record."""
        return rowless_design(self, self.blocks())


def check_random_intercepts(effects: list[tuple[str, list[str]]]) -> None:
    """The moment method estimates random intercepts: refuse a model without grouping factors, or a
    factor with other effects, naming it.  ``effects``: (factor, its random effects' names) pairs."""
    if not effects:
        raise OptionError("method='moments' needs grouping factors with random intercepts, e.g. (1 | a) + (1 | b).")
    for factor, names in effects:
        if list(names) != ["(Intercept)"]:
            raise OptionError(
                f"method='moments' estimates random intercepts only; the term on {factor!r} has "
                f"{', '.join(names)}. Fit random slopes by (RE)ML."
            )


def check_intercept_terms(plan: ColumnPlan) -> None:
    """:func:`check_random_intercepts` on a reduction's terms, and one term per grouping factor."""
    check_random_intercepts([(":".join(factor), names) for _, factor, _, names, _ in plan.terms])
    names = [":".join(f) for _, f, *_ in plan.terms]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise OptionError(f"The grouping factor {repeated[0]!r} has two random-intercept terms; keep one.")


@dataclass
class CellTable:
    """Per-cell sums as columns: ``keys`` (one label array per factor), ``n``, ``x`` (cells x p),
    ``y``, and for the cells with ``n > 1`` (in order) ``xx`` (packed), ``yy``, ``xy``."""

    keys: dict[str, np.ndarray]
    n: np.ndarray
    x: np.ndarray
    y: np.ndarray
    xx: np.ndarray
    yy: np.ndarray
    xy: np.ndarray


def _level_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted level values (numbers numerically, anything else as text) and each cell's code."""
    values = np.asarray(values)
    if values.dtype.kind not in "iuf":
        values = values.astype(str)
    return np.unique(values, return_inverse=True)


#: Cells per chunk when summing x x' over the cells of one row (bounds the temporaries).
GRAM_CHUNK = 1 << 20


def _single_row_gram(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``sum x x'`` over the cells of one row (whose sums are their row's x), in chunks of cells."""
    out = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, x.shape[0], GRAM_CHUNK):
        part = x[start : start + GRAM_CHUNK]
        part = part[n[start : start + GRAM_CHUNK] == 1]
        out += part.T @ part
    return out


def _finish(parsed, plan: ColumnPlan, table: CellTable, scaling: Scaling, nobs: int, n_missing: int) -> ReducedCells:
    """Codes, level counts, the rank check of X'X (aliased columns dropped, as in memory) and the
    grouping factors' checks."""
    p = table.x.shape[1]
    multi = np.flatnonzero(table.n > 1)
    XtX = _single_row_gram(table.x, table.n) + unpack_symmetric(table.xx.sum(axis=0), p)
    keep = np.array(kept_fixed_columns(XtX, plan.fixed_names))
    X, xx, xy = table.x, table.xx, table.xy
    if not keep.all():
        idx = np.flatnonzero(keep)
        i, j = np.triu_indices(p)
        packed = [k for k, (a, b) in enumerate(zip(i, j)) if keep[a] and keep[b]]
        X, xx, xy = np.ascontiguousarray(X[:, idx]), xx[:, packed], xy[:, idx]
        scaling = kept_scaling(scaling, idx)
    dropped = [n for n, k in zip(plan.fixed_names, keep) if not k]
    plan.fixed_names = [n for n, k in zip(plan.fixed_names, keep) if k]
    levels, coded, counts = {}, {}, {}
    for name in table.keys:
        labels, inverse = _level_codes(table.keys[name])
        levels[name] = LevelLabels(labels)
        coded[name] = inverse
        counts[name] = np.bincount(inverse, weights=table.n, minlength=len(labels)).astype(int)
    factors = sorted(table.keys, key=lambda name: -len(levels[name]))  # lme4's order, as in memory
    for name in factors:
        check_grouping_factor(name, len(levels[name]), 1, ["(Intercept)"], nobs)
    codes = [coded[name] for name in factors]
    cells = CellSums(multi, table.n[multi].astype(float), xx)
    response = ResponseSums(table.y, table.yy, xy)
    return ReducedCells(
        parsed, plan, factors, levels, codes, counts, X, cells, response, scaling, nobs, n_missing, dropped
    )


def _factor_names(plan: ColumnPlan) -> list[str]:
    return list(dict.fromkeys(":".join(f) for _, f, *_ in plan.terms))


# ---------------------------------------------------------------------------- DuckDB
def reduce_cells_duckdb(formula: str, source, connection=None) -> ReducedCells:
    """Reduce Parquet/CSV files to cells in SQL with DuckDB (one ``GROUP BY`` over every factor).

    The result goes through a temporary Parquet file, read back one column at a time, so that
    DuckDB has freed its memory first and no second copy of the table is held.
    """
    scan = scan_files(formula, source, None, connection)
    check_intercept_terms(scan.plan)
    factors = _factor_names(scan.plan)
    p, xs, ys = len(scan.fixed_sql), scan.xs, scan.ys
    i, j = np.triu_indices(p)
    parts = [f"{scan.key_exprs[name]} AS k{f}" for f, name in enumerate(factors)]
    parts += ["count(*) AS n"] + [f"sum({xs[a]}) AS x{a}" for a in range(p)] + [f"sum({ys}) AS y"]
    parts += [f"sum({ys} * {ys}) AS yy"] + [f"sum({xs[a]} * {ys}) AS xy{a}" for a in range(p)]
    parts += [f"sum({xs[a]} * {xs[b]}) AS xx{k}" for k, (a, b) in enumerate(zip(i, j))]
    group = ", ".join(f"k{f}" for f in range(len(factors)))
    query = f"SELECT {', '.join(parts)} FROM {scan.src} WHERE {scan.complete} GROUP BY {group}"
    con = scan.con
    with tempfile.TemporaryDirectory(prefix="mixedfx-") as folder:
        path = str(Path(folder) / "cells.parquet").replace("'", "''")
        con.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet)")
        source_sql = f"read_parquet('{path}')"

        def column(name: str, where: str = "") -> np.ndarray:
            return con.execute(f"SELECT {quote(name)} FROM {source_sql} {where}").fetchnumpy()[name]

        keys = {name: np.asarray(column(f"k{f}")) for f, name in enumerate(factors)}
        n = np.asarray(column("n"), dtype=float)
        x = np.column_stack([np.asarray(column(f"x{a}"), dtype=float) for a in range(p)])
        y = np.asarray(column("y"), dtype=float)
        multi = "WHERE n > 1"
        xx = np.column_stack([np.asarray(column(f"xx{k}", multi), dtype=float) for k in range(i.size)])
        yy = np.asarray(column("yy", multi), dtype=float)
        xy = np.column_stack([np.asarray(column(f"xy{a}", multi), dtype=float) for a in range(p)])
    if int(n.sum()) != scan.nobs:
        raise DataError("The data changed while they were being reduced (the cells' rows differ from the count).")
    table = CellTable(keys, n, x, y, xx.reshape(-1, i.size), yy, xy.reshape(-1, p))
    return _finish(scan.parsed, scan.plan, table, scan.scaling, scan.nobs, scan.total - scan.nobs)


# ---------------------------------------------------------------------------- pandas chunks and Dask
def _chunk_cells(plan: ColumnPlan, frame: pd.DataFrame, scaling: Scaling) -> pd.DataFrame | None:
    """One chunk's cells: counts and sums of the standardised columns, keyed by every factor's label."""
    frame = complete_chunk(plan, frame, None)
    if frame.empty:
        return None
    y, X, _ = model_columns(plan, frame)
    Xs, ys = standardised(X, y, scaling)
    p = Xs.shape[1]
    i, j = np.triu_indices(p)
    columns = {"n": np.ones(len(ys))}
    columns.update({f"x{a}": Xs[:, a] for a in range(p)})
    columns.update({"y": ys, "yy": ys * ys})
    columns.update({f"xy{a}": Xs[:, a] * ys for a in range(p)})
    columns.update({f"xx{k}": Xs[:, a] * Xs[:, b] for k, (a, b) in enumerate(zip(i, j))})
    table = pd.DataFrame(columns)
    keys = cluster_keys(plan, frame)
    for name in keys.columns:
        table[f"key:{name}"] = keys[name].to_numpy()
    return table.groupby([f"key:{name}" for name in keys.columns], sort=False, observed=True).sum().reset_index()


def _combine_cells(parts: list, factors: list[str], p: int) -> CellTable:
    """Cells split across chunks summed; the sums of the cells of one row dropped where redundant."""
    parts = [part for part in parts if part is not None]
    if not parts:
        raise DataError("No complete rows in the data.")
    key_cols = [f"key:{name}" for name in factors]
    merged = pd.concat(parts, ignore_index=True)
    if len(parts) > 1:
        merged = merged.groupby(key_cols, sort=False, observed=True).sum().reset_index()
    n = merged["n"].to_numpy(dtype=float)
    multi = n > 1
    q = p * (p + 1) // 2

    def stack(prefix: str, count: int, rows=slice(None)) -> np.ndarray:
        return np.column_stack([merged[f"{prefix}{a}"].to_numpy(dtype=float)[rows] for a in range(count)])

    return CellTable(
        keys={name: merged[col].to_numpy() for name, col in zip(factors, key_cols)},
        n=n,
        x=stack("x", p),
        y=merged["y"].to_numpy(dtype=float),
        xx=stack("xx", q, multi).reshape(-1, q),
        yy=merged["yy"].to_numpy(dtype=float)[multi],
        xy=stack("xy", p, multi).reshape(-1, p),
    )


def reduce_cells_dask(formula: str, frame) -> ReducedCells:
    """Reduce a Dask DataFrame to cells by map-reduce over its partitions (uses the active Dask client)."""
    import dask

    scan = scan_dask(formula, frame, None, check_intercept_terms)
    tables = dask.compute(*[dask.delayed(_chunk_cells)(scan.plan, part, scan.scaling) for part in scan.parts])
    table = _combine_cells(list(tables), _factor_names(scan.plan), len(scan.plan.fixed_names))
    return _finish(scan.parsed, scan.plan, table, scan.scaling, scan.nobs, scan.total_rows - scan.nobs)
