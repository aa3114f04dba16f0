"""Options of a fit, validated once where they enter: method, missing values, engine."""

from __future__ import annotations

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
