"""mixedfx: linear mixed-effects models for Python, fast and exact."""

from . import datasets
from .model import fit
from .prediction import ols_by_group
from .results import MixedResults

__all__ = ["fit", "MixedResults", "datasets", "ols_by_group"]
__version__ = "0.1.0"
