"""mixedfx: linear and generalized linear mixed-effects models for Python, fast and exact."""

from . import datasets, plots
from .analysis.explore import autocorrelation, ols_by_group
from .api import MixedResults, MomentsResults, compare, fit, fit_reduced, lrtest, melogit, mepoisson, mixed
from .glmm import GLMMResults, fit_glmm

__all__ = [
    "fit",
    "fit_reduced",
    "mixed",
    "MixedResults",
    "MomentsResults",
    "GLMMResults",
    "fit_glmm",
    "melogit",
    "mepoisson",
    "datasets",
    "plots",
    "ols_by_group",
    "lrtest",
    "compare",
    "autocorrelation",
]
__version__ = "0.1.0"
