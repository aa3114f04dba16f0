"""mixedfx: linear mixed-effects models for Python, fast and exact."""

from .model import fit
from .results import MixedResults

__all__ = ["fit", "MixedResults"]
__version__ = "0.1.0"
