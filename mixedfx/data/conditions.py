"""Evaluating a Stata ``if`` condition (parsed and checked by :func:`mixedfx.spec.stata.parse_condition`) on data.

Stata's semantics: a missing value (``.``) is larger than every number, so ``x > 5`` holds
for missing ``x`` and ``x < .`` means "not missing"; comparisons of text compare strings.
"""

from __future__ import annotations

import ast
import operator

import numpy as np
import pandas as pd

from ..errors import DataError, suggest

_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}  # fmt: skip
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.Pow: operator.pow}  # fmt: skip


def _stata_numbers(values: np.ndarray) -> np.ndarray:
    """Numbers with missing values as +infinity (Stata's order: missing is larger than any number)."""
    return np.where(np.isnan(values), np.inf, values)


def _is_text(value) -> bool:
    return isinstance(value, str) or (isinstance(value, np.ndarray) and value.dtype == object)


def _check_comparable(left, right, node: ast.Compare) -> None:
    """Text compared with a number is Stata's "type mismatch", never an all-false selection."""
    if _is_text(left) != _is_text(right):
        raise DataError(
            f"type mismatch in the if condition {ast.unparse(node)!r}: it compares text with a number "
            "(write text values in double quotes, or compare a numeric variable)."
        )


class _Evaluator:
    def __init__(self, data: pd.DataFrame):
        self.data = data

    def column(self, name: str):
        if name not in self.data.columns:
            raise DataError(
                f"Unknown variable {name!r} in the if condition.{suggest(name, map(str, self.data.columns))}"
            )
        column = self.data[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            return _stata_numbers(column.to_numpy(dtype=float))
        return column.astype(object).where(column.notna(), None).to_numpy()

    def __call__(self, node: ast.expr):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return np.inf if node.id == "_stata_missing_" else self.column(node.id)
        if isinstance(node, ast.BoolOp):
            values = [np.asarray(self(v), dtype=bool) for v in node.values]
            return np.logical_and.reduce(values) if isinstance(node.op, ast.And) else np.logical_or.reduce(values)
        if isinstance(node, ast.UnaryOp):
            value = self(node.operand)
            return np.logical_not(np.asarray(value, dtype=bool)) if isinstance(node.op, ast.Not) else -value
        if isinstance(node, ast.BinOp):
            return _ARITHMETIC[type(node.op)](self(node.left), self(node.right))
        if isinstance(node, ast.Compare):
            result, left = True, self(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = self(right_node)
                _check_comparable(left, right, node)
                result = np.logical_and(result, _COMPARE[type(op)](left, right))
                left = right
            return result
        if isinstance(node, ast.Call):
            return self.call(node.func.id, [self(a) for a in node.args])
        raise DataError(f"Cannot evaluate {type(node).__name__} in an if condition.")

    def call(self, name: str, args: list):
        if name == "missing":
            return np.isinf(args[0]) if np.asarray(args[0]).dtype.kind == "f" else pd.isna(args[0])
        if name == "inlist":
            return np.logical_or.reduce([args[0] == a for a in args[1:]])
        if name == "inrange":
            return (args[0] >= args[1]) & (args[0] <= args[2])
        with np.errstate(all="ignore"):
            return {"abs": np.abs, "round": np.round, "floor": np.floor, "ceil": np.ceil, "log": np.log,
                    "exp": np.exp, "sqrt": np.sqrt}[name](*args)  # fmt: skip


def evaluate_condition(tree: ast.Expression, data: pd.DataFrame) -> np.ndarray:
    """The rows of ``data`` where the (checked) condition holds, as a boolean array."""
    with np.errstate(all="ignore"):
        mask = np.asarray(_Evaluator(data)(tree.body), dtype=bool)
    return np.broadcast_to(mask, (len(data),)).copy()
