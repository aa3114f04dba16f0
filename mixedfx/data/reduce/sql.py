"""SQL for the model's columns, for DuckDB: numeric expressions, categorical indicators, sources."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import DataError, FormulaError

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


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def numeric_sql(expr: str, columns: list[str]) -> str:
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
            return f"CAST({quote(word)} AS DOUBLE)"
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


def column_sql(name: str, columns: list[str]) -> str:
    """SQL for one formulaic model-matrix column (by its formulaic name)."""
    if name == "Intercept":
        return lit(1.0)
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
            factors.append(f"(CASE WHEN CAST({quote(var)} AS VARCHAR) = '{level}' THEN {lit(1)} ELSE {lit(0)} END)")
        else:
            factors.append(numeric_sql(part, columns))
    return " * ".join(factors)


def source_sql(source: str | Path | list) -> str:
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


def lit(value: float) -> str:
    """A DOUBLE literal (DuckDB reads ``1.5`` as DECIMAL, whose sums of products can overflow)."""
    return f"CAST({float(value)!r} AS DOUBLE)"


def affine_sql(columns_sql: list[str], coefficients: np.ndarray) -> str:
    """SQL for ``sum_k c_k * column_k`` (one standardised column ``X T[:, j]``)."""
    terms = [f"{lit(c)} * ({s})" for s, c in zip(columns_sql, coefficients) if c != 0]
    return " + ".join(terms) if terms else lit(0.0)


def formulaic_names(spec) -> list[str]:
    return [str(c) for c in spec.column_names]


def is_numeric_type(sql_type: str) -> bool:
    """True for DuckDB integer and floating-point column types."""
    return any(t in sql_type for t in ("INT", "DOUBLE", "FLOAT", "REAL", "DECIMAL", "NUMERIC"))
