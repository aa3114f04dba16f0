"""mixedfx: linear mixed-effects models for Python, fast and exact."""

from . import datasets, plots
from .analysis.explore import autocorrelation, ols_by_group
from .api import MixedResults, compare, fit, fit_reduced, lrtest, mixed

__all__ = [
    "fit",
    "fit_reduced",
    "mixed",
    "MixedResults",
    "datasets",
    "plots",
    "ols_by_group",
    "lrtest",
    "compare",
    "autocorrelation",
]
__version__ = "0.1.0"
