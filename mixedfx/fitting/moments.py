"""Method-of-moments fits of random-intercept models (crossed or nested), for data where any
factorisation is too expensive: ``mixedfx.fit(..., method="moments")``.

Stage 1 (the design) is the pipeline's; the rows are standardised as for the likelihood fits,
reduced by :class:`mixedfx.engine.moments.CrossedDesign` (U-statistics and their exact
expectations, then GLS by conjugate gradients) and recorded in a
:class:`~mixedfx.results.moments.MomentsRecord`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..data.reduce.cells import ReducedCells, check_random_intercepts
from ..engine.moments import CrossedDesign, MomentEstimates, NoResidualVariation
from ..engine.stats import apply_standardisation, standardisation
from ..errors import DataError, OptionError, SingularFitWarning
from ..results.moments import MomentsRecord
from ..spec.model import ModelSpec
from .pipeline import check_scales, design_stage


def check_identified(C: np.ndarray, names: list[str]) -> None:
    """Refuse a moment system that does not separate the components (same levels under two names, ...)."""
    scale = np.abs(C).max(axis=1, keepdims=True)
    scale[scale == 0] = 1.0
    if np.linalg.matrix_rank(C / scale, tol=1e-10) == C.shape[0]:
        return
    raise DataError(
        "The method-of-moments equations do not separate the variance components of "
        f"{', '.join(names)} and the residual (two factors with the same levels, or a factor whose levels add "
        "nothing within the others): drop or merge a factor."
    )


def fit_moments(spec: ModelSpec, frame: pd.DataFrame, seed: int = 0) -> MomentsRecord:
    """Every stage of a method-of-moments fit; warns when a component is truncated at zero."""
    if not spec.residuals.is_trivial:
        raise OptionError("method='moments' cannot be combined with a residual structure.")
    design = design_stage(spec, frame)
    check_random_intercepts([(b.name, b.names) for b in design.blocks])
    shift, inv_scale, scaling = standardisation(design.X, design.y, design.X_gram, design.X_scales)
    check_scales(scaling, design.fixed_names, design.response_name)
    X, y = apply_standardisation(design.X, design.y, shift, inv_scale)
    engine = CrossedDesign(X, [b.codes for b in design.blocks], [b.n_levels for b in design.blocks])
    return MomentsRecord(design, engine, _estimate(engine, y, design.blocks, design.response_name), scaling, seed)


def fit_moments_cells(reduced: ReducedCells, seed: int = 0) -> MomentsRecord:
    """A method-of-moments fit from data reduced to cells out of core (DuckDB, Dask): the same
    estimator on the cells' sums (:mod:`mixedfx.data.reduce.cells`)."""
    check_scales(reduced.scaling, reduced.plan.fixed_names, reduced.formula.response)
    design = reduced.design()
    levels = [len(reduced.levels[name]) for name in reduced.factors]
    engine = CrossedDesign(reduced.X, reduced.codes, levels, reduced.cells)
    return MomentsRecord(
        design, engine, _estimate(engine, reduced.response, design.blocks, design.response_name), reduced.scaling, seed
    )


def _estimate(engine: CrossedDesign, response, blocks, response_name: str) -> MomentEstimates:
    """The estimates, after the identification check; warns when a component is truncated at zero."""
    check_identified(engine.C, [b.name for b in blocks])
    try:
        estimates = engine.estimate(response)
    except NoResidualVariation as exc:
        raise DataError(
            f"The response {response_name!r} does not vary once the fixed effects are accounted for (it is "
            "constant, or an exact function of them): there is no variance left to estimate."
        ) from exc
    except np.linalg.LinAlgError as exc:
        raise DataError(f"The method-of-moments fit failed: {exc}.") from exc
    for block, cut in zip(blocks, estimates.truncated):
        if cut:
            warnings.warn(
                f"The moment estimate of var({block.name}) was negative and is set to zero.",
                SingularFitWarning,
                stacklevel=5,
            )
    return estimates
