"""Design matrices of a mixed model: response, fixed effects X and random effects Z.

Builds everything the likelihood needs from a parsed formula and a DataFrame:

- listwise deletion of rows with missing values in any variable the model uses (counted);
- ``X`` through formulaic (:mod:`mixedfx.data.columns`), with aliased columns dropped as
  lme4 does;
- one :class:`ReBlock` per grouping factor, holding the columns of every random term on
  that factor (so ``(1|g) + (0 + x|g)`` shares one block with a block-diagonal factor);
- optional observation weights ``w`` (residual variance ``sigma^2 / w``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..engine.covariance import BlockLayout, CovStructure
from ..engine.stats import column_moments
from ..errors import DataError, FormulaError, OptionError, suggest
from ..spec.formula import ParsedFormula, expand_dot, response_variables
from ..spec.structures import canonical_structure
from .checks import (
    check_enough_rows,
    check_finite,
    check_grouping_factor,
    complete_rows,
    drop_aliased,
    weights_vector,
)
from .columns import check_columns, fixed_matrices, fixed_matrix, offset_values, required_variables, term_columns
from .levels import group_codes
from .response import glm_response


@dataclass
class ReTerm:
    """Columns of one random term inside its block, with their covariance structure."""

    expr: str
    names: list[str]
    structure: CovStructure
    columns: slice
    spec: object = None  # formulaic ModelSpec, to rebuild the columns for new data


@dataclass
class ReBlock:
    """All random effects on one grouping factor.

    ``Z`` is n x q (the columns of all the block's terms side by side), ``codes`` gives each
    row's level (0 .. n_levels-1) and ``levels`` the level labels.
    """

    name: str
    factor: tuple[str, ...]
    codes: np.ndarray | None
    levels: Sequence[str]  # a list or LevelLabels
    Z: np.ndarray | None
    terms: list[ReTerm] = field(default_factory=list)
    counts: np.ndarray | None = None  # rows per level, when the rows themselves are not kept
    moments: tuple[np.ndarray, np.ndarray] | None = None  # column means and SDs of Z, likewise

    @property
    def q(self) -> int:
        """Number of random effects per level."""
        if self.Z is not None:
            return self.Z.shape[1]
        return sum(len(t.names) for t in self.terms)

    @property
    def level_counts(self) -> np.ndarray:
        """Number of observations in each level."""
        if self.counts is not None:
            return self.counts
        return np.bincount(self.codes, minlength=self.n_levels)

    @property
    def n_levels(self) -> int:
        """Number of levels (clusters) of the grouping factor."""
        return len(self.levels)

    @property
    def names(self) -> list[str]:
        """Names of the block's random effects, term by term."""
        return [name for term in self.terms for name in term.names]

    @property
    def layout(self) -> BlockLayout:
        """The block's terms and covariance structures, as the engine sees them."""
        return BlockLayout([(t.columns, t.structure) for t in self.terms], self.names)

    def column_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Means and SDs of the block's random-effect columns (from the rows, or as reduced)."""
        return column_moments(self.Z) if self.Z is not None else self.moments

    def standardising_transform(self) -> np.ndarray:
        """``T`` with ``Z T`` centred and scaled (see :meth:`BlockLayout.standardising_transform`)."""
        return self.layout.standardising_transform(*self.column_moments())

    @property
    def n_params(self) -> int:
        """Number of covariance parameters of the block."""
        return self.layout.n_params


@dataclass
class Design:
    """Numeric form of a mixed model on the rows that survive listwise deletion."""

    formula: ParsedFormula
    y: np.ndarray
    X: np.ndarray
    fixed_names: list[str]
    blocks: list[ReBlock]
    weights: np.ndarray | None
    n_missing: int
    dropped_fixed: list[str]
    row_index: pd.Index
    fixed_spec: object = None
    response_name: str = ""
    data: pd.DataFrame | None = None
    n_rows: int | None = None  # the number of observations when the rows are not kept (reduced data)
    X_gram: np.ndarray | None = None  # D^-1 X'X D^-1 from the aliasing check, reused for the standardisation
    X_scales: np.ndarray | None = None  # D: the columns' largest magnitudes
    offset: np.ndarray | None = None  # the summed offset(...) terms; y is the response minus them (linear)
    family: str | None = None  # a generalized model's family: y are proportions or counts, offsets stay in eta
    trials: np.ndarray | None = None  # binomial trials or Poisson prior weights of a generalized model
    success: str | None = None  # the level coded 1 of a text binary response

    @property
    def observed(self) -> np.ndarray:
        """The response as observed: ``y`` plus the offsets (``y`` is what the model fits)."""
        return self.y if self.offset is None or self.family else self.y + self.offset

    @property
    def nobs(self) -> int:
        """Number of observations used in the fit."""
        return len(self.y) if self.y is not None else int(self.n_rows)


def term_structure(kind: str, group_name: str, factor: tuple[str, ...], q: int, covariance: dict | None):
    """Covariance structure of a term: the user's choice for its factor (by name or first
    variable), else the formula's ``kind``."""
    if covariance:
        for key in (group_name, factor[0]):
            if key in covariance:
                kind = canonical_structure(covariance[key])
                break
    return CovStructure(kind, q)


def check_covariance_keys(covariance: dict | None, factors: list[tuple[str, tuple[str, ...]]]) -> None:
    """Refuse ``covariance={...}`` naming a grouping factor the model does not have."""
    if not covariance:
        return
    known = {name for name, _ in factors} | {factor[0] for _, factor in factors}
    for key in covariance:
        if key not in known:
            names = sorted({name for name, _ in factors})
            listing = ", ".join(repr(n) for n in names) if names else "none"
            raise OptionError(
                f"covariance names {key!r}, which is not a grouping factor of the model (factors: {listing})."
                + suggest(str(key), names)
            )


def check_distinct_effects(block: ReBlock) -> None:
    """Refuse a random effect that two terms of one grouping factor both contain (``(1|g) + (1|g)``)."""
    repeated = sorted({n for n in block.names if block.names.count(n) > 1})
    if repeated:
        raise FormulaError(
            f"The random effect {repeated[0]!r} of {block.name!r} appears in more than one term: "
            "its variance would be counted twice; keep one term per effect."
        )


def _build_blocks(
    parsed: ParsedFormula, data: pd.DataFrame, nobs: int, covariance: dict[str, str] | None, residual: bool = True
) -> list[ReBlock]:
    """Group the random terms by grouping factor and build each block's Z and codes."""
    blocks: dict[str, ReBlock] = {}
    for term in parsed.random:
        Z, names, spec = term_columns(term, data)
        check_finite(Z, names, data.index)
        block = blocks.get(term.group_name)
        if block is None:
            codes, levels = group_codes(data, term.factor)
            block = ReBlock(term.group_name, term.factor, codes, levels, np.empty((nobs, 0)))
            blocks[term.group_name] = block
        start = block.q
        block.Z = Z if start == 0 else np.hstack([block.Z, Z])  # no copy for a block's first term
        structure = term_structure(term.covariance, term.group_name, term.factor, Z.shape[1], covariance)
        block.terms.append(ReTerm(term.expr, names, structure, slice(start, start + Z.shape[1]), spec))
    ordered = sorted(blocks.values(), key=lambda b: -b.n_levels)  # lme4's order: most levels first
    for block in ordered:
        check_distinct_effects(block)
        check_grouping_factor(block.name, block.n_levels, block.q, block.names, nobs, residual)
    return ordered


def model_variables(parsed: ParsedFormula, columns) -> list[str]:
    """The data columns the model uses, every expression checked and every name found in ``columns``."""
    if parsed.counts:
        fixed_vars = required_variables(parsed.fixed, "the fixed part") | response_variables(parsed)
    else:
        fixed_vars = required_variables(parsed.fixed_formula, "the fixed part")
    check_columns(fixed_vars, columns, "the fixed part")
    variables = set(fixed_vars)
    for expr in parsed.offsets:
        offset_vars = required_variables(f"0 + I({expr})", f"offset({expr})")
        check_columns(offset_vars, columns, f"offset({expr})")
        variables |= offset_vars
    for term in parsed.random:
        where = f"random term ({term.expr} | {term.group_name})"
        term_vars = required_variables(term.expr, where) | set(term.factor)
        check_columns(term_vars, columns, where)
        variables |= term_vars
    return sorted(variables)


def build_design(
    parsed: ParsedFormula,
    data: pd.DataFrame,
    weights: object = None,
    covariance: dict[str, str] | None = None,
    missing: str = "drop",
    extra: Sequence[str] = (),
    family: str | None = None,
) -> Design:
    """Build the :class:`Design` of ``parsed`` on ``data``.

    ``missing="drop"`` deletes incomplete rows listwise (and counts them);
    ``missing="raise"`` refuses data with missing values in the model's variables.
    ``extra`` names further columns the fit needs (a residual structure's time, by or
    cluster variables): they take part in the listwise deletion.  A formula without random
    terms gives a design without blocks (a marginal model).  ``family`` (binomial, bernoulli,
    poisson) makes the design of a generalized model (:mod:`mixedfx.data.response`): ``y``
    proportions or counts, ``trials`` from cbind() or the weights, offsets kept apart.
    """
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame or a file path, not {type(data).__name__}.")
    if len(data) == 0:
        raise DataError("The data set is empty.")
    data = data.rename(columns=str) if not all(isinstance(c, str) for c in data.columns) else data
    parsed = expand_dot(parsed, data.columns, [weights] * isinstance(weights, str) + list(extra))
    check_covariance_keys(covariance, [(t.group_name, t.factor) for t in parsed.random])
    variables = set(model_variables(parsed, data))
    if isinstance(weights, str):
        check_columns({weights}, data, "weights")
        variables.add(weights)
    for name in extra:
        check_columns({name}, data, "the residual structure")
        variables.add(name)
    used = [c for c in data.columns if c in variables]
    mask = complete_rows(data, used)
    n_missing = int((~mask).sum())
    if n_missing and missing == "raise":
        raise DataError(f"{n_missing} rows have missing values in the model's variables (missing='raise').")
    if not mask.any():
        raise DataError(
            "No complete rows: every row has a missing value in one of " + ", ".join(repr(c) for c in used) + "."
        )
    complete = n_missing == 0
    # Select by position: label selection compares the column Index, which for pandas' Arrow
    # strings loads pyarrow's compute kernels (~0.1 s on a cold start) for nothing.
    positions = [i for i, c in enumerate(data.columns) if c in variables]
    rows = slice(None) if complete else mask.to_numpy()  # no row copy when nothing is dropped
    frame = data if (complete and len(positions) == data.shape[1]) else data.iloc[rows, positions]
    if frame.select_dtypes(include="category").shape[1]:
        frame = frame.copy()
        for col in frame.select_dtypes(include="category"):
            frame[col] = frame[col].cat.remove_unused_categories()
    weight_values = weights_vector(weights, data, mask)
    trials, success = None, None
    if family is None:
        if parsed.counts:
            raise FormulaError(
                f"The response {parsed.response!r} is binomial counts: fit it with family='binomial' "
                "(mixedfx.fit(..., family='binomial') or melogit)."
            )
        y, X, names, spec = fixed_matrices(parsed, frame)
        check_finite(y, [parsed.response], frame.index)
    else:
        X, names, spec = fixed_matrix(parsed, frame)
        response = glm_response(parsed, frame, family, weight_values)
        y, trials, success, weight_values = response.y, response.m, response.success, None
    offset = offset_values(parsed, frame)
    if offset is not None:
        check_finite(offset, ["offset(" + " + ".join(parsed.offsets) + ")"], frame.index)
        y = y if family else y - offset
    check_finite(X, names, frame.index)
    check_enough_rows(len(y), X.shape[1])
    X, names, dropped, gram, scales = drop_aliased(X, names)
    blocks = _build_blocks(parsed, frame, len(y), covariance, residual=family is None)
    return Design(
        formula=parsed,
        y=y,
        X=X,
        fixed_names=names,
        blocks=blocks,
        weights=weight_values,
        n_missing=n_missing,
        dropped_fixed=dropped,
        row_index=frame.index,
        fixed_spec=spec,
        response_name=parsed.response,
        data=data if complete else data.loc[mask],
        X_gram=gram,
        X_scales=scales,
        offset=offset,
        family=family,
        trials=trials,
        success=success,
    )


def nested_within(inner: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    """True when sharing a level of ``inner`` implies sharing the level of ``outer``."""
    return set(outer) <= set(inner)
