"""Model-matrix columns through formulaic: the response, X and each random term's Z.

Every expression is checked by :mod:`mixedfx.spec.expressions` before formulaic sees data,
and formulaic evaluates in mixedfx's explicit namespace (never the caller's frame).
Formulas of plain numeric columns (and their products) are built directly from formulaic's
parse, without materialisation; the spec for new data is made on first use.
Column names follow lme4: ``(Intercept)``, ``sexM``, ``lrt:sexM``.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pandas as pd
from formulaic import Formula, model_matrix
from formulaic.errors import FormulaicError

from ..errors import DataError, FormulaError, suggest
from ..spec.expressions import factor_variables
from ..spec.formula import ParsedFormula, RandomTerm
from ..spec.rsyntax import r_column_name
from .transforms import calls_stateful, formula_context

#: Exceptions formulaic raises for formulas or data it cannot handle.
FORMULAIC_ERRORS = (FormulaicError, SyntaxError, ValueError, TypeError, KeyError)


def lme4_name(name: str) -> str:
    """Translate a formulaic column name into lme4's (:func:`~mixedfx.spec.rsyntax.r_column_name`):
    ``sex[T.M]`` -> ``sexM``, ``I(x ** 2)`` -> ``I(x^2)``, ``Intercept`` -> ``(Intercept)``."""
    return "(Intercept)" if name == "Intercept" else r_column_name(name)


@lru_cache(maxsize=256)
def parsed_formula(expr: str) -> Formula:
    """formulaic's parse of a formula string, cached (parsing costs milliseconds; fits reuse it)."""
    return Formula(expr)


def formula_factors(parsed: Formula) -> list:
    """Every factor of a parsed formula (response and right-hand side)."""
    parts = [parsed.lhs, parsed.rhs] if hasattr(parsed, "rhs") else [parsed]
    return [factor for part in parts for term in part for factor in term.factors]


def required_variables(expr: str, where: str) -> set[str]:
    """Variables an expression uses, after checking that it may be evaluated (:mod:`mixedfx.spec.expressions`)."""
    try:
        parsed = parsed_formula(expr)
    except (FormulaicError, SyntaxError, ValueError) as exc:
        raise FormulaError(f"Cannot parse {where} {expr!r}: {exc}") from exc
    return factor_variables(formula_factors(parsed))


def check_columns(variables: set[str], columns, where: str) -> None:
    """Raise DataError for a variable that is not one of ``columns`` (a DataFrame or names), with suggestions."""
    columns = [str(c) for c in (columns.columns if isinstance(columns, pd.DataFrame) else columns)]
    for var in sorted(variables):
        if var in columns:
            continue
        raise DataError(f"Unknown variable {var!r} in {where}: no such column in the data.{suggest(var, columns)}")


#: From this many rows on (that is, always), formulas of plain numeric columns are built
#: without formulaic's materialisation (formulaic still parses them; its model spec is made
#: on first use, for predictions on new data).  Tests set it high to compare with formulaic.
DIRECT_ROWS = 0


class DeferredSpec:
    """formulaic's model spec of a formula, materialised from a few rows when first used.

    The direct path (:func:`_direct_model_matrices`) needs no spec to fit; predictions on new
    data do, and building it costs a few milliseconds per formula, so it waits until then.
    """

    def __init__(self, formula: str, head: pd.DataFrame, part: str | None):
        self._formula, self._head, self._part = formula, head, part
        self._spec = None

    @property
    def spec(self):
        """The formulaic ModelSpec (of the right-hand side when ``part == "rhs"``)."""
        if self._spec is None:
            matrices = model_matrix(
                parsed_formula(self._formula), self._head, na_action="raise", context=formula_context()
            )
            self._spec = (getattr(matrices, self._part) if self._part else matrices).model_spec
        return self._spec

    def get_model_matrix(self, data: pd.DataFrame, **kwargs):
        """The model matrix of ``data`` (formulaic's ``ModelSpec.get_model_matrix``)."""
        kwargs.setdefault("context", formula_context())
        return self.spec.get_model_matrix(data, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("_"):  # never recurse through the spec during copying or unpickling
            raise AttributeError(name)
        return getattr(self.spec, name)


def _plain_numeric_layout(terms, data: pd.DataFrame) -> list[list[str]] | None:
    """Per term of a parsed formula, the numeric data columns whose product is its one column
    ([] for the intercept), or None if some term is anything else (a factor, a transformation)."""
    layout = []
    for term in terms:
        names = []
        for factor in term.factors:
            method = getattr(factor.eval_method, "value", factor.eval_method)
            if method == "literal" and factor.expr == "1":
                continue
            if method != "lookup" or factor.expr not in data.columns:
                return None
            column = data[factor.expr]
            if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
                return None
            names.append(factor.expr)
        layout.append(names)
    return layout


def _direct_matrix(layout: list[list[str]], data: pd.DataFrame) -> np.ndarray:
    """Column-major matrix of products of numeric data columns (see :func:`_plain_numeric_layout`)."""
    out = np.empty((len(data), len(layout)), order="F")
    for k, names in enumerate(layout):
        if not names:
            out[:, k] = 1.0
            continue
        out[:, k] = data[names[0]].to_numpy(dtype=float)
        for name in names[1:]:
            out[:, k] *= data[name].to_numpy(dtype=float)
    return out


def _direct_model_matrices(formula: str, data: pd.DataFrame):
    """``(lhs, rhs, rhs spec, rhs names)`` built directly for plain numeric formulas on many rows, else None.

    Each term of such a formula (as formulaic parses and orders it) is one column: the
    product of its numeric columns, ``Intercept`` for ``1``; formulaic's materialisation
    gives the same matrix (tested), and its spec is deferred to first use.
    """
    if len(data) < DIRECT_ROWS:
        return None
    parsed = parsed_formula(formula)
    lhs_terms, rhs_terms = (parsed.lhs, parsed.rhs) if hasattr(parsed, "rhs") else (None, parsed)
    layouts = [None if terms is None else _plain_numeric_layout(terms, data) for terms in (lhs_terms, rhs_terms)]
    if layouts[1] is None or (lhs_terms is not None and layouts[0] is None):
        return None
    rhs = _direct_matrix(layouts[1], data)
    lhs = None if lhs_terms is None else _direct_matrix(layouts[0], data)
    names = ["Intercept" if not cols else str(term) for term, cols in zip(rhs_terms, layouts[1])]
    spec = DeferredSpec(formula, data.iloc[:100].copy(), "rhs" if lhs_terms is not None else None)
    return lhs, rhs, spec, names


def fixed_matrices(parsed: ParsedFormula, data: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str], object]:
    """Response vector, fixed-effects matrix, its lme4 column names and formulaic spec."""
    try:
        direct = _direct_model_matrices(parsed.fixed_formula, data)
        if direct is not None and direct[0] is not None and direct[0].shape[1] == 1:
            lhs, X, spec, names = direct
            return lhs[:, 0], X, [lme4_name(c) for c in names], spec
        with np.errstate(all="ignore"):  # undefined values are reported by name (checks.check_finite)
            matrices = model_matrix(
                parsed_formula(parsed.fixed_formula), data, na_action="ignore", context=formula_context()
            )
    except FORMULAIC_ERRORS as exc:
        raise FormulaError(f"Cannot build the fixed effects '{parsed.fixed_formula}': {exc}") from exc
    lhs = matrices.lhs
    if lhs.shape[1] != 1:
        raise DataError(
            f"The response {parsed.response!r} must be one numeric column, but it expands to "
            f"{lhs.shape[1]} columns ({', '.join(map(str, lhs.columns))}): is it a text/categorical column?"
        )
    y = np.asarray(lhs, dtype=float).ravel()
    rhs = matrices.rhs
    X = np.asarray(rhs, dtype=float)
    return y, X, [lme4_name(str(c)) for c in rhs.columns], rhs.model_spec


def offset_values(parsed: ParsedFormula, data: pd.DataFrame) -> np.ndarray | None:
    """The summed ``offset(...)`` terms of the formula on ``data`` (None without offsets).

    Offsets are evaluated row by row, so they may not call stateful transforms (whose state
    would be relearnt on new data): ``offset(log(n))`` is fine, ``offset(scale(n))`` is refused.
    """
    if not parsed.offsets:
        return None
    total = np.zeros(len(data))
    for expr in parsed.offsets:
        if calls_stateful(expr):
            raise FormulaError(
                f"offset({expr}) calls {calls_stateful(expr)}(), whose value depends on the whole column; "
                "compute the offset in the data first."
            )
        total += expression_values(expr, data, f"offset({expr})")
    return total


def expression_values(expr: str, data: pd.DataFrame, where: str) -> np.ndarray:
    """One numeric value per row of ``data`` for the expression ``expr`` (evaluated as ``I(expr)``)."""
    try:
        with np.errstate(all="ignore"):
            mm = model_matrix(parsed_formula(f"0 + I({expr})"), data, na_action="ignore", context=formula_context())
    except FORMULAIC_ERRORS as exc:
        raise FormulaError(f"Cannot evaluate {where}: {exc}") from exc
    values = np.asarray(mm, dtype=float)
    if values.shape[1] != 1:
        raise FormulaError(f"{where} must be one numeric value per row, not {values.shape[1]} columns.")
    return values[:, 0]


def fixed_matrix(parsed: ParsedFormula, data: pd.DataFrame) -> tuple[np.ndarray, list[str], object]:
    """The fixed-effects matrix alone (the response built elsewhere), its lme4 names and spec."""
    try:
        direct = _direct_model_matrices(parsed.fixed, data)
        if direct is not None:
            _, X, spec, names = direct
            return X, [lme4_name(c) for c in names], spec
        with np.errstate(all="ignore"):
            rhs = model_matrix(parsed_formula(parsed.fixed), data, na_action="ignore", context=formula_context())
    except FORMULAIC_ERRORS as exc:
        raise FormulaError(f"Cannot build the fixed effects '{parsed.fixed}': {exc}") from exc
    return np.asarray(rhs, dtype=float), [lme4_name(str(c)) for c in rhs.columns], rhs.model_spec


def term_columns(term: RandomTerm, data: pd.DataFrame) -> tuple[np.ndarray, list[str], object]:
    """Columns of a random term's expression (``1 + x`` etc.) and their lme4 names."""
    try:
        direct = _direct_model_matrices(term.expr, data)
        if direct is not None:
            _, Z, spec, names = direct
            if Z.shape[1] == 0:
                raise FormulaError(f"Random term ({term.expr} | {term.group_name}) has no columns.")
            return Z, [lme4_name(c) for c in names], spec
        with np.errstate(all="ignore"):
            mm = model_matrix(parsed_formula(term.expr), data, na_action="ignore", context=formula_context())
    except FORMULAIC_ERRORS as exc:
        raise FormulaError(f"Cannot build random term ({term.expr} | {term.group_name}): {exc}") from exc
    Z = np.asarray(mm, dtype=float)
    if Z.shape[1] == 0:
        raise FormulaError(f"Random term ({term.expr} | {term.group_name}) has no columns.")
    return Z, [lme4_name(str(c)) for c in mm.columns], mm.model_spec


def categorical_column(expr: str, columns) -> str | None:
    """The data column behind a categorical factor: ``f``, ``C(f, ...)`` or ``factor(f)`` (else None)."""
    if expr in columns:
        return expr
    match = re.fullmatch(r"\s*(?:C|factor)\(\s*(`[^`]*`|[A-Za-z_.][A-Za-z0-9_.]*)\s*(?:,.*)?\)\s*", expr, re.S)
    if match is None:
        return None
    name = match.group(1).strip("`")
    return name if name in columns else None


def check_new_levels(spec, data: pd.DataFrame) -> None:
    """Refuse new data whose categorical variables have levels the fit never saw.

    formulaic would code such a level as missing (and the prediction would silently be the
    reference level's); a prediction for it is not defined.
    """
    states = getattr(spec, "encoder_state", {}) or {}
    for expr, (kind, state) in states.items():
        if getattr(kind, "value", kind) != "categorical":
            continue
        column = categorical_column(str(expr), data.columns)
        if column is None:
            continue
        known = list(state.get("categories", []))
        values = data[column].dropna()
        unseen = values[~values.isin(known)]
        if len(unseen):
            shown = ", ".join(repr(v) for v in pd.unique(unseen)[:3])
            raise DataError(
                f"New data: {column!r} has level(s) {shown} (first at row {unseen.index[0]!r}) that the fit never "
                f"saw; it knows {', '.join(repr(v) for v in known[:10])}{', ...' if len(known) > 10 else ''}."
            )


def coded_as_categories(parsed: ParsedFormula, columns) -> set[str]:
    """Columns the formula codes as categories explicitly, ``C(x)`` or ``factor(x)``, whatever their type.

    Reductions must take their levels from all rows (a numeric column's levels in a sample
    may miss some), as they do for text columns.
    """
    found: set[str] = set()
    for piece in [parsed.fixed_formula] + [term.expr for term in parsed.random]:
        for factor in formula_factors(parsed_formula(piece)):
            column = categorical_column(str(factor.expr), columns)
            if column is not None and str(factor.expr) != column:
                found.add(column)
    return found
