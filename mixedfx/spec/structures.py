"""Names of the covariance structures of the random effects (Stata's ``covariance()``).

The structures themselves (the map from parameters to ``G``) are numerics and live in
:mod:`mixedfx.engine.covariance`; this module only reads the names users write.
"""

from __future__ import annotations

from ..errors import OptionError

#: Stata and lme4/nlme spellings accepted for each structure.
ALIASES = {
    "identity": "identity",
    "id": "identity",
    "iden": "identity",
    "pdident": "identity",
    "independent": "independent",
    "ind": "independent",
    "indep": "independent",
    "diagonal": "independent",
    "diag": "independent",
    "pddiag": "independent",
    "exchangeable": "exchangeable",
    "exc": "exchangeable",
    "exch": "exchangeable",
    "cs": "exchangeable",
    "pdcompsymm": "exchangeable",
    "unstructured": "unstructured",
    "un": "unstructured",
    "uns": "unstructured",
    "pdsymm": "unstructured",
}

#: Stata's title of each structure in the random-effects table.
TITLES = {
    "identity": "Identity",
    "independent": "Independent",
    "exchangeable": "Exchangeable",
    "unstructured": "Unstructured",
}


def canonical_structure(name: str) -> str:
    """The canonical structure name for a Stata/lme4 spelling; :class:`OptionError` otherwise."""
    key = str(name).strip().lower()
    if key not in ALIASES:
        raise OptionError(
            f"Unknown covariance structure {name!r}; choose identity, independent, exchangeable or unstructured."
        )
    return ALIASES[key]
