"""mixedfx: linear mixed-effects models for Python, fast and exact."""

from . import datasets
from .autocorrelation import autocorrelation
from .inference import compare, lrtest
from .model import fit
from .prediction import ols_by_group
from .results import MixedResults
from .stata import mixed

__all__ = ["fit", "MixedResults", "datasets", "ols_by_group", "lrtest", "compare", "mixed", "autocorrelation"]
__version__ = "0.1.0"
