"""Margins: predictive margins, marginal effects, estimated marginal means, contrasts (Stata ``margins``).

Every margin is a function ``m(beta)`` of the fixed effects alone, with the delta-method
covariance ``J V J'`` (``J = dm/dbeta``, ``V`` the fixed effects' covariance: model-based, or the
sandwich of a fit with sampling weights):

- predictive margin at ``at`` (Stata ``margins, at()``, marginaleffects ``avg_predictions``):
  ``m = (1/n) sum_i h(x_i^at' beta)`` over the estimation rows (or a subgroup, ``over``) with
  the ``at`` variables set to the given values, ``J = (1/n) sum_i h'(eta_i) x_i^at``;
- average marginal effect of a continuous ``x`` (``margins, dydx(x)``): ``(1/n) sum_i dh/dx``
  by central differences of the design (exact for terms up to quadratic in ``x``); of a factor, the
  average discrete change of each level from the base level;
- estimated marginal means (emmeans): predictions on the reference grid (every level of every
  factor, numeric covariates at their means) averaged over the factors not in ``specs`` with
  equal or proportional weights.

``h`` is the identity for the linear prediction ``xb`` (Stata's default after ``mixed``) and the
inverse link for a GLMM's ``mu`` (with random effects at zero).  Rows are visited in chunks, so
no n x p matrix is formed per margin: memory is O(chunk x p) whatever the data's size.

Pairwise comparisons and contrasts are linear maps ``C m`` with covariance ``C J V J' C'``;
p-values and intervals are adjusted for ``k`` comparisons by Bonferroni, Holm (intervals:
Bonferroni, as emmeans) or Sidak.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import stats as st

from ..data.columns import offset_values, required_variables
from ..engine.laplace import gauss_hermite
from ..errors import OptionError, suggest
from ..spec.options import confidence_level
from ..spec.stata import parse_postestimation
from .glmm import MARGINAL_NODES
from .prediction import fixed_matrix

#: Rows per chunk when a margin's Jacobian is summed over the data.
MARGIN_CHUNK = 65_536

#: Multiplicity adjustments of p-values and intervals.
ADJUSTMENTS = ("none", "bonferroni", "holm", "sidak")


# ---------------------------------------------------------------------------- the result
@dataclass
class Margins:
    """A table of margins (or contrasts of them) with everything needed to compare them further.

    ``table`` has the cell columns (the ``at``/``over`` variables, or ``contrast``), then
    ``estimate``, ``se``, ``z``, ``p``, ``lower``, ``upper``; ``jacobian`` (k x p) is
    ``d estimate / d beta`` and ``vcov_beta`` the fixed effects' covariance it was computed with.
    """

    table: pd.DataFrame
    jacobian: np.ndarray
    vcov_beta: np.ndarray
    level: float
    kind: str
    expression: str
    nobs: int
    cells: list[str] = field(default_factory=list)
    adjust: str = "none"

    @property
    def cov(self) -> np.ndarray:
        """Covariance of the estimates, ``J V J'``."""
        return self.jacobian @ self.vcov_beta @ self.jacobian.T

    def __repr__(self) -> str:
        return f"{self.kind} ({self.expression})\n{self.table.to_string()}"

    def pairwise(self, adjust: str = "none", order: str = "emmeans") -> Margins:
        """Every pairwise difference, adjusted for multiplicity: ``m_a - m_b`` for a before b (emmeans'
        ``pairs``), or with ``order="stata"`` ``m_b - m_a`` labelled ``b vs a`` (Stata's ``pwcompare``)."""
        k = len(self.table)
        if k < 2:
            raise OptionError("Pairwise comparisons need at least two margins.")
        if order not in ("emmeans", "stata"):
            raise OptionError(f"order must be 'emmeans' or 'stata', not {order!r}.")
        names = self.labels()
        if order == "stata":
            pairs = [(b, a) for a in range(k) for b in range(a + 1, k)]
        else:
            pairs = list(itertools.combinations(range(k), 2))
        C = np.zeros((len(pairs), k))
        labels = []
        for row, (a, b) in enumerate(pairs):
            C[row, a], C[row, b] = 1.0, -1.0
            labels.append(f"{names[a]} vs {names[b]}" if order == "stata" else f"{names[a]} - {names[b]}")
        return self.contrast(C, labels, adjust, kind="Pairwise comparisons")

    def contrast(self, C: np.ndarray, labels: list[str], adjust: str = "none", kind: str = "Contrasts") -> Margins:
        """The linear combinations ``C m`` (one row of C per contrast), adjusted for multiplicity."""
        C = np.asarray(C, dtype=float)
        if C.ndim != 2 or C.shape[1] != len(self.table):
            raise OptionError(f"A contrast matrix needs {len(self.table)} columns, one per margin.")
        estimate = C @ self.table["estimate"].to_numpy()
        jacobian = C @ self.jacobian
        se = np.sqrt(np.einsum("ij,jk,ik->i", jacobian, self.vcov_beta, jacobian))
        table = inference_table(pd.DataFrame({"contrast": labels}), estimate, se, self.level, adjust)
        return replace(self, table=table, jacobian=jacobian, kind=kind, cells=["contrast"], adjust=adjust)

    def reference_contrasts(self, adjust: str = "none") -> Margins:
        """Each margin minus the first (Stata's ``r.`` operator), adjusted for multiplicity."""
        k = len(self.table)
        names = self.labels()
        C = np.hstack([-np.ones((k - 1, 1)), np.eye(k - 1)])
        return self.contrast(C, [f"{names[i]} - {names[0]}" for i in range(1, k)], adjust, kind="Contrasts")

    def labels(self) -> list[str]:
        """A label per margin from its cell columns (``girls``, ``girls, M``, ``lrt_groupc=20``)."""
        if not self.cells:
            return [str(i) for i in range(len(self.table))]
        out = []
        for _, row in self.table[self.cells].iterrows():
            values = row.to_dict()
            head = ""
            if "term" in values:  # a marginal effect: the variable, and the change for a factor
                term, change = values.pop("term"), values.pop("contrast")
                head = term if change == "dy/dx" else f"{term}: {change}"
            parts = [str(v) if isinstance(v, str) else f"{name}={v:g}" for name, v in values.items()]
            out.append(", ".join(([head] if head else []) + parts))
        return out


# ---------------------------------------------------------------------------- inference
def adjusted_pvalues(p: np.ndarray, method: str) -> np.ndarray:
    """``p`` adjusted for ``len(p)`` tests: Bonferroni ``min(1, k p)``, Holm's step-down, Sidak ``1-(1-p)^k``."""
    method = check_adjustment(method)
    p = np.asarray(p, dtype=float)
    k = p.size
    if method == "none" or k <= 1:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(1.0, k * p)
    if method == "sidak":
        return -np.expm1(k * np.log1p(-p))
    order = np.argsort(p)
    stepped = np.maximum.accumulate((k - np.arange(k)) * p[order])
    out = np.empty(k)
    out[order] = np.minimum(1.0, stepped)
    return out


def adjusted_quantile(level: float, k: int, method: str) -> float:
    """Normal quantile of simultaneous intervals for k estimates (Holm's intervals are Bonferroni's)."""
    alpha = 1.0 - confidence_level(level)
    method = check_adjustment(method)
    if method == "none" or k <= 1:
        per = alpha
    elif method == "sidak":
        per = -np.expm1(np.log1p(-alpha) / k)
    else:
        per = alpha / k
    return float(st.norm.isf(per / 2))


def check_adjustment(method: str) -> str:
    """The canonical adjustment name, or a clear error."""
    key = str(method).strip().lower()
    if key not in ADJUSTMENTS:
        raise OptionError(f"adjust must be one of {', '.join(ADJUSTMENTS)}, not {method!r}.{suggest(key, ADJUSTMENTS)}")
    return key


def inference_table(
    cells: pd.DataFrame, estimate: np.ndarray, se: np.ndarray, level: float, adjust: str
) -> pd.DataFrame:
    """``cells`` with estimate, SE, z, p (adjusted) and the (adjusted) confidence interval."""
    z = estimate / se
    p = adjusted_pvalues(2.0 * st.norm.sf(np.abs(z)), adjust)
    q = adjusted_quantile(level, len(estimate), adjust)
    out = cells.reset_index(drop=True).copy()
    out["estimate"], out["se"], out["z"], out["p"] = estimate, se, z, p
    out["lower"], out["upper"] = estimate - q * se, estimate + q * se
    return out


# ---------------------------------------------------------------------------- the prediction
@dataclass
class Prediction:
    """``h(eta)`` and ``h'(eta)`` of the predicted quantity (identity for ``xb``)."""

    name: str
    mean: Callable[[np.ndarray], np.ndarray]
    slope: Callable[[np.ndarray], np.ndarray]


def linear_prediction() -> Prediction:
    """Stata's ``xb``: the linear prediction, fixed portion."""
    return Prediction("Linear prediction, fixed portion (xb)", lambda eta: eta, np.ones_like)


def mean_prediction(inverse_link: Callable[[np.ndarray], np.ndarray], link: str) -> Prediction:
    """A GLMM's ``mu`` with random effects at zero; ``h'`` by central differences (relative error ~1e-10)."""

    def slope(eta: np.ndarray) -> np.ndarray:
        step = 1e-5 * np.maximum(1.0, np.abs(eta))
        return (inverse_link(eta + step) - inverse_link(eta - step)) / (2.0 * step)

    return Prediction(f"Predicted mean ({link} link), random effects at zero (mu)", inverse_link, slope)


def population_averaged_prediction(record) -> Prediction:
    """A GLMM's population-averaged mean ``E[g^-1(eta + sqrt(v) z)]``, ``z ~ N(0, 1)`` (Stata's
    ``predict(mu marginal)``), with ``v`` the sum of the random intercepts' variances.

    Given the variance components, ``h(eta)`` and ``h'(eta) = E[dmu/deta]`` are Gauss-Hermite
    sums (:data:`mixedfx.analysis.glmm.MARGINAL_NODES` nodes).  With random slopes ``v`` varies
    with the covariates; such models are refused.
    """
    blocks = record.design.blocks
    if any(list(b.names) != ["(Intercept)"] for b in blocks):
        raise OptionError(
            "Population-averaged margins (predict='marginal') need random intercepts only: with random slopes "
            "the variance of the random part varies with the covariates."
        )
    variance = sum(float(record.G[b.name].to_numpy()[0, 0]) for b in blocks)
    nodes, log_w = gauss_hermite(MARGINAL_NODES)
    weights = np.exp(log_w - 0.5 * nodes**2) / np.sqrt(2 * np.pi)
    shifts = np.sqrt(variance) * nodes
    family = record.family

    def mean(eta: np.ndarray) -> np.ndarray:
        return sum(w * family.mean(eta + t) for t, w in zip(shifts, weights))

    def slope(eta: np.ndarray) -> np.ndarray:
        return sum(w * np.exp(family.log_mu_eta(eta + t)) for t, w in zip(shifts, weights))

    return Prediction(f"Population-averaged mean ({family.link} link), marginal over the random effects", mean, slope)


# ---------------------------------------------------------------------------- cells
def _grid(values: Mapping[str, object]) -> pd.DataFrame:
    """Every combination of the given values (one value or a list per variable), first variable slowest."""
    columns = {k: list(v) if _is_listlike(v) else [v] for k, v in values.items()}
    rows = list(itertools.product(*columns.values()))
    return pd.DataFrame(rows, columns=list(columns))


def _is_listlike(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray, pd.Series, pd.Index, range))


def require_data(record) -> None:
    """Margins average over the estimation rows: refuse a fit made from reduced data (DuckDB, Dask)."""
    if record.design.data is None:
        raise OptionError(
            "Margins average predictions over the rows of the data, but this model was fitted from reduced data "
            "(sufficient statistics); refit in memory with mixedfx.fit(..., engine='memory') for them."
        )


def model_variables(record) -> list[str]:
    """The data columns the fixed part (and offsets) reads, in formula order."""
    require_data(record)
    formula = record.design.formula
    names = list(required_variables(formula.fixed, "the fixed part"))
    for expr in formula.offsets:
        names += [n for n in required_variables(f"0 + I({expr})", "an offset") if n not in names]
    return names


def factor_variables(record) -> list[str]:
    """Model variables that enter as factors: non-numeric columns, or numeric ones inside ``C()``."""
    data = record.design.data
    fixed = record.design.formula.fixed.replace(" ", "")
    out = []
    for name in model_variables(record):
        column = data[name]
        if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column) or f"C({name}" in fixed:
            out.append(name)
    return out


def factor_levels(record, name: str) -> list:
    """The levels of a factor variable in the estimation data, in the model's order."""
    column = record.design.data[name]
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [c for c in column.cat.categories if c in set(column)]
    return sorted(column.dropna().unique())


def _check_variables(record, names: Iterable[str], option: str, derived_from: Iterable[str] = ()) -> None:
    """Refuse names that are not model variables; ``derived_from`` may also name other data columns
    (the inputs of a ``derive`` function, such as ``age`` for spline terms)."""
    known = model_variables(record)
    columns = [str(c) for c in record.design.data.columns]
    derived_from = set(derived_from)
    for name in names:
        if name in derived_from and name in columns:
            continue
        if name not in known:
            raise OptionError(
                f"{option} names {name!r}, which is not a variable of the fixed part ({', '.join(known)})."
                f"{suggest(name, known)}"
            )


def _set_values(frame: pd.DataFrame, values: Mapping[str, object], derive) -> pd.DataFrame:
    """A copy of ``frame`` with ``values`` set (one value for every row, or one per row; categoricals keep
    their categories), then ``derive``."""
    out = frame.copy()
    for name, value in values.items():
        column = frame[name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            data = value if _is_listlike(value) else [value] * len(frame)
            out[name] = pd.Categorical(data, categories=column.cat.categories)
        else:
            out[name] = value
    return derive(out) if derive is not None else out


def _linear_predictor(record, frame: pd.DataFrame, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(X, eta)`` of ``frame``'s rows: the fixed-effects design and ``X beta`` plus any offset."""
    X = fixed_matrix(record, frame)
    eta = X @ beta
    offset = offset_values(record.design.formula, frame)
    return X, (eta if offset is None else eta + offset)


def _mean_gradient(record, frame: pd.DataFrame, prediction: Prediction, beta: np.ndarray) -> tuple[float, np.ndarray]:
    """``(mean h(eta_i), mean h'(eta_i) x_i)`` over the rows of ``frame``, chunk by chunk."""
    n = len(frame)
    total, gradient = 0.0, np.zeros(beta.size)
    for start in range(0, n, MARGIN_CHUNK):
        X, eta = _linear_predictor(record, frame.iloc[start : start + MARGIN_CHUNK], beta)
        total += float(prediction.mean(eta).sum())
        gradient += X.T @ prediction.slope(eta)
    return total / n, gradient / n


def _subgroups(record, over: list[str], derive=None) -> list[tuple[dict, pd.DataFrame]]:
    """The estimation rows split by the ``over`` variables (all rows when there are none).

    Only the model's variables are kept (the copies with ``at`` values set stay small), unless
    ``derive`` needs the others.
    """
    data = record.design.data
    if derive is None:
        data = data[list(dict.fromkeys(model_variables(record) + over))]
    if not over:
        return [({}, data)]
    groups = []
    for key, rows in data.groupby(over, sort=True, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        groups.append((dict(zip(over, key)), rows))
    return groups


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# ---------------------------------------------------------------------------- margins
def _cells(record, at: dict, over: list[str], derive):
    """Each (over key, at values, rows) cell of a margins table: subgroups slowest, then the ``at`` grid."""
    grid = _grid(at) if at else pd.DataFrame(index=[0])
    for key, rows in _subgroups(record, over, derive):
        for _, point in grid.iterrows():
            yield key, (point.to_dict() if at else {}), rows


def predictive_margins(
    record,
    at: Mapping[str, object] | None = None,
    over: str | Iterable[str] | None = None,
    prediction: Prediction | None = None,
    level: float = 95,
    derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> Margins:
    """Predictive margins (Stata ``margins [factor], at() over()``): mean predictions with ``at`` set."""
    prediction = prediction or linear_prediction()
    over, at = _as_list(over), dict(at or {})
    _check_variables(record, list(at) + over, "margins", at if derive is not None else ())
    beta = record.fixef.to_numpy()
    cells, estimates, jacobians = [], [], []
    for key, values, rows in _cells(record, at, over, derive):
        frame = _set_values(rows, values, derive) if values or derive else rows
        estimate, gradient = _mean_gradient(record, frame, prediction, beta)
        cells.append({**key, **values})
        estimates.append(estimate)
        jacobians.append(gradient)
    return _margins(record, cells, estimates, jacobians, level, "Predictive margins", prediction, list(at) + over)


def marginal_effects(
    record,
    dydx: str | Iterable[str],
    at: Mapping[str, object] | None = None,
    over: str | Iterable[str] | None = None,
    prediction: Prediction | None = None,
    level: float = 95,
    derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> Margins:
    """Average marginal effects (Stata ``margins, dydx()``): derivatives of continuous variables,
    discrete changes from the base level of factors, averaged over the rows (per ``at``/``over`` cell)."""
    prediction = prediction or linear_prediction()
    names, over, at = _as_list(dydx), _as_list(over), dict(at or {})
    _check_variables(record, names + list(at) + over, "margins", at if derive is not None else ())
    factors = set(factor_variables(record))
    beta = record.fixef.to_numpy()
    cells, estimates, jacobians = [], [], []
    for name in names:
        # the derivative's step: a fixed fraction of the variable's spread (None for a factor)
        step = None if name in factors else _derivative_step(record.design.data[name])
        for key, values, rows in _cells(record, at, over, derive):
            for label, estimate, gradient in _effects(record, rows, name, step, values, prediction, beta, derive):
                cells.append({"term": name, "contrast": label, **key, **values})
                estimates.append(estimate)
                jacobians.append(gradient)
    columns = ["term", "contrast"] + list(at) + over
    return _margins(record, cells, estimates, jacobians, level, "Average marginal effects", prediction, columns)


def _derivative_step(column: pd.Series) -> float:
    """Central-difference step for dy/dx: 1e-4 of the variable's SD (exact for terms up to quadratic)."""
    return 1e-4 * max(float(np.std(column.to_numpy(dtype=float))), 1e-8)


def _effects(record, rows, name, step, values, prediction, beta, derive):
    """(label, effect, gradient) of ``name`` on ``rows``: dy/dx (``step`` given), or, for a factor
    (``step`` None), each level minus the base level."""
    if step is None:
        levels = factor_levels(record, name)
        base = _mean_gradient(record, _set_values(rows, {**values, name: levels[0]}, derive), prediction, beta)
        for level in levels[1:]:
            other = _mean_gradient(record, _set_values(rows, {**values, name: level}, derive), prediction, beta)
            yield f"{level} - {levels[0]}", other[0] - base[0], other[1] - base[1]
        return
    x = np.full(len(rows), float(values[name])) if name in values else rows[name].to_numpy(dtype=float)
    up = _mean_gradient(record, _set_values(rows, {**values, name: x + step}, derive), prediction, beta)
    down = _mean_gradient(record, _set_values(rows, {**values, name: x - step}, derive), prediction, beta)
    yield "dy/dx", (up[0] - down[0]) / (2 * step), (up[1] - down[1]) / (2 * step)


def estimated_marginal_means(
    record,
    specs: str | Iterable[str],
    at: Mapping[str, object] | None = None,
    weights: str = "equal",
    prediction: Prediction | None = None,
    level: float = 95,
    derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> Margins:
    """Estimated marginal means (emmeans): the reference grid's predictions averaged over the other factors.

    The grid has every level of every factor and each numeric covariate at its mean (or at
    the ``at`` values); ``weights="equal"`` averages the other factors' combinations equally,
    ``"proportional"`` in proportion to their frequencies in the data (emmeans' weights).  The
    average is taken of the linear predictor and then transformed by ``h`` (emmeans'
    ``type = "response"``), so a GLMM's marginal mean is ``h(w' eta)``, not ``w' h(eta)``.
    """
    prediction = prediction or linear_prediction()
    specs, at = _as_list(specs), dict(at or {})
    _check_variables(record, specs + list(at), "emmeans")
    if weights not in ("equal", "proportional"):
        raise OptionError(f"weights must be 'equal' or 'proportional', not {weights!r}.")
    data = record.design.data
    factors = factor_variables(record)
    axes: dict[str, object] = {}
    for name in model_variables(record):
        if name in at:
            axes[name] = at[name]
        elif name in factors:
            axes[name] = factor_levels(record, name)
        else:
            axes[name] = [float(data[name].astype(float).mean())]
    for name in specs:
        if name not in factors and name not in at:
            raise OptionError(f"{name!r} is numeric: give its values with at={{{name!r}: [...]}} to use it in specs.")
    grid = _grid(axes)
    averaged = [n for n in factors if n not in specs and n not in at]
    template = data[list(grid.columns)].iloc[[0] * len(grid)].reset_index(drop=True)  # the data's column types
    frame = _set_values(template, {name: grid[name].to_numpy() for name in grid.columns}, derive)
    X, eta = _linear_predictor(record, frame, record.fixef.to_numpy())
    cell_weights = _grid_weights(data, grid, averaged, weights)
    cells, estimates, jacobians = [], [], []
    for key, rows in grid.groupby(specs, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        w = cell_weights[rows.index]
        w = w / w.sum()
        # as emmeans: average the linear predictor over the grid, then transform (type = "response")
        average = np.array([w @ eta[rows.index]])
        cells.append(dict(zip(specs, key)))
        estimates.append(float(prediction.mean(average)[0]))
        jacobians.append(float(prediction.slope(average)[0]) * (w @ X[rows.index]))
    # emmeans' order: the first of the specs varies fastest
    positions = [[list(dict.fromkeys(grid[n])).index(cell[n]) for n in reversed(specs)] for cell in cells]
    order = sorted(range(len(cells)), key=lambda i: positions[i])
    cells, estimates, jacobians = (
        [cells[i] for i in order],
        [estimates[i] for i in order],
        [jacobians[i] for i in order],
    )
    return _margins(record, cells, estimates, jacobians, level, "Estimated marginal means", prediction, specs)


def _grid_weights(data: pd.DataFrame, grid: pd.DataFrame, averaged: list[str], weights: str) -> np.ndarray:
    """Weight of each grid row in its average: 1 (equal), or the data's frequency of its averaged-over levels."""
    if weights == "equal" or not averaged:
        return np.ones(len(grid))
    counts = data.groupby(averaged, observed=True).size()
    keys = [tuple(row) if len(averaged) > 1 else row[0] for row in grid[averaged].itertuples(index=False)]
    return np.array([float(counts.get(key, 0.0)) for key in keys])


def _margins(record, cells, estimates, jacobians, level, kind, prediction, columns) -> Margins:
    estimate = np.asarray(estimates, dtype=float)
    jacobian = np.vstack(jacobians) if jacobians else np.zeros((0, record.fixef.size))
    V = record.vcov.to_numpy()
    se = np.sqrt(np.einsum("ij,jk,ik->i", jacobian, V, jacobian))
    frame = pd.DataFrame(cells, columns=list(dict.fromkeys(columns)))
    table = inference_table(frame, estimate, se, level, "none")
    return Margins(table, jacobian, V, level, kind, prediction.name, record.nobs, list(frame.columns))


# ---------------------------------------------------------------------------- front ends
def with_factor_levels(record, specs: str | Iterable[str] | None, at: Mapping[str, object] | None) -> dict | None:
    """``at`` with every level of each factor in ``specs`` (Stata's ``margins factor``)."""
    if specs is None:
        return None if at is None else dict(at)
    out = dict(at or {})
    factors = factor_variables(record)
    _check_variables(record, _as_list(specs), "margins")
    for name in _as_list(specs):
        if name not in factors:
            raise OptionError(
                f"margins {name!r}: only factors take all their levels; give a numeric variable's values with "
                f"at={{{name!r}: [...]}}.{suggest(name, factors)}"
            )
        out[name] = factor_levels(record, name)
    return out


def margins_table(
    record,
    specs: str | Iterable[str] | None = None,
    at: Mapping[str, object] | None = None,
    over: str | Iterable[str] | None = None,
    dydx: str | Iterable[str] | None = None,
    predict: str | None = None,
    level: float = 95,
    derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> Margins:
    """Stata's ``margins``: every level of the factors in ``specs`` (crossed with ``at``), within ``over``
    subgroups; predictive margins, or with ``dydx`` average marginal effects, of ``predict``."""
    at = with_factor_levels(record, specs, at)
    prediction = prediction_for(record, predict)
    if dydx:
        return marginal_effects(record, dydx, at, over, prediction, level, derive)
    return predictive_margins(record, at, over, prediction, level, derive)


def prediction_for(record, predict: str | None) -> Prediction:
    """The predicted quantity of ``predict``: ``xb`` for a linear model; for a GLMM ``mu`` (default; random
    effects at zero), ``marginal`` (population-averaged mean) or ``xb``.

    Predictions that involve the random effects (Stata's ``fitted``, lme4's conditional ones)
    are refused: they depend on estimated BLUPs, not on ``beta`` alone, so the delta method in
    ``beta`` would understate their uncertainty (Stata's margins refuses them too).
    """
    family = getattr(record, "family", None)
    key = (predict or ("mu" if family is not None else "xb")).strip().lower()
    if key in ("xb", "eta"):
        return linear_prediction()
    if key == "mu" and family is not None:
        return mean_prediction(family.mean, family.link)
    if key == "marginal" and family is not None:
        return population_averaged_prediction(record)
    allowed = "'mu', 'marginal' or 'xb'" if family is not None else "'xb'"
    raise OptionError(
        f"predict={predict!r} is not available for margins: use {allowed}. Predictions with the random effects "
        "(fitted, conditional) depend on the BLUPs as well as beta, so their margins have no delta-method SE."
    )


def parse_contrast(spec: str) -> tuple[str, str]:
    """``"r.x"`` (each level minus the base) or ``"pw.x"`` (every pair); ``"i.x"`` and ``"x"`` mean ``r.``."""
    text = str(spec).strip()
    operator, dot, name = text.partition(".")
    if not dot:
        return "reference", text
    kinds = {"r": "reference", "i": "reference", "pw": "pairwise"}
    if operator.lower() not in kinds:
        raise OptionError(f"Unknown contrast operator {operator!r} in {spec!r}: use r.{name} or pw.{name}.")
    return kinds[operator.lower()], name


def contrast(
    record,
    spec: str,
    adjust: str = "none",
    level: float = 95,
    predict: str | None = None,
    weights: str = "equal",
) -> Margins:
    """Contrasts of a factor's estimated marginal means (Stata ``contrast r.x``, ``pwcompare x``; emmeans
    ``contrast(emm, "trt.vs.ctrl1")``/``pairs``), with p-values and intervals adjusted by ``adjust``."""
    kind, name = parse_contrast(spec)
    if name not in factor_variables(record):
        raise OptionError(
            f"Contrasts compare the levels of a factor; {name!r} is not one.{suggest(name, factor_variables(record))}"
        )
    means = estimated_marginal_means(
        record, name, weights=weights, prediction=prediction_for(record, predict), level=level
    )
    return means.pairwise(adjust) if kind == "pairwise" else means.reference_contrasts(adjust)


def joint_test(margins: Margins) -> dict:
    """Wald test that every estimate of ``margins`` is zero: ``chi2 = m' (J V J')^+ m`` on its rank."""
    estimate = margins.table["estimate"].to_numpy()
    cov = margins.cov
    values, vectors = np.linalg.eigh(0.5 * (cov + cov.T))
    keep = values > 1e-10 * max(values.max(), 0.0)
    projected = vectors[:, keep].T @ estimate
    chi2 = float(np.sum(projected**2 / values[keep]))
    df = int(keep.sum())
    return {"chi2": chi2, "df": df, "p": float(st.chi2.sf(chi2, df))}


def stata_postestimation(record, command: str) -> Margins:
    """Run a parsed ``margins``/``contrast``/``pwcompare`` command on a fit record (linear or GLMM)."""
    spec = parse_postestimation(command)
    adjust, level = spec["adjust"], spec["level"]
    if spec["command"] != "margins":
        if len(spec["specs"]) != 1:
            raise OptionError(f"{spec['command']} compares the levels of one factor; give one.")
        name = spec["specs"][0]
        if spec["operator"] != "pw":
            return contrast(record, "r." + name, adjust, level, spec["predict"])
        if name not in factor_variables(record):
            raise OptionError(f"pwcompare compares the levels of a factor; {name!r} is not one.")
        means = estimated_marginal_means(record, name, prediction=prediction_for(record, spec["predict"]), level=level)
        return means.pairwise(adjust, order="stata")
    if spec["dydx"] and spec["operator"]:
        raise OptionError("Contrasts of marginal effects (r./pw. with dydx()) are not supported.")
    specs = spec["specs"] or None
    result = margins_table(record, specs, spec["at"], spec["over"], spec["dydx"], spec["predict"], level)
    if spec["operator"] == "pw":
        return result.pairwise(adjust, order="stata")
    if spec["operator"] == "r":
        return result.reference_contrasts(adjust)
    return result
