"""Likelihood-ratio tests: random effects against linear regression, and nested fits; AIC/BIC tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as st

from ..errors import OptionError
from ..results import FitRecord


@dataclass
class LRTest:
    """A likelihood-ratio test: statistic, degrees of freedom, p-value and its kind."""

    statistic: float
    df: int
    pvalue: float
    kind: str  # "chibar2(01)" or "chi2"
    label: str = "LR test vs. linear model"

    def __post_init__(self) -> None:
        self.statistic, self.df, self.pvalue = float(self.statistic), int(self.df), float(self.pvalue)

    def describe(self) -> str:
        """One line as Stata prints it."""
        if self.kind == "chibar2(01)":
            return f"{self.label}: chibar2(01) = {self.statistic:.2f}   Prob >= chibar2 = {self.pvalue:.4f}"
        return f"{self.label}: chi2({self.df}) = {self.statistic:.2f}   Prob > chi2 = {self.pvalue:.4f}"


def lr_test_vs_linear(result: FitRecord) -> LRTest:
    """LR test of all random effects against the linear regression with the same fixed effects.

    With one variance component the null distribution is the 50:50 mixture of chi2(0) and
    chi2(1) (``chibar2(01)``); with more, chi2(k) is conservative (Stata notes this).
    """
    result.require_likelihood("The LR test against linear regression")
    dev = result.deviance
    zero = np.zeros_like(result.theta_engine)
    rside = result.rside
    if rside is None:
        dev0 = result.deviance_to_original_scale(dev.solve(zero).deviance)
        k = result.theta.size
    else:  # the linear model: no random effects and R = I
        dev0 = result.deviance_to_original_scale(rside.model.linear_deviance())
        k = result.theta.size + rside.u.size
    stat = max(dev0 - result.minus_two_loglik, 0.0)
    if k == 1:
        return LRTest(stat, 1, 0.5 * st.chi2.sf(stat, 1) if stat > 0 else 1.0, "chibar2(01)")
    return LRTest(stat, k, st.chi2.sf(stat, k), "chi2")


#: Covariance structures nested in each (a restricted structure is a special case of these).
NESTED_STRUCTURES = {
    "identity": {"identity", "independent", "exchangeable", "unstructured"},
    "independent": {"independent", "unstructured"},
    "exchangeable": {"exchangeable", "unstructured"},
    "unstructured": {"unstructured"},
}


def _same_data(a: FitRecord, b: FitRecord) -> None:
    if a.design.response_name != b.design.response_name:
        raise OptionError(
            f"The fits model different responses ({a.design.response_name!r} and {b.design.response_name!r}): "
            "they are not nested."
        )
    if a.nobs != b.nobs:
        raise OptionError(f"The fits use different observations ({a.nobs} vs {b.nobs}); refit on the same rows.")
    if a.has_rows and b.has_rows:
        same_rows = a.design.row_index.equals(b.design.row_index)
        if not same_rows or not np.array_equal(a.design.y, b.design.y):
            raise OptionError("The fits use different data (rows or response values differ); refit on the same data.")


def _effects(record: FitRecord) -> dict[str, dict[str, str]]:
    """Per grouping factor: random effect name -> the structure of its term."""
    return {b.name: {n: t.structure.kind for t in b.terms for n in t.names} for b in record.design.blocks}


def _check_nested(a: FitRecord, b: FitRecord) -> None:
    """Refuse a pair unless ``a``'s fixed effects, random effects and structures are special cases of ``b``'s."""
    extra_fixed = [n for n in a.fixef.index if n not in b.fixef.index]
    if extra_fixed:
        raise OptionError(
            f"The smaller model's fixed effects {extra_fixed} are not in the larger model: the fits are not nested."
        )
    small, large = _effects(a), _effects(b)
    for group, effects in small.items():
        if group not in large:
            raise OptionError(f"The smaller model has random effects on {group!r}, the larger none: not nested.")
        for name, kind in effects.items():
            if name not in large[group]:
                raise OptionError(
                    f"The smaller model's random effect {name!r} of {group!r} is not in the larger model: not nested."
                )
            if large[group][name] not in NESTED_STRUCTURES[kind]:
                raise OptionError(
                    f"The {kind} covariance of {group!r} is not a special case of the larger model's "
                    f"{large[group][name]}: the fits are not nested."
                )
    if a.rside is not None and (b.rside is None or b.rside.spec != a.rside.spec):
        raise OptionError("The fits have different residual structures that do not nest; compare them by AIC/BIC.")


def lrtest(restricted: FitRecord, full: FitRecord) -> LRTest:
    """Likelihood-ratio test of two nested fits (order does not matter).

    Refuses fits that are not nested: different responses or data, fixed or random effects
    of the smaller model missing from the larger one, covariance structures that are not
    special cases, residual structures that differ; also ML/REML mixes, and REML fits whose
    fixed effects differ (their restricted likelihoods are not comparable).  When the models
    differ in variance components the chi2 p-value is conservative (boundary).
    """
    restricted.require_likelihood("A likelihood-ratio test")
    full.require_likelihood("A likelihood-ratio test")
    a, b = sorted([restricted, full], key=lambda f: f.n_params)
    _same_data(a, b)
    if a.method != b.method:
        raise OptionError("One fit is ML and the other REML; refit both with the same method.")
    if a.method == "REML" and list(a.fixef.index) != list(b.fixef.index):
        raise OptionError(
            "REML fits with different fixed effects cannot be compared by LR test; refit both with method='ml'."
        )
    df = b.n_params - a.n_params
    if df <= 0:
        raise OptionError("The two fits have the same number of parameters: they are not nested.")
    _check_nested(a, b)
    stat = max(2.0 * (b.loglik - a.loglik), 0.0)
    boundary = _effects(a) != _effects(b) or (a.rside is None) != (b.rside is None)
    label = "LR test (restricted nested in full)" + (
        "; conservative: variance components on the boundary" if boundary else ""
    )
    return LRTest(stat, df, float(st.chi2.sf(stat, df)), "chi2", label=label)


def compare(*fits, names: list[str] | None = None) -> pd.DataFrame:
    """AIC/BIC table of several fits: parameters, log-likelihood, AIC, BIC (Stata ``estat ic``)."""
    names = names or [f"model{i + 1}" for i in range(len(fits))]
    return pd.DataFrame(
        {
            "nobs": [f.nobs for f in fits],
            "method": [f.method for f in fits],
            "df": [f.n_params for f in fits],
            "loglik": [f.loglik for f in fits],
            "aic": [f.aic for f in fits],
            "bic": [f.bic for f in fits],
        },
        index=pd.Index(names, name="model"),
    )
