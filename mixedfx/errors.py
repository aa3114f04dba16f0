"""Exceptions and warnings raised by mixedfx.

Every user-facing problem is reported with one of these, with a message that names the
column, term or option at fault, so that the CLI can print it on one line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MixedFXError(Exception):
    """Base class for all errors mixedfx raises on bad input."""


class FormulaError(MixedFXError, ValueError):
    """The model formula does not parse or names something that is not there."""


class DataError(MixedFXError, ValueError):
    """The data cannot support the requested model (bad column, too few rows, ...)."""


class OptionError(MixedFXError, ValueError):
    """An option or argument has an invalid value."""


class ConvergenceWarning(UserWarning):
    """The optimiser stopped without meeting its convergence criteria."""


class SingularFitWarning(UserWarning):
    """A variance component is on the boundary (zero variance or correlation of +-1)."""


class IdentifiabilityWarning(UserWarning):
    """A random-effects term is only weakly identified by the design."""


class RankDeficiencyWarning(UserWarning):
    """Fixed-effect columns were dropped because they are linear combinations of others."""


class DataWarning(UserWarning):
    """The data are usable but not as the model expects (non-integer counts, ...)."""


class SeparationWarning(UserWarning):
    """A fixed effect of a binary or count model diverges: the data separate the outcomes."""


class SlowFitWarning(UserWarning):
    """The exact fit will take long (minutes or more); a faster estimator is named."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return a ' Did you mean ...?' hint for a misspelt ``name``, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def caret(text: str, position: int) -> str:
    """Show ``text`` with a caret under ``position`` (for formula syntax errors)."""
    return f"\n  {text}\n  {' ' * max(position, 0)}^"
