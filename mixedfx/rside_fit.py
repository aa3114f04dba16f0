"""Fitting models with residual covariance structures (see :mod:`mixedfx.rside`).

The covariance parameters are ``theta`` (random effects, as everywhere) and ``u`` (the
R-side parameters, unconstrained).  For given ``u`` each cluster's standardised
``[Z X y]`` is whitened by the Cholesky factor of its ``R_i``; the per-cluster
cross-products of the whitened rows are the usual sufficient statistics, so the profiled
deviance of :class:`~mixedfx.likelihood.ProfiledDeviance` applies, plus ``sum_i log|R_i|``.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from .design import build_design
from .errors import DataError, OptionError, SingularFitWarning
from .formula import ParsedFormula
from .likelihood import ProfiledDeviance
from .optimize import minimize_deviance
from .results import MixedResults
from .rside import ClusterBatches, ResidualSpec, RStructure
from .stats import SufficientStats, standardise

#: Bound on the unconstrained R-side parameters (tanh(8) = 1 - 2e-7: correlations stay inside (-1, 1)).
U_BOUND = 8.0


@dataclasses.dataclass
class RSideModel:
    """Everything needed to evaluate the deviance for any (theta, u)."""

    structure: RStructure
    batches: ClusterBatches
    columns: np.ndarray  # n x (q + p + 1): standardised Z T, X~, y~
    q: int
    p: int
    n_clusters: int
    factors: list
    transforms: list
    reml: bool

    def linear_deviance(self) -> float:
        """Deviance of the linear regression (no random effects, R = I), standardised scale."""
        stats, _ = self.stats_at(None)
        return ProfiledDeviance(stats, self.factors, self.reml)(np.zeros(sum(f[0] for f in self.factors)))

    def stats_at(self, u: np.ndarray | None) -> tuple[SufficientStats, float]:
        """Sufficient statistics of the whitened data and ``sum log|R_i|`` (``u=None``: R = I)."""
        parts, logdet = self.batches.whiten(self.structure, u, self.columns)
        c = self.columns.shape[1]
        products = np.empty((c, c, self.n_clusters))
        for ids, _, W in parts:
            products[:, :, ids] = np.einsum("kia,kib->abk", W, W)
        q, p = self.q, self.p
        total = products.sum(axis=2)
        stats = SufficientStats(
            n=self.columns.shape[0],
            p=p,
            XtX=total[q : q + p, q : q + p],
            Xty=total[q : q + p, -1],
            yty=float(total[-1, -1]),
            sum_log_weights=0.0,
            first_q=q,
            first_ZtZ=np.ascontiguousarray(products[:q, :q]),
            first_ZtX=np.ascontiguousarray(products[:q, q : q + p]),
            first_Zty=np.ascontiguousarray(products[:q, -1]),
            rest_sizes=[],
        )
        return stats, logdet

    def inner(self, u: np.ndarray) -> ProfiledDeviance:
        """The profiled deviance of the whitened data at ``u`` (its offset holds ``sum log|R_i|``)."""
        stats, logdet = self.stats_at(u)
        stats.column_transforms = self.transforms  # built from the columns Z T already
        dev = ProfiledDeviance(stats, self.factors, self.reml, column_transforms=self.transforms)
        dev.offset = logdet
        return dev

    def __call__(self, params: np.ndarray) -> float:
        k = len(params) - self.structure.n_params
        try:
            return self.inner(params[k:])(params[:k])
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            return np.inf


def _clusters(design, data: pd.DataFrame, group: str | None) -> tuple[np.ndarray, int, str]:
    """Cluster codes of the residual structure: the random-effects factor, or ``group``."""
    if design.blocks:
        if len(design.blocks) > 1:
            raise OptionError(
                "Residual structures are supported with one random-effects grouping factor (or none with group=); "
                f"this model has {', '.join(b.name for b in design.blocks)}."
            )
        block = design.blocks[0]
        if group is not None and group != block.name:
            raise OptionError(f"group={group!r} differs from the random-effects factor {block.name!r}.")
        return block.codes, block.n_levels, block.name
    if group not in data.columns:
        raise DataError(f"Unknown group column {group!r}.")
    codes, levels = pd.factorize(data[group], sort=True)
    if (codes < 0).any():
        raise DataError(f"The group column {group!r} has missing values.")
    return codes, len(levels), group


def fit_rside(
    parsed: ParsedFormula,
    frame: pd.DataFrame,
    spec: ResidualSpec,
    reml: bool,
    covariance,
    missing: str,
    group: str | None,
    max_iterations: int,
    weights,
) -> MixedResults:
    """Fit a model with an R-side structure (random effects on at most one factor)."""
    if weights is not None:
        raise OptionError("weights cannot be combined with residuals(); use a variance function instead.")
    extra = [v for v in (spec.time, spec.by, spec.variance[1] if spec.variance else None, group) if v]
    for name in extra:
        if name not in frame.columns:
            from .errors import suggest

            raise DataError(
                f"Unknown variable {name!r} in the residual structure.{suggest(name, map(str, frame.columns))}"
            )
    if parsed.random:
        design = build_design(parsed, frame.dropna(subset=extra), covariance=covariance, missing=missing)
    else:
        design = _fixed_only_design(parsed, frame.dropna(subset=extra), missing)
    data = design.data
    clusters, m, cluster_name = _clusters(design, data, group)
    Xs, ys, scaling = standardise(design.X, design.y)
    transforms = [b.standardising_transform() for b in design.blocks]
    Z = design.blocks[0].Z @ transforms[0] if design.blocks else np.zeros((len(ys), 0))
    structure = RStructure(spec, data, clusters, m)
    batches = ClusterBatches(clusters, m, structure.time)
    if design.blocks:
        factors = [(b.n_params, b.factor_matrix, b.factor_jacobian) for b in design.blocks]
    else:
        factors = [(0, lambda theta: np.zeros((0, 0)), lambda theta: np.zeros((0, 0, 0)))]
    model = RSideModel(
        structure, batches, np.column_stack([Z, Xs, ys]), Z.shape[1], Xs.shape[1], m, factors, transforms, reml
    )
    structures = [t.structure for b in design.blocks for t in b.terms]
    theta0 = np.concatenate([s.start() for s in structures] + [structure.start()])
    lower = np.concatenate([s.lower_bounds() for s in structures] + [np.full(structure.n_params, -U_BOUND)])
    upper = np.concatenate([s.upper_bounds() for s in structures] + [np.full(structure.n_params, U_BOUND)])
    report = minimize_deviance(model, theta0, lower, upper, max_iterations=max_iterations)
    k = len(report.theta) - structure.n_params
    u_hat = report.theta[k:]
    inner = model.inner(u_hat)
    theta_report = dataclasses.replace(report, theta=report.theta[:k], gradient=report.gradient[:k])
    result = MixedResults(design, inner, scaling, theta_report, reml)
    result.rside = RSideFit(model, u_hat, cluster_name, report.gradient[k:])
    from .model import warn_fit_problems

    warn_fit_problems(result, stacklevel=4)
    if np.any(np.abs(u_hat) > U_BOUND - 1e-3):
        warnings.warn(
            "A residual correlation or SD ratio is at its bound (correlation near +-1).",
            SingularFitWarning,
            stacklevel=3,
        )
    return result


@dataclasses.dataclass
class RSideFit:
    """The residual structure of a fitted model: its parameters and how to re-evaluate it."""

    model: RSideModel
    u: np.ndarray
    cluster: str
    gradient: np.ndarray

    @property
    def spec(self) -> ResidualSpec:
        return self.model.structure.spec

    @property
    def labels(self) -> list[str]:
        return self.model.structure.params.labels

    def natural(self, u: np.ndarray | None = None) -> np.ndarray:
        return self.model.structure.params.natural(self.u if u is None else u)

    def covariance_rows(self, rows: np.ndarray, sigma: float) -> np.ndarray:
        """``sigma^2 R`` for rows of one cluster (in the order given)."""
        s = self.model.structure
        t = s.time[rows][None, :]
        group = s.by_codes[rows[:1]]
        occ = s.occasion_index[rows][None, :] if s.occasions is not None else None
        C = s.correlation(t, group, self.u, occ)[0]
        sd = s.sd_multipliers(self.u)[rows]
        return sigma**2 * C * np.outer(sd, sd)


def _fixed_only_design(parsed: ParsedFormula, frame: pd.DataFrame, missing: str):
    """A design without random effects (marginal / GLS models)."""
    from .design import Design, _check_columns, _complete_rows, _drop_aliased, _fixed_matrices, _required_variables

    fixed_vars = _required_variables(parsed.fixed_formula, "the fixed part")
    _check_columns(fixed_vars, frame, "the fixed part")
    used = [c for c in frame.columns if c in fixed_vars]
    mask = _complete_rows(frame, used)
    if missing == "raise" and not mask.all():
        raise DataError(f"{int((~mask).sum())} rows have missing values in the model's variables (missing='raise').")
    if not mask.any():
        raise DataError("No complete rows.")
    y, X, names, spec = _fixed_matrices(parsed, frame.loc[mask, used])
    X, names, dropped, _ = _drop_aliased(X, names)
    return Design(
        formula=parsed,
        y=y,
        X=X,
        fixed_names=names,
        blocks=[],
        weights=None,
        n_missing=int((~mask).sum()),
        dropped_fixed=dropped,
        row_index=frame.index[mask.to_numpy()],
        fixed_spec=spec,
        response_name=parsed.response,
        data=frame.loc[mask],
    )
