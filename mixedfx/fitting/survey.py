"""Pseudo-maximum-likelihood fits with sampling weights at every level (Stata's ``[pw=] ... pweight()``).

The stages of :mod:`mixedfx.fitting.pipeline` with the evaluator
:class:`~mixedfx.engine.pseudo.PseudoLikelihoodDeviance` in place of the profiled deviance:
the design, the checked and scaled weights (:mod:`mixedfx.data.sampling`), the standardised
rows, the optimum of the log pseudo-likelihood, and a record whose fixed-effects covariance
is the linearisation (sandwich) estimator clustered at the top level.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..data.design import Design
from ..data.sampling import sampling_weights
from ..engine.pseudo import PseudoLikelihoodDeviance
from ..engine.stats import apply_standardisation, compute_stats, standardisation
from ..errors import OptionError
from ..results import FitRecord
from ..spec.model import ModelSpec
from .pipeline import check_scales, check_stage, design_stage, identifiability_stage, optimise_stage, require_finite
from .threads import single_threaded_blas


def pseudo_deviance(design: Design, frame: pd.DataFrame, pweights: Mapping[str, str], pwscale: str | None):
    """The pseudo-likelihood evaluator on the standardised rows, and the scaling back to the data's."""
    weights = sampling_weights(design, frame, pweights, pwscale)
    shift, inv_scale, scaling = standardisation(design.X, design.y, design.X_gram, design.X_scales)
    check_scales(scaling, design.fixed_names, design.response_name)
    X, y = apply_standardisation(design.X, design.y, shift, inv_scale)
    blocks = design.blocks
    # unweighted statistics: the identifiability checks and the moment start
    stats = compute_stats([b.codes for b in blocks], [b.Z for b in blocks], [b.n_levels for b in blocks], X, y, None)
    layouts = [b.layout for b in blocks]
    return PseudoLikelihoodDeviance(stats, layouts, X, y, [b.Z for b in blocks], weights), scaling


def fit_pseudo(
    spec: ModelSpec,
    frame: pd.DataFrame,
    pweights: Mapping[str, str],
    pwscale: str | None = None,
    start: np.ndarray | None = None,
    max_iterations: int = 1000,
) -> FitRecord:
    """Every stage of a pseudo-maximum-likelihood fit (ML only: weights do not integrate out beta)."""
    if spec.reml:
        raise OptionError(
            "Sampling weights (pweights) need method='ml': the pseudo-likelihood has no restricted (REML) form "
            "(Stata's mixed refuses reml with pweights too)."
        )
    if not spec.residuals.is_trivial:
        raise OptionError("Sampling weights cannot be combined with a residual structure yet.")
    design = design_stage(spec, frame)
    with single_threaded_blas(design.nobs):
        deviance, scaling = pseudo_deviance(design, frame, pweights, pwscale)
        notes = identifiability_stage(deviance, design.blocks, design.response_name)
        optimum = optimise_stage(deviance, start, max_iterations)
        require_finite(optimum)
        record = FitRecord(design, deviance, scaling, optimum, False, notes=notes)
    return check_stage(record, stacklevel=4)
