"""Shrinkage of cluster-specific estimates and ranking of clusters by their EB estimates."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.design import ReBlock
from ..errors import OptionError
from ..results import FitRecord
from ..spec.options import two_sided_quantile
from .explore import ols_row
from .ranef import coef_by_group, ranef_table


def shrinkage(result: FitRecord, group: str | None = None, min_size: int = 1) -> pd.DataFrame:
    """Per cluster: OLS estimate, EB estimate, cluster size and shrinkage factor, per term.

    The OLS fit of each cluster regresses ``y - X_other beta`` on the factor's random-effect
    columns (``X_other``: fixed effects without a random counterpart), so that it estimates
    the same cluster-specific coefficients as the EB estimate ``beta + b_j``.  The shrinkage
    factor is ``(EB - beta) / (OLS - beta)``: 1 means no shrinkage, 0 full shrinkage.  With
    correlated random effects a term's EB estimate also borrows from the other terms, so
    its factor can fall outside [0, 1] (look at the two-dimensional shrinkage plot).
    """
    result.require_rows("Shrinkage (per-cluster OLS)")
    block = _block(result, group)
    fixef = result.fixef
    terms = block.names
    other = np.array([n not in terms for n in fixef.index])  # by position: labels may differ from names
    offset = result.design.X[:, other] @ fixef.to_numpy()[other] if other.any() else 0.0
    y = result.design.y - offset
    eb = coef_by_group(result)[block.name]
    rows = []
    sizes = np.bincount(block.codes, minlength=block.n_levels)
    order = np.argsort(block.codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for j, level in enumerate(block.levels):
        if sizes[j] < min_size:
            continue
        idx = order[starts[j] : starts[j + 1]]
        ols = ols_row(block.Z[idx], y[idx], terms)
        row = {"group": level, "n": int(sizes[j])}
        for term in terms:
            base = fixef.get(term, 0.0)
            row[f"ols_{term}"] = ols[term]
            row[f"eb_{term}"] = eb.loc[level, term]
            denom = ols[term] - base
            row[f"shrinkage_{term}"] = (eb.loc[level, term] - base) / denom if np.isfinite(denom) and denom else np.nan
        rows.append(row)
    columns = ["group", "n"] + [f"{kind}_{term}" for term in terms for kind in ("ols", "eb", "shrinkage")]
    return pd.DataFrame(rows, columns=columns).set_index("group")


def _block(result: FitRecord, group: str | None) -> ReBlock:
    """The random-effects block of ``group`` (default: the only or first factor)."""
    blocks = result.design.blocks
    if group is None:
        return blocks[0]
    for block in blocks:
        if block.name == group:
            return block
    raise OptionError(f"No grouping factor {group!r}; the model has {', '.join(b.name for b in blocks)}.")


def rank(
    result: FitRecord, term: str = "(Intercept)", group: str | None = None, level: float = 95, se: str = "comparative"
) -> pd.DataFrame:
    """Clusters ranked by their EB estimate of ``term``, with intervals and flags.

    Intervals are ``estimate +- z * se`` with the comparative SE (Stata's reses, default) or
    the conditional SD (``se="conditional"``).  ``flag`` is ``"above"`` when the interval lies
    above zero (better than average for a positive outcome), ``"below"`` when below it.
    Rank 1 is the largest estimate.
    """
    block = _block(result, group)
    if term not in block.names:
        raise OptionError(f"{term!r} is not a random effect of {block.name!r}; choose one of {block.names}.")
    if se not in ("comparative", "conditional"):
        raise OptionError(f"se must be 'comparative' or 'conditional', not {se!r}.")
    table = ranef_table(result)
    part = table[(table["group"] == block.name) & (table["term"] == term)].copy()
    sd = part["se_comparative"] if se == "comparative" else part["se"]
    z = two_sided_quantile(level)
    part["lower"] = part["estimate"] - z * sd
    part["upper"] = part["estimate"] + z * sd
    part["flag"] = np.where(part["lower"] > 0, "above", np.where(part["upper"] < 0, "below", ""))
    part = part.sort_values("estimate", ascending=False)
    part["rank"] = np.arange(1, len(part) + 1)
    columns = ["rank", "level", "estimate", "se", "se_comparative", "lower", "upper", "flag", "n"]
    return part[columns].set_index("level")
