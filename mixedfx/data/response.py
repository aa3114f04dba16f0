"""The response of a generalized linear mixed model: proportions and trials, or counts.

A binomial response is given in one of three ways (as lme4's ``glmer`` and Stata's ``melogit``):

- 0/1 values (or a two-level text, categorical or logical column: the second level, in sorted
  order, is the success, as R's factor coding; ``"N"/"Y"`` gives ``Y = 1``), each row one trial;
- ``cbind(successes, failures)``: ``y = s / (s + f)`` with ``s + f`` trials;
- proportions in [0, 1] with ``weights=`` the number of trials (lme4's convention).

A Poisson response is a count; ``weights=`` are prior weights that multiply each row's
log-likelihood.  Every check names the column and the first offending row.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import DataError, DataWarning, FormulaError
from ..spec.formula import ParsedFormula
from .columns import expression_values

#: How far from a whole number a count may be before it is called non-integer.
INTEGER_TOLERANCE = 1e-8


@dataclass(frozen=True)
class GLMResponse:
    """``y`` (proportions for the binomial, counts for Poisson), trials or prior weights ``m``,
    and for a text response the label coded 1 (``success``)."""

    y: np.ndarray
    m: np.ndarray
    success: str | None = None

    @property
    def successes(self) -> np.ndarray:
        """``y m``: successes (binomial) or weighted counts (Poisson)."""
        return self.y * self.m


def glm_response(parsed: ParsedFormula, frame: pd.DataFrame, family: str, weights: np.ndarray | None) -> GLMResponse:
    """The response of ``parsed`` on the rows of ``frame`` for ``family`` (binomial, bernoulli, poisson)."""
    if parsed.counts:
        if family not in ("binomial",):
            raise FormulaError(f"A cbind(successes, failures) response needs the binomial family, not {family!r}.")
        if weights is not None:
            raise FormulaError("With a cbind(successes, failures) response the trials are s + f: give no weights.")
        return _cbind_response(parsed, frame)
    values, success = _response_column(parsed, frame)
    if family == "poisson":
        return _poisson_response(values, parsed.response, frame.index, weights)
    return _binomial_response(values, parsed.response, frame.index, weights, family, success)


def _response_column(parsed: ParsedFormula, frame: pd.DataFrame) -> tuple[np.ndarray, str | None]:
    """The response's numbers; a two-level non-numeric column is coded 0/1 (second level 1)."""
    name = parsed.response.strip("`")
    if name in frame.columns:
        column = frame[name]
        if pd.api.types.is_bool_dtype(column):
            return column.to_numpy(dtype=float), "True"
        if not pd.api.types.is_numeric_dtype(column):
            levels = sorted(pd.unique(column.dropna()).tolist(), key=str)
            if len(levels) != 2:
                shown = ", ".join(repr(v) for v in levels[:5])
                raise DataError(
                    f"The response {name!r} is text with {len(levels)} distinct values ({shown}"
                    f"{', ...' if len(levels) > 5 else ''}): a binary response needs exactly two."
                )
            return (column == levels[1]).to_numpy(dtype=float), str(levels[1])
        return column.to_numpy(dtype=float), None
    return expression_values(parsed.response, frame, f"the response {parsed.response!r}"), None


def _first_row(index: pd.Index, bad: np.ndarray) -> str:
    return repr(index[int(np.flatnonzero(bad)[0])])


def _check_whole(values: np.ndarray, what: str, index: pd.Index) -> None:
    """Warn (as R's dbinom/dpois do) when counts are not whole numbers."""
    off = np.abs(values - np.round(values)) > INTEGER_TOLERANCE * np.maximum(1.0, np.abs(values))
    if off.any():
        warnings.warn(
            f"{what} has non-integer values (first at row {_first_row(index, off)}: {values[off][0]:g}); "
            "the likelihood treats them as counts.",
            DataWarning,
            stacklevel=5,
        )


def _cbind_response(parsed: ParsedFormula, frame: pd.DataFrame) -> GLMResponse:
    s_expr, f_expr = parsed.counts
    s = expression_values(s_expr, frame, f"the successes {s_expr!r} of cbind()")
    f = expression_values(f_expr, frame, f"the failures {f_expr!r} of cbind()")
    for values, expr in ((s, s_expr), (f, f_expr)):
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            raise DataError(
                f"cbind(): {expr!r} must be a count >= 0, but row {_first_row(frame.index, bad)} has "
                f"{values[bad][0]:g}."
            )
        _check_whole(values, f"cbind(): {expr!r}", frame.index)
    m = s + f
    empty = m <= 0
    if empty.any():
        raise DataError(
            f"cbind({s_expr}, {f_expr}): row {_first_row(frame.index, empty)} has no trials (0 successes and 0 "
            "failures); drop such rows."
        )
    return GLMResponse(s / m, m)


def _binomial_response(
    y: np.ndarray, name: str, index: pd.Index, weights: np.ndarray | None, family: str, success: str | None
) -> GLMResponse:
    if family == "bernoulli" and weights is not None:
        raise FormulaError("The bernoulli family has one trial per row: give no weights (use binomial for trials).")
    outside = ~np.isfinite(y) | (y < 0) | (y > 1)
    if outside.any():
        raise DataError(
            f"The response {name!r} of a {family} model must be 0/1 or a proportion in [0, 1], but row "
            f"{_first_row(index, outside)} has {y[outside][0]:g}"
            + (": give cbind(successes, failures) for counts." if np.nanmax(y) > 1 else ".")
        )
    if weights is None:
        fractional = (y > 0) & (y < 1)
        if fractional.any():
            raise DataError(
                f"The response {name!r} has proportions (row {_first_row(index, fractional)}: "
                f"{y[fractional][0]:g}) but no weights= giving the trials; give weights= or cbind(successes, failures)."
            )
        return GLMResponse(y, np.ones_like(y), success)
    _check_whole(y * weights, f"The successes of {name!r} (proportion x weights)", index)
    return GLMResponse(y, weights, success)


def _poisson_response(y: np.ndarray, name: str, index: pd.Index, weights: np.ndarray | None) -> GLMResponse:
    bad = ~np.isfinite(y) | (y < 0)
    if bad.any():
        raise DataError(
            f"The response {name!r} of a Poisson model must be a count >= 0, but row {_first_row(index, bad)} "
            f"has {y[bad][0]:g}."
        )
    _check_whole(y, f"The response {name!r}", index)
    return GLMResponse(y, np.ones_like(y) if weights is None else weights)
