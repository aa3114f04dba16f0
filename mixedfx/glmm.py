"""Generalized linear mixed models in the public interface: :func:`fit_glmm`, :func:`melogit`,
:func:`mepoisson` and the fitted-model facade :class:`GLMMResults`.

``mixedfx.fit(formula, data, family="binomial")`` and ``mixedfx.mixed("melogit ...")`` come here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .analysis import glmm as inference
from .analysis import margins
from .analysis.lrtest import LRTest
from .data.io import read_data
from .fitting.glmm import fit_glmm_rows
from .present import glmm_text
from .results.glmm import GLMMRecord
from .spec.formula import parse_formula
from .spec.stata import stata_coefficient_name


class GLMMSummary(str):
    """The Stata-style summary text; a REPL shows it as the table itself."""

    def __repr__(self) -> str:
        return str(self)


class GLMMResults:
    """A fitted generalized linear mixed model (binomial or Poisson).

    Attributes: ``fixef``/``params``, ``se``/``bse``, ``vcov``, ``loglik``/``llf``
    (constants included), ``aic``, ``bic``, ``theta`` (lme4's), ``varcorr``, ``G``, ``nobs``,
    ``ngroups``, ``group_sizes``, ``converged``, ``singular``, ``family``, ``link``, ``nagq``
    and ``record`` (the :class:`~mixedfx.results.glmm.GLMMRecord`).
    """

    def __init__(self, record: GLMMRecord):
        self.record = record
        #: Printed coefficients exponentiated (odds ratios, IRRs): Stata's ``or``/``irr``.
        self.display_eform = False
        self.display_level: float = 95
        self.display_scale = "var"
        self.stata_command: str | None = None

    # ------------------------------------------------------------------ estimates
    fixef = property(lambda self: self.record.fixef)
    params = fixef
    se = property(lambda self: self.record.se)
    bse = se
    vcov = property(lambda self: self.record.vcov)
    loglik = property(lambda self: self.record.loglik)
    llf = loglik
    aic = property(lambda self: self.record.aic)
    bic = property(lambda self: self.record.bic)
    theta = property(lambda self: self.record.theta)
    varcorr = property(lambda self: self.record.varcorr)
    G = property(lambda self: self.record.G)
    nobs = property(lambda self: self.record.nobs)
    n_missing = property(lambda self: self.record.n_missing)
    ngroups = property(lambda self: self.record.ngroups)
    group_sizes = property(lambda self: self.record.group_sizes)
    converged = property(lambda self: self.record.converged)
    singular = property(lambda self: self.record.singular)
    nagq = property(lambda self: self.record.nagq)
    formula = property(lambda self: self.record.formula)

    @property
    def family(self) -> str:
        return self.record.family_name

    @property
    def link(self) -> str:
        return self.record.family.link

    # ------------------------------------------------------------------ tables
    def summary(
        self, level: float | None = None, eform: bool | None = None, scale: str | None = None, digits: int = 7
    ) -> GLMMSummary:
        """Stata's melogit/mepoisson output (``eform=True``: odds ratios or IRRs; ``scale="sd"``)."""
        return GLMMSummary(
            glmm_text.summary_text(
                self.record,
                self.display_level if level is None else level,
                self.display_eform if eform is None else eform,
                scale or self.display_scale,
                digits,
            )
        )

    def __str__(self) -> str:
        return str(self.summary())

    def coef_table(self, level: float = 95, eform: bool = False) -> pd.DataFrame:
        """Estimate, SE, z, p and CI of the fixed effects (exponentiated with ``eform``)."""
        return inference.coef_table(self.record, level, eform)

    def re_table(self, level: float = 95, scale: str = "var") -> pd.DataFrame:
        """Random-effects parameters with SEs and CIs."""
        return inference.varcomp_table(self.record, level, scale)

    def lrtest_vs_glm(self) -> LRTest:
        """LR test of the random effects against the model without them."""
        return inference.lr_test_vs_glm(self.record)

    def icc(self) -> pd.DataFrame:
        """Latent-response ICC of each random intercept (binomial models)."""
        return inference.latent_icc(self.record)

    def ranef(self) -> dict[str, pd.DataFrame]:
        """Conditional modes with conditional SDs, per grouping factor."""
        return inference.ranef(self.record)

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        kind: str = "response",
        level: str = "conditional",
        interval: bool = False,
        ci_level: float = 95,
    ) -> pd.DataFrame:
        """Predictions: ``kind`` link or response; ``level`` conditional, fixed or marginal."""
        return inference.predict(self.record, newdata, kind, level, interval, ci_level)

    def margins(
        self,
        specs: str | list[str] | None = None,
        at: dict | None = None,
        over: str | list[str] | None = None,
        dydx: str | list[str] | None = None,
        predict: str = "mu",
        level: float = 95,
        derive=None,
    ) -> margins.Margins:
        """Predictive margins or average marginal effects of ``mu`` (random effects at zero; Stata's
        ``margins, predict(mu fixedonly)``), of ``"marginal"`` (the population-averaged mean, random
        intercepts only) or of ``xb``, with delta-method SEs in beta (see ``MixedResults.margins``)."""
        return margins.margins_table(self.record, specs, at, over, dydx, predict, level, derive)

    def emmeans(
        self,
        specs: str | list[str],
        at: dict | None = None,
        weights: str = "equal",
        predict: str = "mu",
        level: float = 95,
        derive=None,
    ) -> margins.Margins:
        """Estimated marginal means of ``mu`` (emmeans' ``type = "response"``, random effects at zero) or ``xb``."""
        prediction = margins.prediction_for(self.record, predict)
        return margins.estimated_marginal_means(self.record, specs, at, weights, prediction, level, derive)

    def postestimation(self, command: str) -> margins.Margins:
        """Stata's ``margins``/``contrast``/``pwcompare`` after the fit (``predict(mu)`` by default)."""
        return margins.stata_postestimation(self.record, command)

    def to_dict(self, ranef: bool = False) -> dict:
        """JSON-ready dictionary (lme4's summary layout)."""
        return glmm_text.results_dict(self.record, ranef=ranef)


def fit_glmm(
    formula: str,
    data: pd.DataFrame | str | Path,
    family: str = "binomial",
    link: str | None = None,
    nagq: int = 1,
    weights: str | np.ndarray | None = None,
    missing: str = "drop",
    covariance: dict[str, str] | None = None,
) -> GLMMResults:
    """Fit a generalized linear mixed model by Laplace (``nagq=1``), adaptive quadrature
    (``nagq > 1``, one random intercept) or lme4's fast ``nagq=0``.

    ``family``: ``"binomial"`` (0/1, a two-level text column, proportions with ``weights=``
    trials, or ``cbind(successes, failures)``), ``"bernoulli"`` (0/1 only) or ``"poisson"``
    (counts; ``offset(log(exposure))`` for exposure). ``link``: logit (default), probit or
    cloglog for binomial models; log for Poisson.
    """
    frame = read_data(data)
    record = fit_glmm_rows(parse_formula(formula), frame, family, link, nagq, weights, missing, covariance)
    return GLMMResults(record)


def stata_glmm(spec: dict, frame: pd.DataFrame, command: str) -> GLMMResults:
    """A GLMM from a parsed melogit/meprobit/mecloglog/mepoisson command (see :func:`mixedfx.mixed`)."""
    # nagq None: Stata's default, 7-point adaptive quadrature where it is defined, else Laplace
    record = fit_glmm_rows(
        parse_formula(spec["formula"]), frame, spec["family"], spec["link"], spec["nagq"], covariance=spec["covariance"]
    )
    record.labels = {name: stata_coefficient_name(name) for name in record.design.fixed_names if name != "(Intercept)"}
    result = GLMMResults(record)
    result.display_eform, result.display_level, result.display_scale = spec["eform"], spec["level"], spec["scale"]
    result.stata_command = command
    return result
