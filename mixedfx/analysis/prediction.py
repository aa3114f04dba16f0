"""Predictions, residuals, cluster-specific coefficients, shrinkage and rankings.

Population-average predictions use the fixed part only, ``xb = X beta`` (Stata's ``xb``);
subject-specific predictions add the BLUPs, ``X beta + Z b`` (Stata's ``fitted``).  The
standard error of ``xb`` is ``sqrt(x' Cov(beta) x)``.  A prediction interval for a new
observation adds the variance that the prediction does not condition on: at the
population level ``z' G z + sigma^2``, at the subject level the conditional variance of
``z' b`` plus ``sigma^2``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from ..data.columns import check_columns, check_new_levels, lme4_name, offset_values, required_variables
from ..data.design import ReBlock
from ..data.levels import factor_labels
from ..data.transforms import formula_context
from ..errors import DataError, OptionError
from ..results import FitRecord
from ..spec.options import two_sided_quantile
from .ranef import conditional_effects

POPULATION = ("population", "xb", "fixed", 0)

SUBJECT = ("subject", "fitted", "conditional", 1)


def _level_kind(level: object) -> str:
    if level in POPULATION:
        return "population"
    if level in SUBJECT:
        return "subject"
    raise OptionError(f"level must be 'population' (xb) or 'subject' (fitted), not {level!r}.")


def fixed_matrix(result: FitRecord, data: pd.DataFrame) -> np.ndarray:
    """Fixed-effects design of new data, in the fitted model's columns."""
    check_new_levels(result.design.fixed_spec, data)
    try:
        with np.errstate(all="ignore"):  # undefined values (sqrt(-1)) give NaN predictions, with a warning
            mm = result.design.fixed_spec.get_model_matrix(data, na_action="ignore", context=formula_context())
    except Exception as exc:  # formulaic raises several types for bad new data
        raise DataError(f"Cannot build the fixed effects for the new data: {exc}") from exc
    frame = pd.DataFrame(np.asarray(mm, dtype=float), columns=[lme4_name(str(c)) for c in mm.columns])
    return frame[result.design.fixed_names].to_numpy()


def _random_matrix(block: ReBlock, data: pd.DataFrame) -> np.ndarray:
    """The block's random-effects columns for new data."""
    parts = []
    for term in block.terms:
        try:
            with np.errstate(all="ignore"):
                mm = term.spec.get_model_matrix(data, na_action="ignore", context=formula_context())
            parts.append(np.asarray(mm, dtype=float))
        except Exception as exc:
            raise DataError(f"Cannot build random term ({term.expr} | {block.name}) for the new data: {exc}") from exc
    return np.hstack(parts)


def _new_codes(block: ReBlock, data: pd.DataFrame) -> np.ndarray:
    """Level index of each new row in the fitted factor, -1 for an unseen level."""
    for name in block.factor:
        if name not in data.columns:
            raise DataError(f"New data have no column {name!r} (grouping factor {block.name!r}).")
    labels = pd.Series(factor_labels(data, block.factor), index=data.index)
    lookup = {level: i for i, level in enumerate(block.levels)}
    codes = labels.map(lookup).fillna(-1).astype(int)
    missing = data[list(block.factor)].isna().any(axis=1)  # a missing cluster is no cluster
    return codes.where(~missing, -1).to_numpy()


def _complete_new_rows(result: FitRecord, data: pd.DataFrame) -> np.ndarray:
    """Rows of new data with every covariate the prediction needs (grouping factors may be missing)."""
    design = result.design
    needed = set(required_variables(design.formula.fixed, "the fixed part"))
    for term in design.formula.random:
        needed |= required_variables(term.expr, f"random term ({term.expr} | {term.group_name})")
    for expr in design.formula.offsets:
        needed |= required_variables(f"0 + I({expr})", f"offset({expr})")
    check_columns(needed, data, "the new data")
    return data[sorted(needed)].notna().all(axis=1).to_numpy() if needed else np.ones(len(data), dtype=bool)


def _defined_rows(result: FitRecord, X: np.ndarray, Zs: list[np.ndarray], offset: np.ndarray | None) -> np.ndarray:
    """Rows whose model columns are all finite; warns, naming a column, when some are not
    (a transformation undefined there, such as ``sqrt(x)`` at ``x < 0``: R's NaN)."""
    names = result.design.fixed_names + [n for b in result.design.blocks for n in b.names]
    columns = np.column_stack([X] + Zs + ([offset[:, None]] if offset is not None else []))
    if offset is not None:
        names = names + ["the offset"]
    finite = np.isfinite(columns)
    defined = finite.all(axis=1)
    if not defined.all():
        column = names[int(np.flatnonzero(~finite.all(axis=0))[0])]
        warnings.warn(
            f"{int((~defined).sum())} new row(s) have an undefined value of {column} (e.g. a logarithm of "
            "zero or a square root of a negative number); their predictions are NaN.",
            UserWarning,
            stacklevel=4,
        )
    return defined


def predict(
    result: FitRecord,
    data: pd.DataFrame | None = None,
    level: str = "subject",
    interval: str | None = None,
    conf_level: float = 95,
    strict: bool = False,
) -> pd.DataFrame:
    """Predictions for the estimation data (``data=None``) or new data.

    Returns a DataFrame (indexed like ``data``) with ``prediction``, ``se_fixed`` (SE of
    the fixed part ``xb``) and, with ``interval="confidence"`` or ``"prediction"``,
    ``lower``/``upper``.  New rows whose cluster was not in the fit get the population
    prediction (with a warning), or raise a :class:`DataError` when ``strict=True``.
    """
    kind = _level_kind(level)
    if interval not in (None, "confidence", "prediction"):
        raise OptionError(f"interval must be None, 'confidence' or 'prediction', not {interval!r}.")
    design = result.design
    if data is None:
        result.require_rows("Predictions for the estimation rows")
        X = design.X
        Zs = [b.Z for b in design.blocks]
        codes = [b.codes for b in design.blocks]
        index = design.row_index
        offset = design.offset
    else:
        complete = _complete_new_rows(result, data)
        if not complete.all():
            warnings.warn(
                f"{int((~complete).sum())} new row(s) have missing covariates; their predictions are NaN.",
                UserWarning,
                stacklevel=3,
            )
            out = predict(result, data[complete], level, interval, conf_level, strict)
            return out.reindex(data.index)
        X = fixed_matrix(result, data)
        Zs = [_random_matrix(b, data) for b in design.blocks]
        offset = offset_values(design.formula, data)
        defined = _defined_rows(result, X, Zs, offset)
        if not defined.all():
            out = predict(result, data[defined], level, interval, conf_level, strict)
            return out.reindex(data.index)
        codes = [_new_codes(b, data) for b in design.blocks]
        index = data.index
    xb = X @ result.fixef.to_numpy()
    if offset is not None:  # a known part of the mean: no variance
        xb = xb + offset
    V = result.vcov.to_numpy()
    se_fixed = np.sqrt(np.einsum("ij,jk,ik->i", X, V, X))
    prediction = xb.copy()
    extra_var = np.zeros(len(xb))
    if kind == "subject":
        effects = conditional_effects(result)
        modes, covs = effects.modes, effects.conditional
    else:  # the population prediction needs no BLUPs
        modes = covs = [None] * len(design.blocks)
    for block, Z, code, mode, cov in zip(design.blocks, Zs, codes, modes, covs):
        G = result.G[block.name].to_numpy()
        unseen = code < 0
        if unseen.any() and kind == "subject":
            missing = sorted(set(factor_labels(data, block.factor)[unseen]))
            message = (
                f"{int(unseen.sum())} new row(s) have a missing level or one of {len(missing)} level(s) of "
                f"{block.name!r} not in the fit (e.g. {str(missing[0])!r}); they get population-level predictions."
            )
            if strict:
                raise DataError(message)
            warnings.warn(message, UserWarning, stacklevel=3)
        if kind == "subject":
            seen = ~unseen
            prediction[seen] += np.einsum("ia,ai->i", Z[seen], mode[:, code[seen]])
            cond = cov[:, :, code[seen]]
            extra_var[seen] += np.einsum("ia,abi,ib->i", Z[seen], cond, Z[seen])
            extra_var[unseen] += np.einsum("ia,ab,ib->i", Z[unseen], G, Z[unseen])
        else:
            extra_var += np.einsum("ia,ab,ib->i", Z, G, Z)
    out = pd.DataFrame({"prediction": prediction, "se_fixed": se_fixed}, index=index)
    if interval:
        z = two_sided_quantile(conf_level)
        var = se_fixed**2
        if kind == "subject" or interval == "prediction":
            var = var + extra_var
        if interval == "prediction":
            var = var + result.sigma**2
        half = z * np.sqrt(var)
        out["lower"], out["upper"] = prediction - half, prediction + half
    return out


def fitted(result: FitRecord, level: str = "subject") -> pd.Series:
    """Fitted values on the estimation rows (subject-specific by default)."""
    result.require_rows("Fitted values")
    return predict(result, level=level)["prediction"].rename("fitted")


def residuals(result: FitRecord, level: str = "subject", kind: str = "raw") -> pd.Series:
    """Residuals ``y - fitted``: ``kind="raw"`` or ``"pearson"`` (divided by sigma / sqrt(w)).

    ``level="population"`` gives marginal residuals ``y - X beta``.
    """
    result.require_rows("Residuals")
    if kind not in ("raw", "pearson"):
        raise OptionError(f"kind must be 'raw' or 'pearson', not {kind!r}.")
    fit = fitted(result, level).to_numpy()
    res = result.design.observed - fit
    if kind == "pearson":
        w = result.design.weights if result.design.weights is not None else 1.0
        res = res * np.sqrt(w) / result.sigma
    return pd.Series(res, index=result.design.row_index, name="residual")


def predict_grid(
    result: FitRecord,
    over: dict[str, Iterable[float]],
    by: dict[str, Iterable[object]] | None = None,
    groups: Iterable[object] | None = None,
    derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    conf_level: float = 95,
) -> pd.DataFrame:
    """Predicted curves over a grid, as a tidy DataFrame ready to plot.

    ``over`` gives the grid variable(s) (e.g. ``{"age": np.linspace(0, 2.5, 50)}``), ``by``
    covariates to cross with it (``{"girl": [0, 1]}``) for population-mean curves, and
    ``groups`` cluster levels for individual curves (their covariates in ``by`` come from the
    data, their first value in the cluster).  ``derive`` adds derived columns (splines,
    interactions coded by hand) to the grid before prediction.  Columns: the grid columns,
    ``curve`` (``"population"`` or the cluster), ``prediction``, ``lower``, ``upper``
    (confidence interval of the fixed part for population curves).
    """
    grid = pd.DataFrame({k: np.asarray(list(v)) for k, v in over.items()}) if len(over) == 1 else _cross(over)
    frames = []
    by_frame = _cross(by) if by else pd.DataFrame(index=[0])
    for _, combo in by_frame.iterrows():
        pop = grid.assign(**combo.to_dict())
        frames.append(_with_block_columns(result, pop).assign(curve="population"))
    population = pd.concat(frames, ignore_index=True)
    if derive is not None:
        population = derive(population.copy())
    pred = predict(result, population, level="population", interval="confidence", conf_level=conf_level)
    population = population.assign(prediction=pred["prediction"], lower=pred["lower"], upper=pred["upper"])
    out = [population.replace({"__population__": np.nan})]
    if groups is not None:
        block = result.design.blocks[0]
        rows = []
        for g in groups:
            frame = grid.copy()
            frame[block.factor[0]] = g
            if by:
                first = _first_values(result, block, str(g), list(by))
                frame = frame.assign(**first)
            rows.append(frame.assign(curve=str(g)))
        indiv = pd.concat(rows, ignore_index=True)
        indiv = _with_block_columns(result, indiv, keep=list(block.factor))
        if derive is not None:
            indiv = derive(indiv.copy())
        pred = predict(result, indiv, level="subject")
        out.append(indiv.assign(prediction=pred["prediction"], lower=np.nan, upper=np.nan))
    return pd.concat(out, ignore_index=True)


def _cross(values: dict[str, Iterable[object]]) -> pd.DataFrame:
    """All combinations of the given values."""
    index = pd.MultiIndex.from_product([list(v) for v in values.values()], names=list(values))
    return index.to_frame(index=False)


def _with_block_columns(result: FitRecord, frame: pd.DataFrame, keep: list[str] | None = None) -> pd.DataFrame:
    """Add placeholder grouping columns (so new-data design building finds them)."""
    frame = frame.copy()
    for block in result.design.blocks:
        for name in block.factor:
            if name not in frame.columns and (keep is None or name not in keep):
                frame[name] = "__population__"
    return frame


def _first_values(result: FitRecord, block: ReBlock, level: str, columns: list[str]) -> dict:
    """Covariate values of a cluster (first row) for individual curves."""
    data = result.design.data
    labels = data[block.factor[0]].astype(str)
    rows = data.loc[labels == level, columns]
    if rows.empty:
        raise DataError(f"No cluster {level!r} in {block.name!r}.")
    return rows.iloc[0].to_dict()
