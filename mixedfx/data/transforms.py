"""Transforms a formula may call besides formulaic's own: R's functions under mixedfx's names.

They are stateless or carry their state the way formulaic's stateful transforms do, so that
predictions on new data reuse the fitted state.  :func:`formula_context` is the namespace
every formula is evaluated in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from formulaic.transforms import TRANSFORMS as FORMULAIC_TRANSFORMS

from ..spec.expressions import evaluation_context


def as_numeric(values) -> np.ndarray:
    """R's ``as.numeric``: numbers as floats, a factor as its level codes 1..k (as R does)."""
    series = pd.Series(values)
    if isinstance(series.dtype, pd.CategoricalDtype):
        return series.cat.codes.to_numpy(dtype=float) + 1.0
    return pd.to_numeric(series, errors="raise").to_numpy(dtype=float)


#: mixedfx's transforms by the names formulas call them.
TRANSFORMS = {"as_numeric": as_numeric, "factor": FORMULAIC_TRANSFORMS["C"]}


def formula_context() -> dict:
    """The namespace formulas are evaluated in: restricted numpy, formulaic's transforms, mixedfx's."""
    return evaluation_context(extra=TRANSFORMS)
