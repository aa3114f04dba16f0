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
from ...spec.expressions import evaluation_context
from ...spec.formula import ParsedFormula
from ..columns import lme4_name
from ..design import model_variables
from ..levels import factor_labels


@dataclass
class ColumnPlan:
    """The model's columns: names and how to compute them (formulaic specs, SQL expressions)."""

    response: str
    fixed_names: list[str]
    fixed_spec: object
    terms: list[tuple[str, tuple[str, ...], str, list[str], object]]  # expr, factor, kind, names, spec
    categorical_levels: dict[str, list]
    variables: list[str]


def check_reducible(parsed: ParsedFormula) -> None:
    """Refuse a formula without random effects (a reduction is per grouping factor)."""
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
    variables = model_variables(parsed, frame)
    return ColumnPlan(
        response=parsed.response,
        fixed_names=[lme4_name(str(c)) for c in mm.rhs.columns],
        fixed_spec=mm.rhs.model_spec,
        terms=terms,
        categorical_levels=levels,
        variables=variables,
    )


def model_columns(plan: ColumnPlan, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
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


def cluster_keys(plan: ColumnPlan, frame: pd.DataFrame) -> pd.DataFrame:
    """Level labels of every grouping factor, one column per factor (``g2:g1`` joined by ':')."""
    out = {}
    for _, factor, *_ in plan.terms:
        name = ":".join(factor)
        if name not in out:
            out[name] = factor_labels(frame, factor)
    return pd.DataFrame(out)
