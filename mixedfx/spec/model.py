"""A model as the user specified it, before any data: formula, method, structures, options.

:func:`model_spec` validates everything that can be validated without data, once, for every
front end (``mixedfx.fit``, Stata syntax, the CLI) and every engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import FormulaError
from .formula import ParsedFormula, parse_formula
from .options import check_missing, is_reml
from .residuals import ResidualSpec, parse_residuals
from .structures import canonical_structure


@dataclass(frozen=True)
class ModelSpec:
    """A validated model specification.

    ``covariance`` maps grouping factors to canonical structure names; ``residuals`` is the
    parsed residual structure (``is_trivial`` for independent homoskedastic errors);
    ``group`` the cluster variable of a model without random effects.
    """

    formula: ParsedFormula
    reml: bool = True
    covariance: dict[str, str] = field(default_factory=dict)
    residuals: ResidualSpec = field(default_factory=ResidualSpec)
    group: str | None = None
    missing: str = "drop"

    @property
    def method(self) -> str:
        return "REML" if self.reml else "ML"

    @property
    def residual_columns(self) -> list[str]:
        """Columns the residual structure needs besides the formula's (time, by, covariate, group)."""
        r = self.residuals
        names = [r.time, r.by, r.variance[1] if r.variance else None, self.group]
        return [n for n in names if n]


def model_spec(
    formula: str | ParsedFormula,
    method: str = "reml",
    covariance: dict[str, str] | None = None,
    residuals: str | None = None,
    variance: tuple[str, str] | None = None,
    group: str | None = None,
    missing: str = "drop",
) -> ModelSpec:
    """Parse and validate a model specification (see :class:`ModelSpec`)."""
    parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    rspec = parse_residuals(residuals, variance)
    if not parsed.random and (rspec.is_trivial or group is None):
        hint = "." if rspec.is_trivial else ", or give group= for a marginal model with this residual structure."
        raise FormulaError(f"The formula {parsed.text!r} has no random-effects term; add one such as (1 | group){hint}")
    structures = {str(k): canonical_structure(v) for k, v in (covariance or {}).items()}
    return ModelSpec(parsed, is_reml(method), structures, rspec, group, check_missing(missing))
