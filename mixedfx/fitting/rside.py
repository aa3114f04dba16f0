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
from ..engine.optimize import minimize_deviance
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
    # A short first step: far steps saturate tanh-type transforms, whose flat tails look stationary.
    report = minimize_deviance(model, theta0, lower, upper, max_iterations=max_iterations, step_scale=0.1)
    k = len(report.theta) - structure.n_params
    u_hat = report.theta[k:]
    theta_report = dataclasses.replace(report, theta=report.theta[:k], gradient=report.gradient[:k])
    rside = RSideFit(model, u_hat, cluster_name, report.gradient[k:])
    record = check_stage(FitRecord(design, model.inner(u_hat), scaling, theta_report, spec.reml, rside), stacklevel=4)
    if np.any(np.abs(u_hat) > U_BOUND - 1e-3):
        warnings.warn(
            "A residual correlation or SD ratio is at its bound (correlation near +-1).",
            SingularFitWarning,
            stacklevel=4,
        )
    return record
