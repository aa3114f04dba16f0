"""Sampling weights at every level of a nested design: checks and Stata's ``pwscale()`` scalings.

A survey sampled in stages (schools, then students within the sampled schools) has a weight
per stage: ``w_j`` for cluster j and ``w_i|j`` for observation i *given* its cluster (the
inverse of the conditional selection probability).  :func:`sampling_weights` reads them
from the data, checks them and scales them as Stata's ``mixed ..., pwscale()`` does, at every
level below the top relative to the parent cluster (Stata documents the scalings for two
levels; mixedfx applies the same rule at each level of a three-level design):

- ``size``:      ``a_i = w_i|j n_j / sum_{i in j} w_i|j``            (the weights sum to the cluster size);
- ``effective``: ``a_i = w_i|j sum_{i in j} w_i|j / sum_{i in j} w_i|j^2`` (they sum to the effective size);
- ``gk``:        (Graubard & Korn 1996; two levels) ``w_j := (1/n_j) sum_{i in j} w_i|j w_j`` and ``a_i := 1``;
- ``None``:      the weights as given (Stata's default).

A level without a weight column is sampled with equal probability (weight 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..engine.pseudo import NestedWeights
from ..errors import DataError, OptionError, suggest
from .columns import check_columns
from .design import Design, ReBlock, nested_within

#: Stata's weight scalings (``pwscale()``).
SCALINGS = ("size", "effective", "gk")

#: The key of the observation-level (level-1) weights in ``pweights``.
OBSERVATION_LEVEL = ""


def check_scaling(pwscale: str | None) -> str | None:
    """The scaling's canonical name (None for unscaled weights), or a clear error."""
    if pwscale is None:
        return None
    key = str(pwscale).strip().lower()
    if key not in SCALINGS:
        raise OptionError(f"pwscale must be one of {', '.join(SCALINGS)} (or None), not {pwscale!r}.")
    return key


def nesting_order(blocks: list[ReBlock]) -> list[int]:
    """The blocks' positions from the finest grouping factor to the coarsest; refuses crossed factors."""
    # finest first: more levels, and on a tie (one class per school) the factor written with more variables
    order = sorted(range(len(blocks)), key=lambda b: (-blocks[b].n_levels, -len(blocks[b].factor)))
    for inner, outer in zip(order, order[1:]):
        if not nested_within(blocks[inner].factor, blocks[outer].factor):
            raise OptionError(
                f"Sampling weights need nested grouping factors: {blocks[inner].name!r} is not nested in "
                f"{blocks[outer].name!r} (write the inner factor as {blocks[inner].factor[0]}:"
                f"{blocks[outer].name}, or fit the crossed model without pweights)."
            )
    return order


def _block_for_key(key: str, blocks: list[ReBlock]) -> int:
    """The block that ``pweights`` key ``key`` names: its grouping factor as written or its innermost variable."""
    for b, block in enumerate(blocks):
        if key == block.name:
            return b
    matches = [b for b, block in enumerate(blocks) if block.factor and key == block.factor[0]]
    if len(matches) == 1:
        return matches[0]
    names = [b.name for b in blocks]
    raise OptionError(
        f"pweights has a key {key!r} that is not a grouping factor of the model ({', '.join(names)}; use "
        f"{OBSERVATION_LEVEL!r} for the observations).{suggest(key, names)}"
    )


def _weight_column(frame: pd.DataFrame, rows: pd.Index, column: str) -> np.ndarray:
    """The weight column on the fitted rows: numeric, present, finite and positive (row named otherwise)."""
    check_columns({column}, frame, "pweights")
    raw = frame.loc[rows, column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad_text = np.isnan(values) & raw.notna().to_numpy()
    if bad_text.any():
        row = rows[np.argmax(bad_text)]
        raise DataError(f"The weight column {column!r} is not numeric at row {row!r} (value {raw.loc[row]!r}).")
    checks = [
        (np.isnan(values), "is missing", "; sampling weights must be given for every observation used"),
        (np.isinf(values), "is infinite", ""),
        (values < 0, "is negative", "; sampling weights are inverse selection probabilities, never negative"),
        (values == 0, "is zero", "; drop the rows with zero weight (they are not in the sample)"),
    ]
    for bad, what, advice in checks:
        if bad.any():
            row = rows[np.argmax(bad)]
            raise DataError(f"The weight column {column!r} {what} at row {row!r} ({int(bad.sum())} row(s)){advice}.")
    return values


def _cluster_weights(values: np.ndarray, block: ReBlock, column: str) -> np.ndarray:
    """One weight per level of ``block``: the column must be constant within each level."""
    m = block.n_levels
    low = np.full(m, np.inf)
    high = np.full(m, -np.inf)
    np.minimum.at(low, block.codes, values)
    np.maximum.at(high, block.codes, values)
    varying = high - low > 1e-12 * np.maximum(np.abs(high), 1.0)
    if varying.any():
        level = int(np.argmax(varying))
        raise DataError(
            f"The weight column {column!r} of level {block.name!r} varies within its cluster "
            f"{block.levels[level]!r} (from {low[level]:g} to {high[level]:g}): a cluster's sampling weight "
            "must be the same on all of its rows."
        )
    return low


def _parents(inner: ReBlock, outer: ReBlock) -> np.ndarray:
    """For each level of ``inner``, its level of ``outer`` (the factors are nested)."""
    parent = np.empty(inner.n_levels, dtype=np.int64)
    parent[inner.codes] = outer.codes
    return parent


def _scale(values: np.ndarray, groups: np.ndarray, n_groups: int, pwscale: str | None) -> np.ndarray:
    """Weights ``values`` scaled within ``groups`` (size or effective; unchanged for None)."""
    if pwscale is None:
        return values
    total = np.bincount(groups, weights=values, minlength=n_groups)
    if pwscale == "size":
        size = np.bincount(groups, minlength=n_groups)
        return values * (size / total)[groups]
    squares = np.bincount(groups, weights=values**2, minlength=n_groups)
    return values * (total / squares)[groups]


def sampling_weights(
    design: Design, frame: pd.DataFrame, pweights: Mapping[str, str], pwscale: str | None
) -> NestedWeights:
    """The scaled, checked conditional weights of every level, on the engine's factors.

    ``pweights`` maps ``""`` (the observations) and grouping factors (as written in the
    formula, or their innermost variable) to weight columns of ``frame``.
    """
    blocks = design.blocks
    if not blocks:
        raise OptionError("Sampling weights need a model with random effects (a grouping factor).")
    if not pweights:
        raise OptionError("pweights is empty: give at least one weight column, e.g. {'': 'w_student'}.")
    pwscale = check_scaling(pwscale)
    order = nesting_order(blocks)
    rows = design.row_index
    n = design.nobs
    row_weights = np.ones(n)
    level_weights = [np.ones(b.n_levels) for b in blocks]
    for key, column in pweights.items():
        if not isinstance(column, str):
            raise OptionError(f"pweights[{key!r}] must name a column of the data, not {type(column).__name__}.")
        values = _weight_column(frame, rows, column)
        if key == OBSERVATION_LEVEL:
            row_weights = values
        else:
            b = _block_for_key(str(key), blocks)
            level_weights[b] = _cluster_weights(values, blocks[b], column)
    parents = [_parents(blocks[i], blocks[o]) for i, o in zip(order, order[1:])]
    if pwscale == "gk":
        if len(blocks) != 1:
            raise OptionError("pwscale='gk' (Graubard and Korn) is defined for two-level models only.")
        block = blocks[0]
        products = np.bincount(
            block.codes, weights=row_weights * level_weights[0][block.codes], minlength=block.n_levels
        )
        level_weights[0] = products / block.level_counts
        row_weights = np.ones(n)
    else:
        row_weights = _scale(row_weights, blocks[order[0]].codes, blocks[order[0]].n_levels, pwscale)
        for position, parent in enumerate(parents):
            b = order[position]
            level_weights[b] = _scale(level_weights[b], parent, blocks[order[position + 1]].n_levels, pwscale)
    return NestedWeights(row_weights, level_weights, order, parents, [b.codes for b in blocks])
