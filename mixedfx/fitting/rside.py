"""Fitting models with residual covariance structures (see :mod:`mixedfx.engine.rside`).

The covariance parameters are ``theta`` (random effects, as everywhere) and ``u`` (the
R-side parameters, unconstrained); the deviance over both is
:class:`~mixedfx.engine.rside.RSideModel`.  The stages are the pipeline's
(:mod:`mixedfx.fitting.pipeline`): design (with the structure's columns in the listwise
deletion), the deviance, the optimiser over ``(theta, u)``, the record and its checks.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from ..data.design import Design
from ..data.residuals import residual_structure
from ..engine.covariance import BlockLayout
from ..engine.optimize import OptimumReport, minimize_deviance
from ..engine.rside import ClusterBatches, RSideModel
from ..engine.stats import standardise
from ..errors import DataError, OptionError, SingularFitWarning
from ..results import FitRecord, RSideFit
from ..spec.model import ModelSpec
from .pipeline import check_stage, design_stage

#: Bound on the unconstrained R-side parameters (tanh(8) = 1 - 2e-7: correlations stay inside (-1, 1)).
U_BOUND = 8.0


def _clusters(design: Design, group: str | None) -> tuple[np.ndarray, int, str]:
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
    codes, levels = pd.factorize(design.data[group], sort=True)
    if (codes < 0).any():
        raise DataError(f"The group column {group!r} has missing values.")
    return codes, len(levels), group


def rside_model(design: Design, spec: ModelSpec) -> tuple[RSideModel, str, object]:
    """The deviance over ``(theta, u)`` for ``design`` (whitening batches, standardised columns)."""
    clusters, m, cluster_name = _clusters(design, spec.group)
    Xs, ys, scaling = standardise(design.X, design.y)
    transforms = [b.standardising_transform() for b in design.blocks]
    Z = design.blocks[0].Z @ transforms[0] if design.blocks else np.zeros((len(ys), 0))
    structure = residual_structure(spec.residuals, design.data, clusters, m, cluster_name)
    batches = ClusterBatches(clusters, m, structure.time)
    layouts = [b.layout for b in design.blocks] or [BlockLayout()]  # no random effects: q = 0
    model = RSideModel(
        structure, batches, np.column_stack([Z, Xs, ys]), Z.shape[1], Xs.shape[1], m, layouts, transforms, spec.reml
    )
    return model, cluster_name, scaling


def _at_boundary(model: RSideModel, report: OptimumReport) -> bool:
    """True when the optimum has a random-effect variance at zero or an R-side parameter at its bound."""
    k = len(report.theta) - model.structure.n_params
    theta, u = report.theta[:k], report.theta[k:]
    return bool(np.any(np.abs(u) > U_BOUND - 1e-3) or (k and model.inner(u).on_boundary(theta)))


def _best_optimum(
    model: RSideModel, theta0: np.ndarray, lower: np.ndarray, upper: np.ndarray, max_iterations: int
) -> OptimumReport:
    """The optimiser from the default start and, when that ends on a boundary, from others.

    The likelihood over ``(theta, u)`` can have a boundary optimum (random-intercept variance
    zero, the residual correlation absorbing it) beside the interior one: restarts from weakly
    correlated residuals, and from the boundary optimum with the variances pulled inside, keep
    whichever optimum is best.
    """
    k = len(theta0) - model.structure.n_params

    def run(start: np.ndarray) -> OptimumReport:
        # A short first step: far steps saturate tanh-type transforms, whose flat tails look stationary.
        return minimize_deviance(model, start, lower, upper, max_iterations=max_iterations, step_scale=0.1)

    best = run(theta0)
    if not best.converged and np.isfinite(best.deviance):
        # L-BFGS-B's curvature memory can go stale along a flat direction (a correlation
        # decaying to zero); a fresh start from its best point resumes the descent.
        again = run(best.theta)
        best = again if again.deviance <= best.deviance else best
    if not _at_boundary(model, best):
        return best
    inside = np.where(lower[:k] == 0, np.maximum(best.theta[:k], 0.5 * theta0[:k]), best.theta[:k])
    for start in (np.r_[theta0[:k], model.structure.weak_start()], np.r_[inside, best.theta[k:]]):
        candidate = run(np.clip(start, lower, upper))
        if candidate.deviance < best.deviance - 1e-6:
            best = candidate
    return best


def fit_rside(spec: ModelSpec, frame: pd.DataFrame, weights: object = None, max_iterations: int = 1000) -> FitRecord:
    """Fit a model with an R-side structure (random effects on at most one factor)."""
    if weights is not None:
        raise OptionError("weights cannot be combined with residuals(); use a variance function instead.")
    design = design_stage(spec, frame)
    model, cluster_name, scaling = rside_model(design, spec)
    structure = model.structure
    layouts = [b.layout for b in design.blocks]
    theta0 = np.concatenate([lay.start() for lay in layouts] + [structure.start()])
    lower = np.concatenate([lay.lower_bounds() for lay in layouts] + [np.full(structure.n_params, -U_BOUND)])
    upper = np.concatenate([lay.upper_bounds() for lay in layouts] + [np.full(structure.n_params, U_BOUND)])
    report = _best_optimum(model, theta0, lower, upper, max_iterations)
    k = len(report.theta) - structure.n_params
    u_hat = report.theta[k:]
    theta_report = dataclasses.replace(report, theta=report.theta[:k], gradient=report.gradient[:k])
    rside = RSideFit(model, u_hat, cluster_name, report.gradient[k:])
    record = check_stage(FitRecord(design, model.inner(u_hat), scaling, theta_report, spec.reml, rside), stacklevel=4)
    at_bound = bound_description(model.structure, u_hat)
    if at_bound:
        warnings.warn(f"Boundary fit of the residual structure: {at_bound}.", SingularFitWarning, stacklevel=4)
    return record


def bound_description(structure, u: np.ndarray) -> str:
    """What each R-side parameter at its bound means, joined (empty when none is)."""
    parts = []
    natural = structure.params.natural(u)
    for label, kind, value, nat in zip(structure.params.labels, structure.params.kinds, u, natural):
        if abs(value) <= U_BOUND - 1e-3:
            continue
        low = value < 0
        if kind == "log_range":
            parts.append(f"{label} is at 0 (no residual correlation)" if low else f"{label} is at 1")
        elif kind in ("lsd", "delta"):
            parts.append(f"{label} is at its {'lower' if low else 'upper'} limit (exp({value:+.0f}))")
        elif kind == "chol":  # an unbounded Cholesky entry makes two occasions' rows collinear
            parts.append(f"the residual correlation matrix is nearly singular ({label} = {nat:.4f}, its "
                         "Cholesky parameter at the bound)")  # fmt: skip
        else:
            parts.append(f"{label} = {nat:.4f}, at its limit")
    return "; ".join(parts)
