"""Options of a fit, validated once where they enter: method, missing values, engine."""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from ..errors import OptionError

ENGINES = ("auto", "memory", "duckdb", "dask")


def is_reml(method: str) -> bool:
    """True for REML, False for ML; :class:`OptionError` for anything else."""
    key = str(method).strip().lower()
    if key in ("reml", "restricted"):
        return True
    if key in ("ml", "mle"):
        return False
    raise OptionError(f"Unknown method {method!r}: use 'reml' or 'ml'.")


def check_missing(missing: str) -> str:
    """``"drop"`` (listwise deletion, reported) or ``"raise"``."""
    if missing not in ("drop", "raise"):
        raise OptionError(f"missing must be 'drop' or 'raise', not {missing!r}.")
    return missing


def check_engine(engine: str) -> str:
    """One of :data:`ENGINES`."""
    if engine not in ENGINES:
        raise OptionError(f"Unknown engine {engine!r}: use 'memory', 'duckdb' or 'dask'.")
    return engine


#: Confidence levels are percentages, as in Stata (``level(95)``): the range Stata accepts.
LEVEL_RANGE = (10.0, 99.99)


def confidence_level(level: float) -> float:
    """The coverage (a fraction) of a confidence level given in percent; :class:`OptionError` otherwise.

    One unit everywhere (Python API, CLI, Stata syntax): ``level=95`` is a 95% interval.  A
    fraction such as 0.95 is refused rather than read as 0.95% (or silently as 95%).
    """
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise OptionError(f"level must be a percentage such as 95, not {level!r}.") from None
    if 0 < value < 1:
        raise OptionError(f"level is a percentage, as in Stata: write level={value * 100:g} for {value:.0%} intervals.")
    low, high = LEVEL_RANGE
    if not low <= value <= high:
        raise OptionError(f"level must be between {low:g} and {high:g} (percent), not {level!r}.")
    return value / 100.0


def two_sided_quantile(level: float) -> float:
    """The standard normal quantile of a two-sided interval at ``level`` percent (1.96 for 95)."""
    return float(norm.ppf(0.5 + confidence_level(level) / 2))


#: Significant digits a table cell can show: Stata's ``%9.0g`` holds at most 7 in its 8 characters.
DIGITS_RANGE = (1, 7)


def display_digits(digits: int) -> int:
    """``digits`` (significant digits of printed numbers) checked: a whole number from 1 to 7."""
    low, high = DIGITS_RANGE
    if isinstance(digits, bool) or not isinstance(digits, (int, np.integer)) or not low <= digits <= high:
        raise OptionError(f"digits must be a whole number from {low} to {high} (significant digits), not {digits!r}.")
    return int(digits)
