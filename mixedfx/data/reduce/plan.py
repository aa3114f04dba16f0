"""The columns of a model to be reduced: formulaic specs built on a sample that carries every
categorical level, and the functions that evaluate them on a chunk of rows.

Every expression is checked (:mod:`mixedfx.spec.expressions`) before any row is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from formulaic import model_matrix

from ...errors import DataError, FormulaError
from ...spec.formula import ParsedFormula
from ..checks import check_finite
from ..columns import lme4_name
from ..design import model_variables
from ..levels import factor_labels
from ..transforms import calls_stateful, formula_context
from .sql import python_factors


@dataclass
class ColumnPlan:
    """The model's columns: names and how to compute them (formulaic specs, SQL expressions)."""

    response: str
    fixed_names: list[str]
    fixed_spec: object
    terms: list[tuple[str, tuple[str, ...], str, list[str], object]]  # expr, factor, kind, names, spec
    categorical_levels: dict[str, list]
    variables: list[str]
    offsets: tuple[str, ...] = ()

    @property
    def response_expr(self) -> str:
        """What the reduction sums as y: the response minus the offsets (a formulaic expression)."""
        if not self.offsets:
            return self.response
        return f"I(({self.response}){''.join(f' - ({expr})' for expr in self.offsets)})"


def check_reducible(parsed: ParsedFormula) -> None:
    """Refuse a formula without random effects (a reduction is per grouping factor)."""
    if not parsed.random:
        raise FormulaError(f"The formula {parsed.text!r} has no random-effects term; add one such as (1 | group).")


def plan_columns(parsed: ParsedFormula, prototype: pd.DataFrame, levels: dict[str, list]) -> ColumnPlan:
    """Formulaic specs of the model's columns, built on a sample with every categorical level."""
    frame = prototype.copy()
    for col, values in levels.items():
        frame[col] = pd.Categorical(frame[col], categories=values)
    with np.errstate(all="ignore"):  # undefined values are reported by name when the columns are computed
        mm = model_matrix(parsed.fixed_formula, frame, na_action="ignore", context=formula_context())
    if mm.lhs.shape[1] != 1:
        raise DataError(f"The response {parsed.response!r} must be one numeric column.")
    terms = []
    for term in parsed.random:
        with np.errstate(all="ignore"):
            zm = model_matrix(term.expr, frame, na_action="ignore", context=formula_context())
        terms.append((term.expr, term.factor, term.covariance, [lme4_name(str(c)) for c in zm.columns], zm.model_spec))
    variables = model_variables(parsed, frame)
    return ColumnPlan(
        response=parsed.response,
        fixed_names=[lme4_name(str(c)) for c in mm.rhs.columns],
        fixed_spec=mm.rhs.model_spec,
        terms=terms,
        categorical_levels=levels,
        variables=variables,
        offsets=parsed.offsets,
    )


def model_columns(plan: ColumnPlan, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """y, X and each term's Z for a chunk of rows (categoricals coded with the full level sets)."""
    frame = frame.copy()
    for col, values in plan.categorical_levels.items():
        frame[col] = pd.Categorical(frame[col], categories=values)
    context = formula_context()
    with np.errstate(all="ignore"):  # undefined values are reported by name below
        X = np.asarray(plan.fixed_spec.get_model_matrix(frame, na_action="ignore", context=context), dtype=float)
        y = np.asarray(model_matrix(plan.response_expr, frame, na_action="ignore", context=context), dtype=float)
        y = y[:, -1]
        Zs = [
            np.asarray(spec.get_model_matrix(frame, na_action="ignore", context=context), dtype=float)
            for *_, spec in plan.terms
        ]
    check_finite(y, [plan.response], frame.index)
    check_finite(X, [lme4_name(str(c)) for c in plan.fixed_spec.column_names], frame.index)
    for (*_, names, _), Z in zip(plan.terms, Zs):
        check_finite(Z, names, frame.index)
    return y, X, Zs


def cluster_keys(plan: ColumnPlan, frame: pd.DataFrame) -> pd.DataFrame:
    """Level labels of every grouping factor, one column per factor (``g2:g1`` joined by ':')."""
    out = {}
    for _, factor, *_ in plan.terms:
        name = ":".join(factor)
        if name not in out:
            out[name] = factor_labels(frame, factor)
    return pd.DataFrame(out)


def refuse_stateful(plan: ColumnPlan) -> None:
    """Refuse transforms whose state comes from the whole column: a reduction builds its specs on a
    sample and evaluates them chunk by chunk, so poly's or scale's state would be the sample's."""
    specs = [plan.fixed_spec] + [spec for *_, spec in plan.terms]
    for spec in specs:
        for expr in python_factors(spec):
            check_stateless(expr)
    for expr in plan.offsets:
        check_stateless(expr)


def check_stateless(expr: str) -> None:
    """Refuse an expression that calls a stateful transform (see :data:`mixedfx.data.transforms.STATEFUL`)."""
    name = calls_stateful(expr)
    if name:
        raise FormulaError(
            f"{expr!r} needs statistics of the whole column ({name}() keeps state); reductions evaluate "
            "formulas chunk by chunk, so use engine='memory' or compute the column in the data first."
        )
