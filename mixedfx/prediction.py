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
from formulaic import model_matrix
from scipy import stats as st

from .design import ReBlock, _check_columns, _required_variables, lme4_name
from .errors import DataError, OptionError
from .results import require_rows  # noqa: E402
from .spec.expressions import evaluation_context

POPULATION = ("population", "xb", "fixed", 0)
SUBJECT = ("subject", "fitted", "conditional", 1)


def _level_kind(level: object) -> str:
    if level in POPULATION:
        return "population"
    if level in SUBJECT:
        return "subject"
    raise OptionError(f"level must be 'population' (xb) or 'subject' (fitted), not {level!r}.")


def _fixed_matrix(result, data: pd.DataFrame) -> np.ndarray:
    """Fixed-effects design of new data, in the fitted model's columns."""
    try:
        mm = result.design.fixed_spec.get_model_matrix(data, na_action="raise", context=evaluation_context())
    except Exception as exc:  # formulaic raises several types for bad new data
        raise DataError(f"Cannot build the fixed effects for the new data: {exc}") from exc
    frame = pd.DataFrame(np.asarray(mm, dtype=float), columns=[lme4_name(str(c)) for c in mm.columns])
    return frame[result.design.fixed_names].to_numpy()


def _random_matrix(block: ReBlock, data: pd.DataFrame) -> np.ndarray:
    """The block's random-effects columns for new data."""
    parts = []
    for term in block.terms:
        try:
            parts.append(
                np.asarray(
                    term.spec.get_model_matrix(data, na_action="raise", context=evaluation_context()), dtype=float
                )
            )
        except Exception as exc:
            raise DataError(f"Cannot build random term ({term.expr} | {block.name}) for the new data: {exc}") from exc
    return np.hstack(parts)


def _new_codes(block: ReBlock, data: pd.DataFrame) -> np.ndarray:
    """Level index of each new row in the fitted factor, -1 for an unseen level."""
    from .design import factor_labels

    for name in block.factor:
        if name not in data.columns:
            raise DataError(f"New data have no column {name!r} (grouping factor {block.name!r}).")
    labels = pd.Series(factor_labels(data, block.factor), index=data.index)
    lookup = {level: i for i, level in enumerate(block.levels)}
    return labels.map(lookup).fillna(-1).astype(int).to_numpy()


def predict(
    result,
    data: pd.DataFrame | None = None,
    level: str = "subject",
    interval: str | None = None,
    conf_level: float = 0.95,
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
        require_rows(result, "Predictions for the estimation rows")
        X = design.X
        Zs = [b.Z for b in design.blocks]
        codes = [b.codes for b in design.blocks]
        index = design.row_index
    else:
        X = _fixed_matrix(result, data)
        Zs = [_random_matrix(b, data) for b in design.blocks]
        codes = [_new_codes(b, data) for b in design.blocks]
        index = data.index
    xb = X @ result.fixef.to_numpy()
    V = result.vcov.to_numpy()
    se_fixed = np.sqrt(np.einsum("ij,jk,ik->i", X, V, X))
    prediction = xb.copy()
    extra_var = np.zeros(len(xb))
    modes, covs, _ = result._conditional
    for block, Z, code, mode, cov in zip(design.blocks, Zs, codes, modes, covs):
        G = result.G[block.name].to_numpy()
        unseen = code < 0
        if unseen.any() and kind == "subject":
            missing = sorted(set(pd.Series(data[list(block.factor)].astype(str).agg(":".join, axis=1))[unseen]))
            message = (
                f"{int(unseen.sum())} new row(s) belong to {len(missing)} level(s) of {block.name!r} not in the fit "
                f"(e.g. {missing[0]!r}); they get population-level predictions."
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
        z = st.norm.ppf(0.5 + conf_level / 2)
        var = se_fixed**2
        if kind == "subject" or interval == "prediction":
            var = var + extra_var
        if interval == "prediction":
            var = var + result.sigma**2
        half = z * np.sqrt(var)
        out["lower"], out["upper"] = prediction - half, prediction + half
    return out


def fitted(result, level: str = "subject") -> pd.Series:
    """Fitted values on the estimation rows (subject-specific by default)."""
    require_rows(result, "Fitted values")
    return predict(result, level=level)["prediction"].rename("fitted")


def residuals(result, level: str = "subject", kind: str = "raw") -> pd.Series:
    """Residuals ``y - fitted``: ``kind="raw"`` or ``"pearson"`` (divided by sigma / sqrt(w)).

    ``level="population"`` gives marginal residuals ``y - X beta``.
    """
    require_rows(result, "Residuals")
    if kind not in ("raw", "pearson"):
        raise OptionError(f"kind must be 'raw' or 'pearson', not {kind!r}.")
    fit = fitted(result, level).to_numpy()
    res = result.design.y - fit
    if kind == "pearson":
        w = result.design.weights if result.design.weights is not None else 1.0
        res = res * np.sqrt(w) / result.sigma
    return pd.Series(res, index=result.design.row_index, name="residual")


def coef_by_group(result) -> dict[str, pd.DataFrame]:
    """Cluster-specific coefficients ``beta + b_j`` for each factor (lme4's ``coef()``).

    Coefficients without a random effect on the factor are the fixed effects, repeated.
    """
    out = {}
    for name, frame in result.ranef().items():
        coefs = pd.DataFrame(
            np.tile(result.fixef.to_numpy(), (len(frame), 1)), index=frame.index, columns=result.fixef.index
        )
        for term in frame.columns:
            if term in coefs.columns:
                coefs[term] += frame[term]
            else:
                coefs[term] = frame[term]
        out[name] = coefs
    return out


def ols_by_group(formula: str, data: pd.DataFrame, group: str, min_size: int = 1) -> pd.DataFrame:
    """Separate OLS fits per cluster: one row per cluster with n, coefficients and their SEs.

    ``formula`` is a fixed-effects formula (``"gcse ~ lrt"``).  Clusters with fewer than
    ``min_size`` rows are left out; coefficients that a cluster cannot identify (too few rows,
    a constant covariate) are NaN.  Columns: ``n``, then ``<term>`` and ``se_<term>`` per term.
    """
    if group not in data.columns:
        from .errors import suggest

        raise DataError(f"Unknown group column {group!r}.{suggest(group, map(str, data.columns))}")
    _check_columns(_required_variables(formula, "the formula"), data, "the formula")
    mm = model_matrix(formula, data, na_action="drop", context=evaluation_context())
    y = np.asarray(mm.lhs, dtype=float).ravel()
    X = np.asarray(mm.rhs, dtype=float)
    names = [lme4_name(str(c)) for c in mm.rhs.columns]
    groups = data.loc[mm.rhs.index, group]
    rows = {}
    for level, idx in groups.groupby(groups, observed=True, sort=True).indices.items():
        if len(idx) < min_size:
            continue
        rows[str(level)] = _ols_row(X[idx], y[idx], names)
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = group
    return frame


def _ols_row(X: np.ndarray, y: np.ndarray, names: list[str]) -> dict:
    """OLS coefficients and SEs of one cluster; NaN where not identified."""
    n, p = X.shape
    row = {"n": n}
    coef = np.full(p, np.nan)
    se = np.full(p, np.nan)
    if n >= p:
        beta, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
        if rank == p:
            coef = beta
            if n > p:
                resid = y - X @ beta
                s2 = resid @ resid / (n - p)
                se = np.sqrt(s2 * np.diag(np.linalg.inv(X.T @ X)))
    for name, c, s in zip(names, coef, se):
        row[name] = c
        row[f"se_{name}"] = s
    return row


def shrinkage(result, group: str | None = None, min_size: int = 1) -> pd.DataFrame:
    """Per cluster: OLS estimate, EB estimate, cluster size and shrinkage factor, per term.

    The OLS fit of each cluster regresses ``y - X_other beta`` on the factor's random-effect
    columns (``X_other``: fixed effects without a random counterpart), so that it estimates
    the same cluster-specific coefficients as the EB estimate ``beta + b_j``.  The shrinkage
    factor is ``(EB - beta) / (OLS - beta)``: 1 means no shrinkage, 0 full shrinkage.  With
    correlated random effects a term's EB estimate also borrows from the other terms, so
    its factor can fall outside [0, 1] (look at the two-dimensional shrinkage plot).
    """
    require_rows(result, "Shrinkage (per-cluster OLS)")
    block = _block(result, group)
    fixef = result.fixef
    terms = block.names
    other = [n for n in fixef.index if n not in terms]
    X = pd.DataFrame(result.design.X, columns=result.design.fixed_names)
    offset = X[other].to_numpy() @ fixef[other].to_numpy() if other else 0.0
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
        ols = _ols_row(block.Z[idx], y[idx], terms)
        row = {"group": level, "n": int(sizes[j])}
        for term in terms:
            base = fixef.get(term, 0.0)
            row[f"ols_{term}"] = ols[term]
            row[f"eb_{term}"] = eb.loc[level, term]
            denom = ols[term] - base
            row[f"shrinkage_{term}"] = (eb.loc[level, term] - base) / denom if np.isfinite(denom) and denom else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")


def _block(result, group: str | None) -> ReBlock:
    """The random-effects block of ``group`` (default: the only or first factor)."""
    blocks = result.design.blocks
    if group is None:
        return blocks[0]
    for block in blocks:
        if block.name == group:
            return block
    raise OptionError(f"No grouping factor {group!r}; the model has {', '.join(b.name for b in blocks)}.")


def rank(
    result, term: str = "(Intercept)", group: str | None = None, level: float = 0.95, se: str = "comparative"
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
    table = result.ranef_table()
    part = table[(table["group"] == block.name) & (table["term"] == term)].copy()
    sd = part["se_comparative"] if se == "comparative" else part["se"]
    z = st.norm.ppf(0.5 + level / 2)
    part["lower"] = part["estimate"] - z * sd
    part["upper"] = part["estimate"] + z * sd
    part["flag"] = np.where(part["lower"] > 0, "above", np.where(part["upper"] < 0, "below", ""))
    part = part.sort_values("estimate", ascending=False)
    part["rank"] = np.arange(1, len(part) + 1)
    columns = ["rank", "level", "estimate", "se", "se_comparative", "lower", "upper", "flag", "n"]
    return part[columns].set_index("level")


def predict_grid(
    result,
    over: dict[str, Iterable[float]],
    by: dict[str, Iterable[object]] | None = None,
    groups: Iterable[object] | None = None,
    derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    conf_level: float = 0.95,
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


def _with_block_columns(result, frame: pd.DataFrame, keep: list[str] | None = None) -> pd.DataFrame:
    """Add placeholder grouping columns (so new-data design building finds them)."""
    frame = frame.copy()
    for block in result.design.blocks:
        for name in block.factor:
            if name not in frame.columns and (keep is None or name not in keep):
                frame[name] = "__population__"
    return frame


def _first_values(result, block: ReBlock, level: str, columns: list[str]) -> dict:
    """Covariate values of a cluster (first row) for individual curves."""
    data = result.design.data
    labels = data[block.factor[0]].astype(str)
    rows = data.loc[labels == level, columns]
    if rows.empty:
        raise DataError(f"No cluster {level!r} in {block.name!r}.")
    return rows.iloc[0].to_dict()
