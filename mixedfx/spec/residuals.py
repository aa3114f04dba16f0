"""Residual (R-side) structures as users write them: Stata's ``residuals()`` syntax.

``"TYPE[ K][, t(VAR)] [by(VAR)]"`` with TYPE one of independent, exchangeable, ar1, ma1,
toeplitz K, banded K, unstructured, exponential; and variance functions ``("power", VAR)``
or ``("exp", VAR)``.  The numerics of each structure are in :mod:`mixedfx.engine.rside`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import OptionError

CORRELATED = ("exchangeable", "ar1", "exponential", "ma1", "toeplitz", "banded", "unstructured")
TITLES = {
    "independent": "Independent",
    "exchangeable": "Exchangeable",
    "ar1": "AR(1)",
    "exponential": "Exponential",
    "ma1": "MA(1)",
    "toeplitz": "Toeplitz",
    "banded": "Banded",
    "unstructured": "Unstructured",
}


@dataclass
class ResidualSpec:
    """A parsed ``residuals()`` specification."""

    kind: str = "independent"
    order: int = 0  # K of toeplitz / banded
    time: str | None = None
    by: str | None = None
    variance: tuple[str, str] | None = None  # ("power" | "exp", covariate)

    @property
    def is_trivial(self) -> bool:
        return self.kind == "independent" and self.by is None and self.variance is None


def parse_residuals(text: str | None, variance: tuple[str, str] | None = None) -> ResidualSpec:
    """Parse Stata's ``"TYPE[ K][, t(VAR)] [by(VAR)]"`` (e.g. ``"ar1, t(age)"``, ``"toeplitz 2, t(visit)"``)."""
    spec = ResidualSpec(variance=_check_variance(variance))
    if text is None or not str(text).strip():
        return spec
    body, _, opts = str(text).partition(",")
    words = body.split()
    if not words:
        raise OptionError(f"residuals({text!r}) needs a type such as 'ar1' or 'exchangeable'.")
    kind = words[0].lower()
    aliases = {
        "ind": "independent",
        "exc": "exchangeable",
        "exch": "exchangeable",
        "ar": "ar1",
        "exp": "exponential",
        "ma": "ma1",
        "toep": "toeplitz",
        "band": "banded",
        "un": "unstructured",
        "uns": "unstructured",
    }
    kind = aliases.get(kind, kind)
    rest = words[1:]
    if kind in ("ar1", "ma1") and rest == ["1"]:
        rest = []
    if kind not in ("independent",) + CORRELATED:
        raise OptionError(
            f"Unknown residual structure {words[0]!r}: use independent, exchangeable, ar1, ma1, toeplitz K, "
            "banded K, unstructured or exponential."
        )
    spec.kind = kind
    if kind in ("toeplitz", "banded"):
        if len(rest) != 1 or not rest[0].isdigit() or int(rest[0]) < 1:
            raise OptionError(f"{kind} needs its order, e.g. '{kind} 2'.")
        spec.order = int(rest[0])
    elif rest:
        raise OptionError(f"Unexpected {' '.join(rest)!r} after {kind!r} in residuals().")
    for name, value in re.findall(r"([A-Za-z_]+)\s*\(\s*([^)]*?)\s*\)", opts):
        if name.lower() == "t":
            spec.time = value
        elif name.lower() == "by":
            spec.by = value
        else:
            raise OptionError(f"Unknown residuals() option {name!r}: use t(VAR) and by(VAR).")
    leftover = re.sub(r"([A-Za-z_]+)\s*\(\s*([^)]*?)\s*\)", "", opts).strip()
    if leftover:
        raise OptionError(f"Cannot read {leftover!r} in residuals({text!r}).")
    if kind == "exponential" and spec.time is None:
        raise OptionError("The exponential structure needs a time variable: 'exponential, t(VAR)'.")
    return spec


def _check_variance(variance: tuple[str, str] | None) -> tuple[str, str] | None:
    if variance is None:
        return None
    if not (isinstance(variance, (tuple, list)) and len(variance) == 2 and variance[0] in ("power", "exp")):
        raise OptionError("variance must be ('power', column) or ('exp', column).")
    return (variance[0], str(variance[1]))
