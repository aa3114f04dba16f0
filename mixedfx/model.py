"""Fitting a linear mixed model: ``mixedfx.fit(formula, data, method=...)``.

The steps: parse the formula, build the design (listwise deletion, X, Z), standardise X
and y, reduce the rows to sufficient statistics, maximise the profiled (restricted)
log-likelihood over the relative covariance parameters, and wrap the optimum in a
:class:`~mixedfx.results.MixedResults`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .design import Design, build_design
from .errors import ConvergenceWarning, FormulaError, OptionError, SingularFitWarning
from .formula import parse_formula
from .io import read_data
from .likelihood import ProfiledDeviance
from .optimize import minimize_deviance
from .results import MixedResults
from .rside import parse_residuals
from .start import starting_point
from .stats import compute_stats, standardisation
from .threads import single_threaded_blas


def _check_method(method: str) -> bool:
    """True for REML, False for ML; raises on anything else."""
    key = str(method).strip().lower()
    if key in ("reml", "restricted"):
        return True
    if key in ("ml", "mle"):
        return False
    raise OptionError(f"Unknown method {method!r}: use 'reml' or 'ml'.")


def _choose_engine(engine: str, data: object) -> str:
    """Resolve ``engine="auto"`` and validate the name."""
    if engine not in ("auto", "memory", "duckdb", "dask"):
        raise OptionError(f"Unknown engine {engine!r}: use 'memory', 'duckdb' or 'dask'.")
    if engine == "auto":
        return "dask" if type(data).__module__.startswith("dask") else "memory"
    return engine


def _fit_out_of_memory(engine, formula, data, method, weights, covariance) -> MixedResults:
    """Reduce with DuckDB or Dask, then fit from the sufficient statistics."""
    from .reduce import fit_reduced, reduce_dask, reduce_duckdb

    _check_method(method)
    if weights is not None and not isinstance(weights, str):
        raise OptionError(f"With engine={engine!r}, weights must name a column.")
    reduced = (
        reduce_duckdb(formula, data, weights=weights)
        if engine == "duckdb"
        else reduce_dask(formula, data, weights=weights)
    )
    with single_threaded_blas(reduced.nobs):
        return fit_reduced(reduced, method=method, covariance=covariance)


def build_deviance(design: Design, reml: bool) -> tuple[ProfiledDeviance, object]:
    """Standardise the design, reduce it to sufficient statistics and return the deviance."""
    shift, inv_scale, scaling = standardisation(design.X, design.y, design.X_gram)
    transforms = [b.standardising_transform() for b in design.blocks]
    stats = compute_stats(
        [b.codes for b in design.blocks],
        [b.Z for b in design.blocks],
        [b.n_levels for b in design.blocks],
        design.X,
        design.y,
        design.weights,
        transforms=transforms,
        shift=shift,
        inv_scale=inv_scale,
    )
    stats.column_transforms = transforms  # the statistics are those of Z T already
    factors = [(b.n_params, b.factor_matrix, b.factor_jacobian) for b in design.blocks]
    return ProfiledDeviance(stats, factors, reml, column_transforms=transforms), scaling


def theta_bounds(design: Design) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, lower and upper bounds of theta, block by block, term by term."""
    structures = [t.structure for b in design.blocks for t in b.terms]
    start = np.concatenate([s.start() for s in structures])
    lower = np.concatenate([s.lower_bounds() for s in structures])
    upper = np.concatenate([s.upper_bounds() for s in structures])
    return start, lower, upper


def fit(
    formula: str,
    data: pd.DataFrame | str | Path,
    method: str = "reml",
    weights: str | np.ndarray | None = None,
    covariance: dict[str, str] | None = None,
    missing: str = "drop",
    start: np.ndarray | None = None,
    max_iterations: int = 1000,
    engine: str = "auto",
    residuals: str | None = None,
    variance: tuple[str, str] | None = None,
    group: str | None = None,
) -> MixedResults:
    """Fit a linear mixed model by REML (default) or ML.

    Parameters
    ----------
    formula:
        lme4 syntax, e.g. ``"gcse ~ lrt + (1 + lrt | school)"``.
    data:
        a DataFrame, or the path of a ``.csv``, ``.dta`` or ``.parquet`` file.
    method:
        ``"reml"`` or ``"ml"``.
    weights:
        column name or array of positive weights ``w``: residual variance ``sigma^2 / w``.
    covariance:
        covariance structure per grouping factor, overriding the formula's
        (``{"school": "exchangeable"}``): identity, independent, exchangeable, unstructured.
    missing:
        ``"drop"`` (listwise deletion, reported) or ``"raise"``.
    start:
        starting values of theta (default: for one grouping factor the moment estimate of
        :mod:`mixedfx.start`, otherwise relative covariance factor = identity, as lme4).
    max_iterations:
        iteration limit of the optimiser; a fit that reaches it is reported as not converged.
    engine:
        ``"memory"`` (rows in memory), ``"duckdb"`` (Parquet/CSV files, a glob or a directory,
        reduced in SQL without loading the rows), ``"dask"`` (a Dask DataFrame, reduced by
        map-reduce over its partitions) or ``"auto"`` (dask for a Dask DataFrame, else memory).
        The out-of-memory engines need one grouping factor or nested ones.
    residuals:
        residual covariance within clusters, Stata's ``residuals()`` syntax:
        ``"ar1, t(Days)"``, ``"exchangeable"``, ``"toeplitz 2, t(visit)"``,
        ``"independent, by(sex)"``, ``"exponential, t(age)"`` (see :mod:`mixedfx.rside`).
    variance:
        a variance function of a covariate, ``("power", "x")`` (SD times ``|x|^delta``) or
        ``("exp", "x")`` (SD times ``exp(delta x)``).
    group:
        the cluster variable of the residual structure for a model without random effects
        (a marginal/GLS model, e.g. ``fit("y ~ x", data, residuals="unstructured", group="id")``).
    """
    engine = _choose_engine(engine, data)
    if engine != "memory" and (residuals is not None or variance is not None):
        raise OptionError(f"Residual structures need the rows in memory; use engine='memory', not {engine!r}.")
    if engine != "memory":
        return _fit_out_of_memory(engine, formula, data, method, weights, covariance)
    reml = _check_method(method)
    if missing not in ("drop", "raise"):
        raise OptionError(f"missing must be 'drop' or 'raise', not {missing!r}.")
    frame = read_data(data)
    parsed = parse_formula(formula)
    rspec = parse_residuals(residuals, variance)
    if not parsed.random and (rspec.is_trivial or group is None):
        hint = "." if rspec.is_trivial else ", or give group= for a marginal model with this residual structure."
        raise FormulaError(f"The formula {formula!r} has no random-effects term; add one such as (1 | group){hint}")
    if not rspec.is_trivial:
        from .rside_fit import fit_rside

        return fit_rside(parsed, frame, rspec, reml, covariance, missing, group, max_iterations, weights)
    with single_threaded_blas(len(frame)):
        result = _fit_design(parsed, frame, reml, weights, covariance, missing, start, max_iterations)
    warn_fit_problems(result, stacklevel=3)
    return result


def _fit_design(parsed, frame, reml, weights, covariance, missing, start, max_iterations) -> MixedResults:
    """Design, sufficient statistics, starting point and optimum of an in-memory fit."""
    design = build_design(parsed, frame, weights=weights, covariance=covariance, missing=missing)
    deviance, scaling = build_deviance(design, reml)
    theta0, lower, upper = theta_bounds(design)
    step_scale = 1.0
    if start is not None:
        theta0 = np.asarray(start, dtype=float)
        if theta0.shape != lower.shape:
            raise OptionError(f"start must have {lower.size} values (one per covariance parameter).")
    else:
        theta0, step_scale = starting_point(deviance, design.blocks, theta0)
    gradient = deviance.deviance_and_gradient if deviance.single_factor else None
    information = deviance.deviance_gradient_information if deviance.single_factor else None
    report = minimize_deviance(
        deviance,
        theta0,
        lower,
        upper,
        max_iterations=max_iterations,
        value_and_gradient=gradient,
        step_scale=step_scale,
        value_gradient_information=information,
    )
    return MixedResults(design, deviance, scaling, report, reml)


def warn_fit_problems(result: MixedResults, stacklevel: int = 2) -> None:
    """Warn about non-convergence and boundary (singular) fits: never silently."""
    if not result.optimum.converged:
        warnings.warn(f"Model did not converge: {result.optimum.message}.", ConvergenceWarning, stacklevel=stacklevel)
    if result.singular:
        warnings.warn(
            "Boundary (singular) fit: a variance is estimated as zero or a correlation as +-1; "
            "see fit.varcorr and consider a simpler random-effects structure.",
            SingularFitWarning,
            stacklevel=stacklevel,
        )
