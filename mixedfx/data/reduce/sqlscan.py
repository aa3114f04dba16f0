"""Reduction in SQL with DuckDB: Parquet or CSV files (a path, glob, directory or list) are
reduced to per-cluster sums without the rows ever entering Python.

Two scans: one for the count, the moments of every model column and the global
cross-products, one (a ``GROUP BY``) for the per-cluster cross-products; only one row per
cluster comes back.  The column expressions are derived from formulaic's specs and checked
against formulaic on a sample before use.
"""

from __future__ import annotations

import ast
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...engine.stats import Scaling
from ...errors import DataError, FormulaError, OptionError, suggest
from ...spec.expressions import expression_variables
from ...spec.formula import expand_dot, parse_formula
from ..columns import coded_as_categories
from ..design import model_variables
from ..transforms import formula_context
from .assemble import ClusterSums, finish, scaling_from_moments
from .plan import ColumnPlan, check_reducible, model_columns, plan_columns, refuse_stateful
from .reduced import ReducedData
from .sql import (
    affine_sql,
    factor_key_sql,
    is_float_type,
    is_numeric_type,
    lit,
    numeric_sql,
    python_factors,
    quote,
    source_sql,
    spec_columns_sql,
    string_literal,
)
from .sql import parse_expression as _parse_expression


def _read_schema(con, src: str, files: list[str], source) -> dict[str, str]:
    """Column name -> DuckDB type, checking that every file has the same types."""
    import duckdb

    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {src}").df()
    except duckdb.Error as exc:
        raise DataError(f"DuckDB cannot read {source!r}: {str(exc).splitlines()[0]}") from exc
    types = dict(zip(described["column_name"], described["column_type"]))
    reader = src.split("(", 1)[0]
    listed = [r[0] for f in files for r in con.execute(f"SELECT file FROM glob({string_literal(f)})").fetchall()]
    first: dict[str, tuple[str, str]] = {}
    for path in listed if len(listed) > 1 else []:
        one = con.execute(f"DESCRIBE SELECT * FROM {reader}({string_literal(path)})").df()
        for name, kind in zip(one["column_name"], one["column_type"]):
            seen = first.setdefault(name, (kind, path))
            if seen[0] != kind:
                raise DataError(
                    f"Column {name!r} has type {seen[0]} in {seen[1]!r} but {kind} in {path!r}; "
                    "make the files agree (or cast the column) before fitting."
                )
    return types


def _complete_rows_sql(used: list[str], types: dict[str, str]) -> str:
    """The rows without a missing value: not NULL, and not NaN in floating-point columns (as in memory)."""
    conditions = [f"{quote(v)} IS NOT NULL" for v in used]
    conditions += [f"NOT isnan({quote(v)})" for v in used if is_float_type(types[v])]
    return " AND ".join(conditions)


def _check_values(con, src: str, complete: str, variables: list[str], types: dict[str, str], weights) -> float:
    """The checks the in-memory design makes on raw values (no infinity, positive finite weights);
    returns the weights' geometric mean (1 without weights)."""
    floats = [v for v in variables if is_float_type(types[v])]
    checks = [f"sum(CASE WHEN isinf({quote(v)}) THEN 1 ELSE 0 END)" for v in floats]
    if weights:
        checks.append(f"min({quote(weights)})")
        if is_float_type(types[weights]):
            checks.append(f"sum(CASE WHEN isinf({quote(weights)}) THEN 1 ELSE 0 END)")
    if weights:
        checks.append(f"exp(avg(ln(CAST({quote(weights)} AS DOUBLE))))")
    if not checks:
        return 1.0
    row = con.execute(f"SELECT {', '.join(checks)} FROM {src} WHERE {complete}").fetchone()
    for v, bad in zip(floats, row):
        if bad:
            raise DataError(f"Column {v!r} has infinite values ({int(bad)} rows); remove or recode them.")
    if weights:
        lowest = row[len(floats)]
        infinite = row[len(floats) + 1] if is_float_type(types[weights]) else 0
        if lowest is not None and (lowest <= 0 or infinite):
            raise DataError(f"weights column {weights!r} must be positive and finite for every row used.")
        return float(row[-1])
    return 1.0


def _python_value(expr: str):
    """A vectorised function of the expression's variables: numpy's evaluation, as formulaic's."""
    import pyarrow as pa  # with duckdb (the "duckdb" extra)

    names = sorted(expression_variables(expr))
    tree, quoted = _parse_expression(expr)
    code = compile(ast.Expression(tree), "<formula>", "eval")
    namespace = {**formula_context(), "I": lambda v: v}

    def value(*columns):
        local = dict(namespace)
        for name, column in zip(names, columns):
            local[next((k for k, v in quoted.items() if v == name), name)] = column.to_numpy(zero_copy_only=False)
        with np.errstate(all="ignore"):
            result = np.asarray(eval(code, {"__builtins__": {}}, local), dtype=float)  # checked expression
        return pa.array(np.broadcast_to(result, (len(columns[0]),)) if columns else result)

    return names, value


def _verification_aggregates(con, plan: ColumnPlan, columns: dict[str, str]) -> tuple[list[str], list[str]]:
    """Aggregates that compare each Python-evaluated factor with its SQL over all rows (same scan).

    For each such factor: the count of finite values, the sum and the sum of squares, computed
    by numpy (a DuckDB function over Arrow batches) and by the SQL translation.
    """
    exprs = []
    for spec in [plan.fixed_spec] + [spec for *_, spec in plan.terms]:
        exprs += [e for e in python_factors(spec) if e not in exprs]
    exprs += [e for e in plan.offsets if e not in exprs]
    aggregates = []
    for k, expr in enumerate(exprs):
        names, value = _python_value(expr)
        function = f"mixedfx_check_{k}"
        try:
            con.remove_function(function)
        except Exception:  # noqa: BLE001 - not registered yet
            pass
        con.create_function(function, value, ["DOUBLE"] * len(names), "DOUBLE", type="arrow")
        python = f"{function}({', '.join(f'CAST({quote(n)} AS DOUBLE)' for n in names)})"
        for version in (python, numeric_sql(expr, columns)):
            aggregates += [
                f"sum(CASE WHEN isfinite({version}) THEN 1 ELSE 0 END)",
                f"sum(CASE WHEN isfinite({version}) THEN {version} ELSE 0 END)",
                f"sum(CASE WHEN isfinite({version}) THEN {version} * {version} ELSE 0 END)",
            ]
    return exprs, aggregates


def _check_verification(exprs: list[str], values: list, nobs: int) -> None:
    """Refuse when numpy and SQL disagree on any row (count, sum or sum of squares), or a value is not finite."""
    for k, expr in enumerate(exprs):
        python, sql = values[6 * k : 6 * k + 3], values[6 * k + 3 : 6 * k + 6]
        if python[0] != nobs:
            raise DataError(
                f"The model column {expr!r} is not finite on {nobs - int(python[0])} row(s): the transformation "
                "is undefined there (log of zero or a negative number, division by zero, ...)."
            )
        for a, b in zip(python, sql):
            if not np.isclose(a, b, rtol=1e-9, atol=1e-12 * max(1.0, abs(a))):
                raise FormulaError(
                    f"The duckdb engine's SQL for {expr!r} differs from its evaluation in memory on some rows; "
                    "use engine='memory'."
                )


@dataclass
class Scan:
    """What the first passes over the files established: the model's columns as SQL, the complete
    rows, the counts and the scaling of X and y (standardised columns ``xs`` and ``ys``)."""

    con: object
    src: str
    complete: str
    parsed: object
    plan: ColumnPlan
    types: dict[str, str]
    key_exprs: dict[str, str]
    fixed_sql: list[str]
    z_sql: list[str]
    w_sql: str
    w_scale: float
    nobs: int
    total: int
    mean: np.ndarray
    sd: np.ndarray
    cross: np.ndarray
    shifts: list[float]
    sum_log_weights: float
    distinct: dict[str, int]
    scaling: Scaling
    xs: list[str]
    ys: str


def scan_files(formula: str, source, weights: str | None = None, connection=None) -> Scan:
    """The passes every DuckDB reduction starts with: schema, checks, levels, the SQL of the model's
    columns (verified against formulaic on a sample and against numpy on every row), moments and
    counts (see :func:`reduce_duckdb`)."""
    import duckdb

    parsed = parse_formula(formula)
    check_reducible(parsed)
    con = connection or duckdb.connect()
    src, files = source_sql(source)
    types = _read_schema(con, src, files, source)
    columns = list(types)
    parsed = expand_dot(parsed, columns, [weights] if weights else [])
    variables = model_variables(parsed, columns)
    if weights and weights not in columns:
        raise DataError(f"Unknown weights column {weights!r}.{suggest(weights, columns)}")
    used = variables + ([weights] if weights else [])
    complete = _complete_rows_sql(used, types)
    w_scale = _check_values(con, src, complete, variables, types, weights)
    coded = coded_as_categories(parsed, columns)
    categorical = [v for v in variables if v in coded or not (is_numeric_type(types[v]) or "BOOLEAN" in types[v])]
    levels = {}
    for v in categorical:  # one pass per categorical variable: its levels
        rows = con.execute(f"SELECT DISTINCT {quote(v)} FROM {src} WHERE {complete} ORDER BY 1").fetchall()
        levels[v] = [r[0] for r in rows]
    prototype = con.execute(f"SELECT {', '.join(quote(v) for v in used)} FROM {src} WHERE {complete} LIMIT 2000").df()
    if prototype.empty:
        raise DataError("No complete rows in the data.")
    plan = plan_columns(parsed, prototype, levels)
    refuse_stateful(plan)
    fixed_sql = spec_columns_sql(plan.fixed_spec, types)
    z_sql = [e for *_, spec in plan.terms for e in spec_columns_sql(spec, types)]
    y_sql = numeric_sql(plan.response_expr, types)
    _verify_sql(con, plan, prototype, fixed_sql, z_sql, y_sql)
    verified, verification = _verification_aggregates(con, plan, types)
    w_sql = f"(CAST({quote(weights)} AS DOUBLE) / {lit(w_scale)})" if weights else lit(1.0)
    key_exprs = {}
    for _, factor, *_ in plan.terms:
        name = ":".join(factor)
        if len(factor) == 1 and is_numeric_type(types[factor[0]]):
            key_exprs[name] = quote(factor[0])  # numbers come back as numbers, not 10^7 strings
        else:
            key_exprs[name] = factor_key_sql(factor, types)
    p = len(fixed_sql)
    # One pass for the count, the moments of every model column, the global cross-products
    # (of columns centred on the means of a sample, so that calendar-year-like offsets cannot
    # cancel digits: see _global_products) and the row-by-row check of the transformations;
    # one for the numbers of clusters.
    shifts = _pilot_shifts(con, src, complete, fixed_sql + [y_sql])
    centred = [e if c == 0.0 else f"(({e}) - {lit(c)})" for e, c in zip(fixed_sql + [y_sql], shifts)]
    every = fixed_sql + [y_sql] + z_sql
    k = len(every)
    aggregates = ["count(*)"] + [f"avg({e})" for e in every] + [f"stddev_pop({e})" for e in every]
    aggregates += [f"sum({w_sql} * {centred[i]} * {centred[j]})" for i in range(p + 1) for j in range(i, p + 1)]
    aggregates += [f"sum(ln({w_sql}))"] + verification
    row = con.execute(f"SELECT {', '.join(aggregates)} FROM {src} WHERE {complete}").fetchone()
    nobs = int(row[0])
    _check_verification(verified, list(row[len(row) - len(verification) :]), nobs)
    row = row[: len(row) - len(verification)]
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
    xs = [f"({affine_sql(fixed_sql, scaling.T[:, j])})" for j in range(p)]  # columns of X T
    ys = f"(({y_sql}) - {lit(scaling.y_shift)}) / {lit(scaling.y_scale)}"
    return Scan(
        con,
        src,
        complete,
        parsed,
        plan,
        types,
        key_exprs,
        fixed_sql,
        z_sql,
        w_sql,
        w_scale,
        nobs,
        int(total),
        mean,
        sd,
        cross,
        shifts,
        slw,
        distinct,
        scaling,
        xs,
        ys,
    )


def reduce_duckdb(formula: str, source, weights: str | None = None, connection=None) -> ReducedData:
    """Reduce Parquet/CSV files (a path, glob, directory or list) in SQL with DuckDB.

    The rows never enter Python: DuckDB computes the level lists, the column moments and
    the per-cluster cross-products; only one row per cluster comes back.  The checks are the
    in-memory design's: every expression allowed, missing values (NULL, NaN, ``NA``, ``.``)
    dropped and counted, no infinite values, positive weights, files of one schema, the
    grouping factors estimable; transformations are evaluated in SQL and compared with
    numpy's evaluation on every row.
    """
    scan = scan_files(formula, source, weights, connection)
    con, src, complete, plan, types = scan.con, scan.src, scan.complete, scan.plan, scan.types
    key_exprs, z_sql, w_sql, xs, ys = dict(scan.key_exprs), scan.z_sql, scan.w_sql, scan.xs, scan.ys
    p, mean, distinct = len(scan.fixed_sql), scan.mean, scan.distinct
    products = _global_products(scan.cross, scan.shifts, mean, scan.scaling)
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
    factors = {":".join(factor): factor for _, factor, *_ in plan.terms}
    for name in order[1:]:  # outer keys come back as text (few levels)
        key_exprs[name] = factor_key_sql(factors[name], types)
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
    sums.sum_log_weights = scan.sum_log_weights if weights else 0.0
    z_mean, z_sd, missing = mean[p + 1 :], scan.sd[p + 1 :], scan.total - scan.nobs
    return finish(
        scan.parsed, plan, sums, scan.scaling, z_mean, z_sd, scan.nobs, missing, weights is not None, scan.w_scale
    )


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
            target[:] = con.execute(f"SELECT {quote(column)} FROM {source}").fetchnumpy()[column]
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


def _verify_sql(con, plan: ColumnPlan, prototype: pd.DataFrame, fixed_sql, z_sql, y_sql) -> None:
    """Check the SQL expressions against formulaic's matrices on the sample (exactness guard)."""
    con.register("mixedfx_prototype", prototype)
    try:
        exprs = fixed_sql + z_sql + [y_sql]
        got = np.array(con.execute(f"SELECT {', '.join(exprs)} FROM mixedfx_prototype").fetchall(), dtype=float)
    finally:
        con.unregister("mixedfx_prototype")
    y, X, Zs = model_columns(plan, prototype)
    want = np.column_stack([X] + Zs + [y])
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-10, atol=1e-12):
        raise FormulaError(
            "The duckdb engine could not reproduce this formula's design in SQL; "
            "use engine='memory' (or simplify the transformations)."
        )
