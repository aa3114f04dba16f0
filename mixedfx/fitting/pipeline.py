"""The fitting pipeline: one sequence of named stages for every way a model is fitted.

As lme4's ``lFormula -> mkLmerDevfun -> optimizeLmer -> checkConv -> mkMerMod``:

1. :func:`design_stage` - the design from a :class:`~mixedfx.spec.model.ModelSpec` and the rows
   (listwise deletion, X, Z, grouping factors);
2. :func:`deviance_stage` - standardise, reduce to sufficient statistics, choose the
   evaluator (:func:`mixedfx.engine.factory.make_deviance`);
3. :func:`optimise_stage` - starting values (moments or ANOVA), bounds, Fisher scoring /
   L-BFGS-B, boundary restarts;
4. :func:`check_stage` - warnings for non-convergence and boundary fits;
5. :class:`~mixedfx.results.FitRecord` - the estimates.

:func:`fit_rows` (data in memory), :func:`fit_reduced` (sufficient statistics from DuckDB or
Dask), :func:`refit` (profile and bootstrap refits) and :mod:`mixedfx.fitting.rside` (residual
structures) are compositions of these stages.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.design import Design, build_design
from ..data.reduce.reduced import ReducedData, rowless_design
from ..engine.blocked import DenseBlockTooLargeError
from ..engine.deviance import ProfiledDeviance
from ..engine.factory import make_deviance
from ..engine.identifiability import ZERO_SHARE, identifiability
from ..engine.optimize import OptimumReport, minimize_deviance
from ..engine.start import starting_point
from ..engine.stats import Scaling, compute_stats, standardisation
from ..errors import (
    ConvergenceWarning,
    DataError,
    IdentifiabilityWarning,
    OptionError,
    SingularFitWarning,
    SlowFitWarning,
)
from ..results import FitRecord
from ..spec.model import ModelSpec
from .threads import single_threaded_blas


# ---------------------------------------------------------------------------- stages
def design_stage(spec: ModelSpec, frame: pd.DataFrame, weights: object = None) -> Design:
    """Stage 1: the design of ``spec`` on the rows of ``frame`` (plus any residual-structure columns)."""
    return build_design(
        spec.formula,
        frame,
        weights=weights,
        covariance=spec.covariance,
        missing=spec.missing,
        extra=spec.residual_columns,
    )


def weight_scale(weights: np.ndarray | None) -> float:
    """The weights' geometric mean: the engine works with weights divided by it (mean log 0).

    The model ``Var(e_i) = sigma^2 / w_i`` is the same with ``w / c`` and ``sigma^2 / c``, and so
    is the deviance; but relative covariance factors scale with ``sqrt(c)``, so weights of 1e20
    would make every variance look like zero (a false boundary) without this.
    """
    if weights is None:
        return 1.0
    return float(np.exp(np.mean(np.log(weights))))


#: The estimates' variances must be representable: data scales that would put them beyond
#: this (in either direction) are refused with advice to rescale.
LARGEST_SCALE = 1e150


def check_scales(scaling: Scaling, names: list[str], response: str) -> None:
    """Refuse data whose scales would overflow the variances of the estimates (y near 1e300, ...)."""
    y_scale = scaling.y_scale
    if not 1 / LARGEST_SCALE < y_scale < LARGEST_SCALE:
        raise DataError(
            f"The response {response!r} varies on a scale of {y_scale:.1e}: its variance cannot be represented "
            "in double precision. Rescale it (for example, divide it by a power of ten)."
        )
    ratios = y_scale * np.abs(np.diag(scaling.T))
    for name, ratio, j in zip(names, ratios, range(len(names))):
        if j != scaling.intercept and not 1 / LARGEST_SCALE < ratio < LARGEST_SCALE:
            raise DataError(
                f"The fixed effect of {name!r} lives on a scale {ratio:.1e} times the response's: its variance "
                "cannot be represented in double precision. Rescale that column."
            )


def build_deviance(stats, blocks: list, reml: bool, transforms) -> ProfiledDeviance:
    """The evaluator for ``stats``; crossed factors whose dense block cannot fit in memory are refused
    with the way out (the method of moments), before anything of that size is allocated."""
    try:
        return make_deviance(stats, [b.layout for b in blocks], reml, column_transforms=transforms)
    except DenseBlockTooLargeError as exc:
        outer = ", ".join(f"{b.name!r} ({b.n_levels:,} levels)" for b in blocks[1:])
        raise OptionError(
            f"The exact fit of these crossed factors factorises a dense {exc.size:,} x {exc.size:,} matrix "
            f"for {outer} at every evaluation: about {exc.needed / 1e9:.0f} GB, more than this machine's "
            f"{exc.available / 1e9:.0f} GB. Fit random intercepts by method='moments' (O(n), any size; "
            "engine='duckdb' for files), or merge or drop levels."
        ) from exc


def deviance_stage(design: Design, reml: bool) -> tuple[ProfiledDeviance, Scaling]:
    """Stage 2: standardise the design, reduce it to sufficient statistics and build the evaluator.

    Weights are divided by their geometric mean (:func:`weight_scale`; the record reports
    sigma for the user's weights).
    """
    shift, inv_scale, scaling = standardisation(design.X, design.y, design.X_gram, design.X_scales)
    check_scales(scaling, design.fixed_names, design.response_name)
    weights = None if design.weights is None else design.weights / weight_scale(design.weights)
    transforms = [b.standardising_transform() for b in design.blocks]
    stats = compute_stats(
        [b.codes for b in design.blocks],
        [b.Z for b in design.blocks],
        [b.n_levels for b in design.blocks],
        design.X,
        design.y,
        weights,
        transforms=transforms,
        shift=shift,
        inv_scale=inv_scale,
    )
    stats.column_transforms = transforms  # the statistics are those of Z T already
    return build_deviance(stats, design.blocks, reml, transforms), scaling


def identifiability_stage(deviance: ProfiledDeviance, blocks: list, response: str) -> list[str]:
    """Refuse variance parameters the data cannot identify; return notes for weakly identified ones.

    From the statistics alone (:mod:`mixedfx.engine.identifiability`), so that DuckDB and Dask
    fits refuse and warn exactly as in-memory fits do.
    """
    deviance.claim_statistics()
    found = identifiability(deviance.stats, deviance.layouts)
    if found.residual_share <= ZERO_SHARE:
        raise DataError(
            f"The response {response!r} does not vary once the fixed effects are accounted for (it is "
            "constant, or an exact function of them): there is no variance left to estimate."
        )
    notes = []
    for block, outside, within in zip(blocks, found.outside_fixed, found.within_levels):
        for name, share, spread in zip(block.names, outside, within):
            if share <= ZERO_SHARE:
                raise DataError(
                    f"The random effect {name!r} of {block.name!r} is confounded with the fixed effects (it lies "
                    f"in their span, as in y ~ C({block.factor[0]}) + (1 | {block.factor[0]})): its variance is "
                    "not identified. Remove it from the fixed or the random part."
                )
            if spread <= ZERO_SHARE:
                note = (
                    f"The random slope of {name!r} on {block.name!r} is constant within every cluster: it is "
                    "confounded with the random intercept and identified only through differences in variance "
                    "between clusters. Consider dropping it from the random part."
                )
                warnings.warn(note, IdentifiabilityWarning, stacklevel=5)
                notes.append(note)
    return notes


def parameter_bounds(deviance: ProfiledDeviance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lme4's start (``Lambda = I``) and the bounds of theta, block by block, term by term."""
    layouts = deviance.layouts
    start = np.concatenate([lay.start() for lay in layouts]) if layouts else np.zeros(0)
    lower = np.concatenate([lay.lower_bounds() for lay in layouts]) if layouts else np.zeros(0)
    upper = np.concatenate([lay.upper_bounds() for lay in layouts]) if layouts else np.zeros(0)
    return start, lower, upper


def optimise_stage(
    deviance: ProfiledDeviance, start: np.ndarray | None = None, max_iterations: int = 1000
) -> OptimumReport:
    """Stage 3: starting values (moments/ANOVA unless ``start`` is given), bounds and the optimiser."""
    default, lower, upper = parameter_bounds(deviance)
    step_scale = 1.0
    if start is not None:
        theta0 = np.asarray(start, dtype=float)
        if theta0.shape != lower.shape:
            raise OptionError(f"start must have {lower.size} values (one per covariance parameter).")
    else:
        theta0, step_scale = starting_point(deviance, default)
    analytic = deviance.analytic_gradient
    return minimize_deviance(
        _TimedFirstEvaluation(deviance) if deviance.costly_evaluations else deviance,
        theta0,
        lower,
        upper,
        max_iterations=max_iterations,
        value_and_gradient=deviance.deviance_and_gradient if analytic else None,
        step_scale=step_scale,
        value_gradient_information=deviance.deviance_gradient_information if analytic else None,
        mirrors=deviance.mirrors(),
        alternatives=deviance.boundary_alternatives,
        newton_first=start is None and deviance.costly_evaluations,
    )


#: Warn when the first evaluation of a costly deviance predicts more than this many seconds in all.
SLOW_FIT_SECONDS = 120.0

#: Evaluations a costly fit takes from its ANOVA start (Newton steps: 12-13 for two crossed factors).
COSTLY_FIT_EVALUATIONS = 13


class _TimedFirstEvaluation:
    """The deviance, timing its first evaluation: where that predicts a fit of minutes, the user is
    told at once (with the method of moments as the fast alternative) instead of waiting silently."""

    def __init__(self, deviance: ProfiledDeviance):
        self.deviance = deviance
        self.timed = False

    def __call__(self, theta: np.ndarray) -> float:
        if self.timed:
            return self.deviance(theta)
        self.timed = True
        start = time.perf_counter()
        value = self.deviance(theta)
        predicted = COSTLY_FIT_EVALUATIONS * (time.perf_counter() - start)
        if predicted > SLOW_FIT_SECONDS:
            size = self.deviance.stats.rest_ZtZ.shape[0]
            warnings.warn(
                f"This exact fit factorises a dense {size:,} x {size:,} matrix (the crossed factors after the "
                f"first) at each evaluation: about {predicted / 60:.0f} minutes in all on this machine. "
                "method='moments' estimates random intercepts in seconds at any size.",
                SlowFitWarning,
                stacklevel=_caller_stacklevel(),
            )
        return value


#: The package's folder: frames inside it are mixedfx's own, not the caller's.
PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside mixedfx (the user's call),
    however deep in the fit it is raised."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def require_finite(optimum: OptimumReport) -> None:
    """Refuse to make a record when the likelihood could not be evaluated anywhere."""
    if not np.isfinite(optimum.deviance):
        raise DataError(
            "The likelihood cannot be evaluated for these data at any parameter value tried (the "
            "cross-product matrices are not positive definite); check the data for extreme or degenerate values."
        )


def check_stage(record: FitRecord, stacklevel: int = 2) -> FitRecord:
    """Stage 4: warn about non-convergence and boundary (singular) fits: never silently."""
    if not record.optimum.converged:
        warnings.warn(f"Model did not converge: {record.optimum.message}.", ConvergenceWarning, stacklevel=stacklevel)
    if record.singular:
        warnings.warn(
            "Boundary (singular) fit: a variance is estimated as zero or a correlation as +-1; "
            "see fit.varcorr and consider a simpler random-effects structure.",
            SingularFitWarning,
            stacklevel=stacklevel,
        )
    return record


# ---------------------------------------------------------------------------- compositions
def fit_design(design: Design, reml: bool, start: np.ndarray | None = None, max_iterations: int = 1000) -> FitRecord:
    """Stages 2-3 and the record for a design with its rows (no warnings: see :func:`check_stage`)."""
    with single_threaded_blas(design.nobs):
        deviance, scaling = deviance_stage(design, reml)
        notes = identifiability_stage(deviance, design.blocks, design.response_name)
        optimum = optimise_stage(deviance, start, max_iterations)
        require_finite(optimum)
        return FitRecord(
            design, deviance, scaling, optimum, reml, weight_scale=weight_scale(design.weights), notes=notes
        )


def fit_rows(
    spec: ModelSpec,
    frame: pd.DataFrame,
    weights: object = None,
    start: np.ndarray | None = None,
    max_iterations: int = 1000,
) -> FitRecord:
    """Every stage for data in memory and a model without residual structure."""
    design = design_stage(spec, frame, weights)
    return check_stage(fit_design(design, spec.reml, start, max_iterations), stacklevel=4)


def fit_reduced(reduced: ReducedData, reml: bool, covariance: dict[str, str] | None = None) -> FitRecord:
    """Stages 2-5 from a :class:`ReducedData` (no rows needed).

    The statistics are transformed in place (no second copy); every deviance built on them
    restores its own transform before it reads them (see ``ProfiledDeviance.claim_statistics``).
    """
    check_scales(reduced.scaling, reduced.plan.fixed_names, reduced.formula.response)
    blocks = reduced.blocks(covariance)
    transforms = [b.standardising_transform() for b in blocks]
    with single_threaded_blas(reduced.nobs):
        deviance = build_deviance(reduced.stats, blocks, reml, transforms)
        notes = identifiability_stage(deviance, blocks, reduced.formula.response)
        optimum = optimise_stage(deviance)
        require_finite(optimum)
        design = rowless_design(reduced, blocks)
        scale = reduced.weight_scale
        record = FitRecord(design, deviance, reduced.scaling, optimum, reml, weight_scale=scale, notes=notes)
    return check_stage(record, stacklevel=4)


def refit(
    record: FitRecord, y: np.ndarray | None = None, fixed_column: int | None = None, value: float = 0.0
) -> FitRecord:
    """The same design refitted from the optimum: a new response, or one fixed effect held at ``value``.

    Used by parametric-bootstrap replicates and profile intervals; no warnings.
    """
    record.require_likelihood("A refit")
    design = record.design
    if y is not None:
        design = dataclasses.replace(design, y=y)
    if fixed_column is not None:
        keep = [j for j in range(design.X.shape[1]) if j != fixed_column]
        design = dataclasses.replace(
            design,
            y=design.y - value * design.X[:, fixed_column],
            X=design.X[:, keep],
            fixed_names=[design.fixed_names[j] for j in keep],
            X_gram=None if design.X_gram is None else design.X_gram[np.ix_(keep, keep)],
            X_scales=None if design.X_scales is None else design.X_scales[keep],
        )
    with warnings.catch_warnings():  # the original fit has warned already
        warnings.simplefilter("ignore", IdentifiabilityWarning)
        return fit_design(design, record.reml, start=record.theta_engine)
