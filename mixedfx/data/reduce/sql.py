"""SQL for the model's columns (DuckDB), translated from the formula's syntax trees.

Every model column comes from formulaic's spec: its terms, their factors, and each factor's
encoding.  A numeric factor is translated from its (already checked) Python syntax tree, node
by node, with every operation parenthesised and powers as ``power(a, b)``, so that Python's
precedence and associativity hold (``x ** 3 ** 2`` is ``power(x, power(3, 2))``); a
categorical factor with treatment coding becomes indicator columns of its levels.  Anything
SQL cannot say exactly (stateful transforms such as ``poly`` or ``scale``, whose state would
come from a sample; other contrasts; unknown functions) is refused with a message that names
it.  Names and labels are quoted, never pasted: nothing a user supplies becomes SQL syntax.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

from ...errors import DataError, FormulaError
from ...spec.expressions import expression_variables
from ..transforms import STATEFUL

#: Elementwise functions and their DuckDB names (numpy's semantics: IEEE results on the reals).
SQL_FUNCTIONS = {
    "log": "ln",
    "log10": "log10",
    "log2": "log2",
    "exp": "exp",
    "sqrt": "sqrt",
    "abs": "abs",
    "absolute": "abs",
    "sin": "sin",
    "cos": "cos",
    "tan": "tan",
    "arcsin": "asin",
    "arccos": "acos",
    "arctan": "atan",
    "sinh": "sinh",
    "cosh": "cosh",
    "tanh": "tanh",
    "floor": "floor",
    "ceil": "ceil",
    "sign": "sign",
    "power": "power",
    "minimum": "least",
    "maximum": "greatest",
}

_CONSTANTS = {"pi": np.pi, "e": np.e}

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_COMPARE = {ast.Gt: ">", ast.GtE: ">=", ast.Lt: "<", ast.LtE: "<=", ast.Eq: "=", ast.NotEq: "<>"}


def quote(name: str) -> str:
    """A column name as a quoted SQL identifier."""
    return '"' + str(name).replace('"', '""') + '"'


def string_literal(value: str) -> str:
    """A string as an SQL literal (quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def lit(value: float) -> str:
    """A DOUBLE literal (DuckDB reads ``1.5`` as DECIMAL, whose sums of products can overflow)."""
    return f"CAST({float(value)!r} AS DOUBLE)"


def is_numeric_type(sql_type: str) -> bool:
    """True for DuckDB integer and floating-point column types."""
    return any(t in sql_type for t in ("INT", "DOUBLE", "FLOAT", "REAL", "DECIMAL", "NUMERIC"))


def is_float_type(sql_type: str) -> bool:
    """True for DuckDB types that can hold NaN and infinity."""
    return any(t in sql_type for t in ("DOUBLE", "FLOAT", "REAL"))


def _unsupported(expr: str, what: str) -> FormulaError:
    return FormulaError(
        f"The duckdb engine cannot compute {expr!r} in SQL ({what}); use engine='memory', or compute the "
        "column in the data first."
    )


def _function_name(node: ast.expr) -> str | None:
    """``log`` for ``log``, ``np.log`` and ``numpy.log``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("np", "numpy"):
        return node.attr
    return None


class _Translator:
    """Python syntax tree of a numeric expression -> fully parenthesised DuckDB SQL."""

    def __init__(self, expr: str, columns: dict[str, str], quoted: dict[str, str]):
        self.expr, self.columns, self.quoted = expr, columns, quoted

    def column(self, name: str) -> str:
        name = self.quoted.get(name, name)
        if name not in self.columns:
            raise _unsupported(self.expr, f"{name!r} is not a column")
        if not (is_numeric_type(self.columns[name]) or "BOOLEAN" in self.columns[name]):
            raise _unsupported(self.expr, f"{name!r} is not numeric")
        return f"CAST({quote(name)} AS DOUBLE)"

    def __call__(self, node: ast.expr) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float)):
            return lit(node.value)
        if isinstance(node, ast.Name):
            return lit(_CONSTANTS[node.id]) if node.id in _CONSTANTS else self.column(node.id)
        if isinstance(node, ast.Attribute) and _function_name(node) in _CONSTANTS:
            return lit(_CONSTANTS[node.attr])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return f"({'-' if isinstance(node.op, ast.USub) else '+'}{self(node.operand)})"
        if isinstance(node, ast.BinOp):
            left, right = self(node.left), self(node.right)
            if isinstance(node.op, ast.Pow):
                return f"power({left}, {right})"
            if isinstance(node.op, ast.FloorDiv):
                return f"floor({left} / {right})"
            if type(node.op) in _BINARY:
                return f"({left} {_BINARY[type(node.op)]} {right})"
            raise _unsupported(self.expr, f"the operator {type(node.op).__name__}")
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
            return f"CAST(({self(node.left)} {_COMPARE[type(node.ops[0])]} {self(node.comparators[0])}) AS DOUBLE)"
        if isinstance(node, ast.Call):
            return self.call(node)
        raise _unsupported(self.expr, f"{type(node).__name__} syntax")

    def call(self, node: ast.Call) -> str:
        name = _function_name(node.func)
        if name in STATEFUL:
            raise _unsupported(self.expr, f"{name}() needs statistics of the whole column")
        if node.keywords:
            raise _unsupported(self.expr, f"keyword arguments of {name}()")
        args = [self(a) for a in node.args]
        if name in ("I", "as_numeric") and len(args) == 1:
            return args[0]
        if name == "log1p" and len(args) == 1:
            return f"ln(1 + {args[0]})"
        if name == "expm1" and len(args) == 1:
            return f"(exp({args[0]}) - 1)"
        if name == "exp2" and len(args) == 1:
            return f"power(2, {args[0]})"
        if name == "exp10" and len(args) == 1:
            return f"power(10, {args[0]})"
        if name in SQL_FUNCTIONS:
            return f"{SQL_FUNCTIONS[name]}({', '.join(args)})"
        raise _unsupported(self.expr, f"the function {name or ast.unparse(node.func)!r}")


def numeric_sql(expr: str, columns: dict[str, str]) -> str:
    """SQL for a numeric formula factor: a column or a checked Python expression (``columns``: name -> type)."""
    expr = str(expr).strip()
    if expr in columns:
        return _Translator(expr, columns, {}).column(expr)
    expression_variables(expr)  # refuses anything not allowed in a formula, as in memory
    tree, quoted = parse_expression(expr)
    return f"({_Translator(expr, columns, quoted)(tree)})"


def parse_expression(expr: str) -> tuple[ast.expr, dict[str, str]]:
    """The syntax tree of a (checked) expression, backticked names replaced by placeholders."""
    quoted: dict[str, str] = {}

    def substitute(match: re.Match) -> str:
        key = f"_mixedfx_quoted_{len(quoted)}"
        quoted[key] = match.group(0)[1:-1]
        return key

    return ast.parse(re.sub(r"`[^`]*`", substitute, expr), mode="eval").body, quoted


def _categorical_variable(expr: str, columns: dict[str, str]) -> str:
    """The data column of a categorical factor: ``f``, ``C(f, ...)`` or ``factor(f)``."""
    if expr in columns:
        return expr
    tree, quoted = parse_expression(expr)
    if isinstance(tree, ast.Call) and _function_name(tree.func) in ("C", "factor") and tree.args:
        first = tree.args[0]
        if isinstance(first, ast.Name) and quoted.get(first.id, first.id) in columns:
            return quoted.get(first.id, first.id)
    raise _unsupported(expr, "a categorical factor must be a column, C(column, ...) or factor(column)")


def _level_sql(column: str, level: object) -> str:
    """SQL that is 1 where ``column`` equals ``level`` (typed as the level is), else 0."""
    if isinstance(level, (bool, np.bool_)):
        condition = f"{quote(column)} = {'TRUE' if level else 'FALSE'}"
    elif isinstance(level, (int, float, np.integer, np.floating)):
        condition = f"CAST({quote(column)} AS DOUBLE) = {lit(level)}"
    else:
        condition = f"CAST({quote(column)} AS VARCHAR) = {string_literal(level)}"
    return f"(CASE WHEN {condition} THEN {lit(1)} ELSE {lit(0)} END)"


def _factor_columns(spec, factor, columns: dict[str, str]) -> dict[str, str]:
    """formulaic's column names of one factor (in a term) -> their SQL."""
    expr = str(factor.expr)
    method = getattr(factor.eval_method, "value", factor.eval_method)
    if method == "literal":
        return {"Intercept": lit(1.0)}
    kind, state = spec.encoder_state.get(expr, (None, {}))
    kind = getattr(kind, "value", kind)
    if kind == "categorical":
        contrasts = state.get("contrasts")
        if contrasts is not None and type(contrasts.contrasts).__name__ != "TreatmentContrasts":
            raise _unsupported(expr, "only treatment contrasts are expressed in SQL")
        variable = _categorical_variable(expr, columns)
        levels = state.get("categories", [])
        out = {}
        for level in levels:
            out[f"{expr}[T.{level}]"] = out[f"{expr}[{level}]"] = _level_sql(variable, level)
        return out
    return {expr: numeric_sql(expr, columns)}


def _split_column(name: str, factor_names: list[dict[str, str]]) -> list[str] | None:
    """``name`` as ``:``-joined factor column names, one per factor in order (None if it is not)."""
    if not factor_names:
        return [] if name == "" else None
    for candidate in sorted(factor_names[0], key=len, reverse=True):
        if name == candidate and len(factor_names) == 1:
            return [candidate]
        if name.startswith(candidate + ":"):
            rest = _split_column(name[len(candidate) + 1 :], factor_names[1:])
            if rest is not None:
                return [candidate] + rest
    return None


def spec_columns_sql(spec, columns: dict[str, str]) -> list[str]:
    """SQL of every column of a formulaic model spec, in the spec's order (``columns``: name -> type)."""
    out = []
    for structure in spec.structure:
        per_factor = [_factor_columns(spec, f, columns) for f in structure.term.factors]
        for name in structure.columns:
            parts = _split_column(str(name), per_factor)
            if parts is None:
                raise _unsupported(str(name), "its column cannot be matched to its factors")
            out.append(" * ".join(f[p] for f, p in zip(per_factor, parts)))
    return out


def python_factors(spec) -> list[str]:
    """Expressions of the spec's numeric factors that are evaluated by Python (not a plain column)."""
    found = []
    for structure in spec.structure:
        for factor in structure.term.factors:
            method = getattr(factor.eval_method, "value", factor.eval_method)
            kind = getattr(spec.encoder_state.get(str(factor.expr), (None,))[0], "value", None)
            if method == "python" and kind != "categorical" and str(factor.expr) not in found:
                found.append(str(factor.expr))
    return found


def factor_key_sql(factor: tuple[str, ...], columns: dict[str, str]) -> str:
    """SQL of a grouping factor's level label, as :func:`mixedfx.data.levels.factor_labels` writes it.

    Integral numbers print without a decimal point; in interactions each component has ``\\``
    and ``:`` escaped before the components are joined with ``:``.
    """
    parts = []
    for name in factor:
        column = quote(name)
        if is_float_type(columns[name]):
            label = (
                f"CASE WHEN {column} = round({column}) AND abs({column}) < 9007199254740992 "
                f"THEN CAST(CAST({column} AS BIGINT) AS VARCHAR) ELSE CAST({column} AS VARCHAR) END"
            )
        else:
            label = f"CAST({column} AS VARCHAR)"
        if len(factor) > 1:
            label = f"replace(replace({label}, '\\', '\\\\'), ':', '\\:')"
        parts.append(label)
    return parts[0] if len(parts) == 1 else "concat_ws(':', " + ", ".join(parts) + ")"


def source_sql(source: str | Path | list) -> tuple[str, list[str]]:
    """A DuckDB table function for files (Parquet or CSV: one path, a glob, a directory or a list),
    and the files or globs it reads.  CSV reads treat ``NA``, ``.`` (Stata) and empty fields as missing,
    as the in-memory reader does."""
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
    listing = "[" + ", ".join(string_literal(p) for p in expanded) + "]"
    if suffix in (".parquet", ".pq"):
        return f"read_parquet({listing})", expanded
    if suffix in (".csv", ".tsv", ".txt"):
        missing = ", ".join(string_literal(v) for v in MISSING_STRINGS)
        return f"read_csv({listing}, nullstr = [{missing}])", expanded
    raise DataError(f"The duckdb engine reads .parquet and .csv files, not {suffix!r}.")


#: Text read as a missing value in CSV files (pandas' defaults that occur in practice, and Stata's ".").
MISSING_STRINGS = ("", "NA", "N/A", "NaN", "nan", "NULL", "null", ".")


def affine_sql(columns_sql: list[str], coefficients: np.ndarray) -> str:
    """SQL for ``sum_k c_k * column_k`` (one standardised column ``X T[:, j]``)."""
    terms = [f"{lit(c)} * ({s})" for s, c in zip(columns_sql, coefficients) if c != 0]
    return " + ".join(terms) if terms else lit(0.0)
