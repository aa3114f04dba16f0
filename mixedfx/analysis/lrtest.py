"""Likelihood-ratio tests: random effects against linear regression, and nested fits; AIC/BIC tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as st

from ..results import FitRecord


@dataclass
class LRTest:
    """A likelihood-ratio test: statistic, degrees of freedom, p-value and its kind."""

    statistic: float
    df: int
    pvalue: float
    kind: str  # "chibar2(01)" or "chi2"
    label: str = "LR test vs. linear model"

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


def lrtest(restricted, full) -> LRTest:
    """Likelihood-ratio test of two nested fits (order does not matter).

    Refuses fits on different observations, ML/REML mixes, and REML fits whose fixed
    effects differ (their restricted likelihoods are not comparable).  When the models
    differ in variance components the chi2 p-value is conservative (boundary).
    """
    a, b = sorted([restricted, full], key=lambda f: f.n_params)
    if a.nobs != b.nobs:
        raise ValueError(f"The fits use different observations ({a.nobs} vs {b.nobs}); refit on the same rows.")
    if a.method != b.method:
        raise ValueError("One fit is ML and the other REML; refit both with the same method.")
    if a.method == "REML" and list(a.fixef.index) != list(b.fixef.index):
        raise ValueError(
            "REML fits with different fixed effects cannot be compared by LR test; refit both with method='ml'."
        )
    df = b.n_params - a.n_params
    if df <= 0:
        raise ValueError("The two fits have the same number of parameters: they are not nested.")
    stat = max(2.0 * (b.loglik - a.loglik), 0.0)
    return LRTest(stat, df, float(st.chi2.sf(stat, df)), "chi2", label="LR test (restricted nested in full)")


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
