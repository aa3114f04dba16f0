"""mixedfx: linear mixed-effects models for Python, fast and exact."""

from . import datasets
from .model import fit
from .results import MixedResults

__all__ = ["fit", "MixedResults", "datasets"]
__version__ = "0.1.0"
