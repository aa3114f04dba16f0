"""The record of a fitted linear mixed model: every estimate, and what produced it.

A :class:`FitRecord` is made by :mod:`mixedfx.fitting` and read by the analysis and
presentation layers; users see it through :class:`mixedfx.api.MixedResults`.  All estimates
are on the original scale of the data (the engine works on standardised X and y;
:class:`~mixedfx.engine.stats.Scaling` maps back).  Variance components follow lme4's
layout in :attr:`FitRecord.varcorr`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.linalg as la

from ..data.design import Design
from ..engine.deviance import ProfiledDeviance, Solution
from ..engine.optimize import OptimumReport
from ..engine.pseudo import PseudoLikelihoodDeviance
from ..engine.rside import RSideModel
from ..engine.stats import Scaling
from ..errors import OptionError


@dataclass
class RSideFit:
    """The residual structure of a fitted model: its parameters and how to re-evaluate it.

    ``u`` are the unconstrained R-side parameters at the optimum, ``cluster`` the name of the
    variable whose levels are the clusters, ``gradient`` the deviance's gradient in ``u``.
    """

    model: RSideModel
    u: np.ndarray
    cluster: str
    gradient: np.ndarray

    @property
    def spec(self):
        """The parsed ``residuals()`` specification."""
        return self.model.structure.spec

    @property
    def labels(self) -> list[str]:
        """Labels of the R-side parameters on their natural scale."""
        return self.model.structure.params.labels

    def natural(self, u: np.ndarray | None = None) -> np.ndarray:
        """The parameters on their natural scale (correlations, SD ratios, powers)."""
        return self.model.structure.params.natural(self.u if u is None else u)

    def covariance_rows(self, rows: np.ndarray, sigma: float) -> np.ndarray:
        """``sigma^2 R`` for rows of one cluster (in the order given)."""
        s = self.model.structure
        t = s.time[rows][None, :]
        group = s.by_codes[rows[:1]]
        occ = s.occasion_index[rows][None, :] if s.occasions is not None else None
        C = s.correlation(t, group, self.u, occ)[0]
        sd = s.sd_multipliers(self.u)[rows]
        return sigma**2 * C * np.outer(sd, sd)


#: Columns of a variance-components table (lme4's ``as.data.frame(VarCorr(fit))``).
VARCORR_COLUMNS = ["group", "var1", "var2", "vcov", "sdcor"]


def varcorr_rows(blocks: list, G: dict[str, pd.DataFrame]) -> list[tuple]:
    """Rows ``(group, var1, var2, vcov, sdcor)``: each block's variances, then its terms' covariances."""
    rows = []
    for block in blocks:
        cov = G[block.name].to_numpy()
        for term in block.terms:
            idx = list(range(cov.shape[0]))[term.columns]
            for i in idx:
                rows.append((block.name, block.names[i], None, cov[i, i], np.sqrt(cov[i, i])))
            if term.structure.kind in ("unstructured", "exchangeable"):
                for a, i in enumerate(idx):
                    for j in idx[a + 1 :]:
                        denom = np.sqrt(cov[i, i] * cov[j, j])
                        corr = cov[i, j] / denom if denom > 0 else np.nan
                        rows.append((block.name, block.names[i], block.names[j], cov[i, j], corr))
    return rows


def group_size_table(blocks: list) -> pd.DataFrame:
    """Observations per group (min, mean, max) for each grouping factor."""
    rows = {}
    for block in blocks:
        counts = block.level_counts
        rows[block.name] = {
            "groups": block.n_levels,
            "min": int(counts.min()),
            "avg": float(counts.mean()),
            "max": int(counts.max()),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def inverse_from_lower(RX: np.ndarray) -> np.ndarray:
    """``(RX RX')^{-1}`` from a lower Cholesky factor, by triangular solves (p x p, small)."""
    if RX.size == 0:
        return np.zeros((0, 0))
    Rinv = la.solve_triangular(RX, np.eye(RX.shape[0]), lower=True)
    return Rinv.T @ Rinv


class DesignFacts:
    """What every fit record reports of its design (``self.design``): formula, counts and group sizes."""

    @property
    def formula(self) -> str:
        return self.design.formula.text

    @property
    def nobs(self) -> int:
        return self.design.nobs

    @property
    def n_missing(self) -> int:
        return self.design.n_missing

    @property
    def ngroups(self) -> dict[str, int]:
        return {b.name: b.n_levels for b in self.design.blocks}

    @cached_property
    def group_sizes(self) -> pd.DataFrame:
        """Observations per group (min, mean, max) for each grouping factor."""
        return group_size_table(self.design.blocks)


@dataclass
class FitRecord(DesignFacts):
    """A fitted linear mixed model.

    Fields: ``design`` (rows, or reduced metadata; grouping blocks; names), ``deviance`` (the
    evaluator the optimiser minimised, on standardised data), ``scaling`` (back to the data's
    scale), ``optimum`` (the optimiser's report), ``reml``, ``rside`` (the residual structure,
    or None), ``weight_scale`` (the mean weight the engine divided out: sigma is reported for
    the user's weights), ``notes`` (weakly identified terms, printed with the summary),
    ``labels`` (names for the fixed effects other than the design's, e.g. Stata's ``2.schgend``) and
    ``cache`` (analyses memoised by the analysis layer: BLUPs, the variance components'
    covariance; keyed by name).

    Estimates computed at construction: ``theta_engine`` (the optimiser's parameters),
    ``loglik`` (log-likelihood, REML criterion for REML fits), ``sigma``, ``fixef``, ``vcov``,
    ``se``; derived ones (``theta``, ``G``, ``varcorr``, ``singular``, ...) on first use.
    """

    design: Design
    deviance: ProfiledDeviance
    scaling: Scaling
    optimum: OptimumReport
    reml: bool
    rside: RSideFit | None = None
    weight_scale: float = 1.0
    notes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    cache: dict = field(default_factory=dict, repr=False)
    theta_engine: np.ndarray = field(init=False)
    light: Solution = field(init=False, repr=False)
    loglik: float = field(init=False)
    sigma: float = field(init=False)
    fixef: pd.Series = field(init=False)
    vcov: pd.DataFrame = field(init=False)
    se: pd.Series = field(init=False)

    def __post_init__(self) -> None:
        self.theta_engine = np.asarray(self.optimum.theta, dtype=float)
        self.light = self.deviance.light_solution(self.theta_engine)
        self.loglik = float(-0.5 * self.deviance_to_original_scale(self.light.deviance))
        self.sigma = float(np.sqrt(self.light.sigma2 * self.weight_scale) * self.scaling.y_scale)
        names = [self.labels.get(n, n) for n in self.design.fixed_names]
        self.fixef = pd.Series(self.scaling.beta(self.light.beta), index=names, name="estimate")
        if self.pseudo:  # sampling weights: the linearisation (sandwich) variance, as Stata's mixed
            cov_tilde = self.deviance.robust_beta_covariance(self.theta_engine)
        else:
            cov_tilde = self.light.sigma2 * inverse_from_lower(self.light.RX)
        self.vcov = pd.DataFrame(self.scaling.beta_cov(cov_tilde), index=names, columns=names)
        self.se = pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=names, name="se")

    def relabel(self, labels: dict[str, str]) -> None:
        """Name the fixed effects ``labels[name]`` (e.g. Stata's ``2.schgend``) in every table from now on."""
        self.labels = dict(labels)
        names = [self.labels.get(n, n) for n in self.design.fixed_names]
        self.fixef.index = names
        self.se.index = names
        self.vcov.index = self.vcov.columns = names
        self.cache.clear()

    # ------------------------------------------------------------------ identity
    @property
    def method(self) -> str:
        return "REML" if self.reml else "ML"

    @property
    def pseudo(self) -> bool:
        """True for a pseudo-likelihood fit with sampling weights (robust SEs, no likelihood-based inference)."""
        return isinstance(self.deviance, PseudoLikelihoodDeviance)

    def require_likelihood(self, what: str) -> None:
        """Raise a clear error when ``what`` needs a true likelihood but the fit used sampling weights."""
        if self.pseudo:
            raise OptionError(
                f"{what} is not available with sampling weights: the fit maximises a pseudo-likelihood, so "
                "likelihood-ratio tests, likelihood-based intervals and refits do not apply (use the Wald tests "
                "and robust intervals in the summary)."
            )

    @property
    def converged(self) -> bool:
        return bool(self.optimum.converged)

    @property
    def has_rows(self) -> bool:
        """Whether the data rows are kept (False for fits from reduced data)."""
        return self.design.X is not None

    def require_rows(self, what: str) -> None:
        """Raise a clear error when ``what`` needs the data rows but the fit was made from reduced data."""
        if not self.has_rows:
            raise OptionError(
                f"{what} needs the rows of the data, but this model was fitted from reduced data (sufficient "
                "statistics); refit in memory with mixedfx.fit(..., engine='memory') for it."
            )

    @cached_property
    def solution(self) -> Solution:
        """The full solution at the optimum (per-cluster factors, for BLUPs and conditional variances)."""
        if self.pseudo:
            raise OptionError(
                "Empirical Bayes predictions (BLUPs) and conditional variances are not available with sampling "
                "weights yet; fixed-part (population) predictions and the variance components are."
            )
        return self.deviance.solve(self.theta_engine)

    # ------------------------------------------------------------------ likelihood scale
    def deviance_to_original_scale(self, deviance_tilde: float) -> float:
        """Deviance of the original data from that of the standardised problem.

        Scaling y by ``s`` adds ``n log s^2`` (ML) or ``(n - p) log s^2`` (REML); the REML
        term ``log|R_X|^2`` also changes by ``2 log|det T|`` under ``X~ = X T``.  (Dividing
        the weights by a constant leaves the deviance unchanged; a pseudo-likelihood's, whose
        top-level weights the engine divides by their mean, is multiplied back by it.)
        """
        n, p = self.deviance.n_likelihood, len(self.design.fixed_names)
        log_s2 = 2.0 * np.log(self.scaling.y_scale)
        if self.reml:
            return deviance_tilde + (n - p) * log_s2 - 2.0 * self.scaling.log_det_T
        return self.deviance.likelihood_scale * (deviance_tilde + n * log_s2)

    @property
    def n_params(self) -> int:
        """Number of estimated parameters: fixed effects, covariance parameters and sigma."""
        return len(self.fixef) + self.theta.size + 1 + (self.rside.u.size if self.rside is not None else 0)

    @property
    def aic(self) -> float:
        """Akaike information criterion ``-2 loglik + 2 k`` (on the REML criterion for REML fits; NaN for a
        pseudo-likelihood, where it is not defined)."""
        if self.pseudo:
            return float("nan")
        return float(-2.0 * self.loglik + 2.0 * self.n_params)

    @property
    def bic(self) -> float:
        """Bayesian information criterion ``-2 loglik + k log(n)`` (NaN for a pseudo-likelihood)."""
        if self.pseudo:
            return float("nan")
        return float(-2.0 * self.loglik + np.log(self.nobs) * self.n_params)

    @property
    def minus_two_loglik(self) -> float:
        """``-2 loglik`` (the REML criterion for REML fits)."""
        return -2.0 * self.loglik

    # ------------------------------------------------------------------ variance components
    @cached_property
    def lambdas(self) -> list[np.ndarray]:
        """Relative covariance factor of each grouping factor at the optimum (relative to the engine's sigma)."""
        return self.deviance.original_lambdas(self.theta_engine)

    @cached_property
    def theta(self) -> np.ndarray:
        """Relative covariance parameters as lme4 reports them (Cholesky of G / sigma^2 for
        unstructured terms, relative SDs for independent ones), block by block, term by term."""
        relative = 1.0 / np.sqrt(self.weight_scale)  # lme4's theta is relative to the reported sigma
        out = [
            block.layout.theta_from_relative_covariance(relative**2 * lam @ lam.T)
            for block, lam in zip(self.design.blocks, self.lambdas)
        ]
        return np.concatenate(out) if out else np.zeros(0)

    @property
    def sigma_lambda(self) -> float:
        """The residual SD that the relative covariance factors are relative to (``G = s^2 Lambda Lambda'``):
        ``sigma`` for the weights the engine used (divided by their mean), on the data's scale."""
        return float(np.sqrt(self.light.sigma2) * self.scaling.y_scale)

    @cached_property
    def G(self) -> dict[str, pd.DataFrame]:
        """Covariance matrix of the random effects of each grouping factor (Stata's recovariance)."""
        s2 = self.sigma_lambda**2
        out = {}
        for block, lam in zip(self.design.blocks, self.lambdas):
            out[block.name] = pd.DataFrame(s2 * (lam @ lam.T), index=block.names, columns=block.names)
        return out

    @cached_property
    def varcorr(self) -> pd.DataFrame:
        """Variance components as a tidy table (lme4 layout): group, var1, var2, vcov, sdcor."""
        rows = varcorr_rows(self.design.blocks, self.G)
        rows.append(("Residual", None, None, self.sigma**2, self.sigma))
        return pd.DataFrame(rows, columns=VARCORR_COLUMNS)

    @property
    def singular(self) -> bool:
        """True for a boundary fit: a relative SD at zero or a correlation at +-1 (engine scale)."""
        return self.deviance.on_boundary(self.theta_engine)
