"""Choice of the deviance evaluator for a model's statistics."""

from __future__ import annotations

import numpy as np

from .blocked import BlockedDeviance
from .covariance import BlockLayout
from .deviance import ProfiledDeviance
from .single import SingleFactorDeviance
from .stats import SufficientStats


def make_deviance(
    stats: SufficientStats,
    layouts: list[BlockLayout],
    reml: bool,
    column_transforms: list[np.ndarray] | None = None,
) -> ProfiledDeviance:
    """The evaluator for ``stats``: chunked with an analytic gradient for one grouping factor,
    blocked elimination for crossed or nested factors."""
    evaluator = SingleFactorDeviance if stats.rest_Z1 is None else BlockedDeviance
    return evaluator(stats, layouts, reml, column_transforms)
