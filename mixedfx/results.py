"""The fitted-model object returned by :func:`mixedfx.fit`.

All estimates are on the original scale of the data (the engine works on standardised
X and y; :class:`~mixedfx.stats.Scaling` maps back).  Variance components follow lme4's
layout in :attr:`MixedResults.varcorr`.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd

from .design import Design
from .likelihood import ProfiledDeviance, Solution
from .optimize import OptimumReport
from .stats import Scaling


class MixedResults:
    """A fitted linear mixed model.

    Attributes
    ----------
    loglik: maximised log-likelihood (ML) or restricted log-likelihood (REML).
    fixef, se: fixed effects and their standard errors (pandas Series).
    vcov: covariance matrix of the fixed effects (DataFrame).
    sigma: residual standard deviation.
    theta: relative covariance parameters (lme4's theta for unstructured terms); the
        optimiser's own parameters (for standardised random-effect columns) are ``theta_engine``.
    varcorr: variance components, one row per variance, covariance and the residual,
        columns ``group, var1, var2, vcov, sdcor`` (as lme4's ``as.data.frame(VarCorr())``).
    nobs, ngroups: number of observations and of groups per grouping factor.
    converged: whether the optimiser met its convergence criteria.
    """

    def __init__(self, design: Design, deviance: ProfiledDeviance, scaling: Scaling, report: OptimumReport, reml: bool):
        self.design = design
        self.deviance_function = deviance
        self.scaling = scaling
        self.optimum = report
        self.reml = reml
        self.method = "REML" if reml else "ML"
        self.formula = design.formula.text
        self.theta_engine = np.asarray(report.theta, dtype=float)
        self.converged = bool(report.converged)
        self._light: Solution = deviance.light_solution(self.theta_engine)
        self.nobs = design.nobs
        self.n_missing = design.n_missing
        self.ngroups = {b.name: b.n_levels for b in design.blocks}
        self.loglik = -0.5 * self.deviance_to_original_scale(self._light.deviance)
        self.sigma = float(np.sqrt(self._light.sigma2) * scaling.y_scale)
        names = design.fixed_names
        self.fixef = pd.Series(scaling.beta(self._light.beta), index=names, name="estimate")
        cov_tilde = self._light.sigma2 * _inverse_from_lower(self._light.RX)
        self.vcov = pd.DataFrame(scaling.beta_cov(cov_tilde), index=names, columns=names)
        self.se = pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=names, name="se")

    @cached_property
    def solution(self) -> Solution:
        """The full solution at the optimum (per-cluster factors, for BLUPs and conditional variances)."""
        return self.deviance_function.solve(self.theta_engine)

    # ------------------------------------------------------------------ likelihood scale
    def deviance_to_original_scale(self, deviance_tilde: float) -> float:
        """Deviance of the original data from that of the standardised problem.

        Scaling y by ``s`` adds ``n log s^2`` (ML) or ``(n - p) log s^2`` (REML); the REML
        term ``log|R_X|^2`` also changes by ``2 log|det T|`` under ``X~ = X T``.
        """
        n, p = self.nobs, len(self.design.fixed_names)
        log_s2 = 2.0 * np.log(self.scaling.y_scale)
        if self.reml:
            return deviance_tilde + (n - p) * log_s2 - 2.0 * self.scaling.log_det_T
        return deviance_tilde + n * log_s2

    @property
    def n_params(self) -> int:
        """Number of estimated parameters: fixed effects, covariance parameters and sigma."""
        rside = getattr(self, "rside", None)
        return len(self.fixef) + self.theta.size + 1 + (rside.u.size if rside is not None else 0)

    @property
    def aic(self) -> float:
        """Akaike information criterion ``-2 loglik + 2 k`` (on the REML criterion for REML fits)."""
        return -2.0 * self.loglik + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        """Bayesian information criterion ``-2 loglik + k log(n)``."""
        return -2.0 * self.loglik + np.log(self.nobs) * self.n_params

    @property
    def deviance(self) -> float:
        """``-2 loglik`` (the REML criterion for REML fits)."""
        return -2.0 * self.loglik

    # ------------------------------------------------------------------ variance components
    @cached_property
    def lambdas(self) -> list[np.ndarray]:
        """Relative covariance factor of each grouping factor at the optimum."""
        return self.deviance_function.original_lambdas(self.theta_engine)

    @cached_property
    def theta(self) -> np.ndarray:
        """Relative covariance parameters as lme4 reports them (Cholesky of G / sigma^2 for
        unstructured terms, relative SDs for independent ones), block by block, term by term."""
        out = []
        for block, lam in zip(self.design.blocks, self.lambdas):
            Gr = lam @ lam.T
            for term in block.terms:
                out.append(term.structure.theta_from_relative_covariance(Gr[term.columns, term.columns]))
        return np.concatenate(out) if out else np.zeros(0)

    @cached_property
    def G(self) -> dict[str, pd.DataFrame]:
        """Covariance matrix of the random effects of each grouping factor (Stata's recovariance)."""
        out = {}
        for block, lam in zip(self.design.blocks, self.lambdas):
            cov = self.sigma**2 * (lam @ lam.T)
            out[block.name] = pd.DataFrame(cov, index=block.names, columns=block.names)
        return out

    @cached_property
    def varcorr(self) -> pd.DataFrame:
        """Variance components as a tidy table (lme4 layout): group, var1, var2, vcov, sdcor."""
        rows = []
        for block in self.design.blocks:
            G = self.G[block.name].to_numpy()
            for term in block.terms:
                idx = list(range(G.shape[0]))[term.columns]
                for i in idx:
                    rows.append((block.name, block.names[i], None, G[i, i], np.sqrt(G[i, i])))
                if term.structure.kind in ("unstructured", "exchangeable"):
                    for a, i in enumerate(idx):
                        for j in idx[a + 1 :]:
                            denom = np.sqrt(G[i, i] * G[j, j])
                            corr = G[i, j] / denom if denom > 0 else np.nan
                            rows.append((block.name, block.names[i], block.names[j], G[i, j], corr))
        rows.append(("Residual", None, None, self.sigma**2, self.sigma))
        return pd.DataFrame(rows, columns=["group", "var1", "var2", "vcov", "sdcor"])

    @property
    def singular(self) -> bool:
        """True for a boundary fit: a relative SD at zero or a correlation at +-1."""
        start = 0
        for block in self.design.blocks:
            for term in block.terms:
                k = term.structure.n_params
                if term.structure.on_boundary(self.theta_engine[start : start + k]):
                    return True
                start += k
        return False

    # ------------------------------------------------------------------ groups
    @cached_property
    def group_sizes(self) -> pd.DataFrame:
        """Observations per group (min, mean, max) for each grouping factor."""
        rows = {}
        for block in self.design.blocks:
            counts = block.level_counts
            rows[block.name] = {
                "groups": block.n_levels,
                "min": int(counts.min()),
                "avg": float(counts.mean()),
                "max": int(counts.max()),
            }
        return pd.DataFrame.from_dict(rows, orient="index")

    # ------------------------------------------------------------------ random effects
    @cached_property
    def _conditional(self) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Per factor: conditional modes, conditional covariances and prediction-error covariances."""
        if not self.design.blocks:  # a marginal model: no random effects
            return [], [], []
        dev = self.deviance_function
        u1, u2 = dev.spherical_modes(self.solution)
        s = self.scaling.y_scale
        modes = [self.lambdas[0] @ u1 * s]
        if u2 is not None:
            offset = 0
            for lam, (q, m) in zip(self.lambdas[1:], dev.stats.rest_sizes):
                part = u2[offset : offset + q * m].reshape(m, q).T
                modes.append(lam @ part * s)
                offset += q * m
        covs = [c * self.sigma**2 for c in dev.conditional_covariances(self.solution, self.lambdas)]
        fills = dev.fixed_effect_fill(self.solution)
        comparative = [
            c + self.sigma**2 * np.einsum("ia,abm,jb->ijm", lam, f, lam) for c, f, lam in zip(covs, fills, self.lambdas)
        ]
        return modes, covs, comparative

    def ranef(self, condvar: bool = False) -> dict[str, pd.DataFrame]:
        """Conditional modes (BLUPs) per grouping factor, one row per level.

        With ``condvar=True`` each DataFrame also has ``se_<term>`` columns: the conditional
        standard deviations (lme4's ``condVar``: posterior SDs given beta and theta).
        """
        modes, covs, _ = self._conditional
        out = {}
        for block, mode, cov in zip(self.design.blocks, modes, covs):
            frame = pd.DataFrame(mode.T, index=pd.Index(block.levels, name=block.name), columns=block.names)
            if condvar:
                sd = np.sqrt(np.maximum(np.diagonal(cov, axis1=0, axis2=1), 0.0))
                for k, name in enumerate(block.names):
                    frame[f"se_{name}"] = sd[:, k]
            out[block.name] = frame
        return out

    def ranef_table(self) -> pd.DataFrame:
        """BLUPs as a long table: group, level, term, estimate, se, se_comparative, n.

        ``se`` is the conditional (posterior) SD as lme4 reports it; ``se_comparative`` is
        ``sqrt(Var(b_hat - b))``, which also counts the estimation of the fixed effects
        (Stata's ``reses``); ``n`` is the cluster size.
        """
        frames = []
        modes, covs, comparative = self._conditional
        for block, mode, cov, comp in zip(self.design.blocks, modes, covs, comparative):
            sd = np.sqrt(np.maximum(np.diagonal(cov, axis1=0, axis2=1), 0.0))
            sd_comp = np.sqrt(np.maximum(np.diagonal(comp, axis1=0, axis2=1), 0.0))
            sizes = block.level_counts
            for k, name in enumerate(block.names):
                frames.append(
                    pd.DataFrame(
                        {
                            "group": block.name,
                            "level": block.levels,
                            "term": name,
                            "estimate": mode[k],
                            "se": sd[:, k],
                            "se_comparative": sd_comp[:, k],
                            "n": sizes,
                        }
                    )
                )
        if not frames:  # a marginal model has no random effects
            return pd.DataFrame(columns=["group", "level", "term", "estimate", "se", "se_comparative", "n"])
        return pd.concat(frames, ignore_index=True)

    def ranef_conditional_covariance(self) -> dict[str, np.ndarray]:
        """Per factor, the stack (m, q, q) of conditional covariance matrices of the BLUPs."""
        _, covs, _ = self._conditional
        return {b.name: c.transpose(2, 0, 1) for b, c in zip(self.design.blocks, covs)}

    # ------------------------------------------------------------------ predictions
    def predict(self, data: pd.DataFrame | None = None, level: str = "subject", **options: object) -> pd.DataFrame:
        """Population (``level="population"``, Stata xb) or subject-specific predictions.

        See :func:`mixedfx.prediction.predict` for ``interval``, ``conf_level`` and ``strict``.
        """
        from .prediction import predict

        return predict(self, data, level=level, **options)

    def fitted(self, level: str = "subject") -> pd.Series:
        """Fitted values on the estimation rows."""
        from .prediction import fitted

        return fitted(self, level)

    def residuals(self, level: str = "subject", kind: str = "raw") -> pd.Series:
        """Residuals (raw or Pearson) at the subject or population level."""
        from .prediction import residuals

        return residuals(self, level, kind)

    def coef_by_group(self) -> dict[str, pd.DataFrame]:
        """Cluster-specific coefficients ``beta + b_j`` per grouping factor (lme4's ``coef()``)."""
        from .prediction import coef_by_group

        return coef_by_group(self)

    def shrinkage(self, group: str | None = None, min_size: int = 1) -> pd.DataFrame:
        """Per cluster: OLS and EB estimates, size and shrinkage factor (see mixedfx.prediction)."""
        from .prediction import shrinkage

        return shrinkage(self, group, min_size)

    def rank(self, term: str = "(Intercept)", group: str | None = None, level: float = 0.95, **options) -> pd.DataFrame:
        """Clusters ranked by their EB estimate with intervals and above/below-average flags."""
        from .prediction import rank

        return rank(self, term, group, level, **options)

    def predict_grid(self, over: dict, by: dict | None = None, groups=None, derive=None, **options) -> pd.DataFrame:
        """Population-mean and individual predicted curves over a grid (tidy, ready to plot)."""
        from .prediction import predict_grid

        return predict_grid(self, over, by, groups, derive, **options)

    # ------------------------------------------------------------------ inference
    def coef_table(self, level: float = 0.95, dfmethod: str | None = None, vce: str = "model") -> pd.DataFrame:
        """Fixed effects with SE, z (or t with ``dfmethod``), p and CI; ``vce="robust"`` for sandwich SEs."""
        from .inference import coef_table

        return coef_table(self, level, dfmethod, vce)

    def re_table(self, level: float = 0.95, scale: str | None = None) -> pd.DataFrame:
        """Random-effects parameters with SEs and CIs (``scale="var"`` or ``"sd"``)."""
        from .inference import varcomp_table

        return varcomp_table(self, level, scale or self.display_scale)

    def icc(self, level: float = 0.95) -> pd.DataFrame:
        """Intraclass correlations with CIs (Stata ``estat icc``)."""
        from .inference import icc

        return icc(self, level)

    def wcovariance(self, group: str | None = None, cluster: object | None = None) -> pd.DataFrame:
        """Model-implied covariance matrix of one cluster's observations."""
        from .inference import wcovariance

        return wcovariance(self, group, cluster)

    def wcorrelation(self, group: str | None = None, cluster: object | None = None) -> pd.DataFrame:
        """Model-implied correlation matrix of one cluster's observations (Stata ``estat wcorrelation``)."""
        from .inference import wcorrelation

        return wcorrelation(self, group, cluster)

    def recovariance(self) -> dict[str, pd.DataFrame]:
        """Covariance matrix G of the random effects per grouping factor (Stata ``estat recovariance``)."""
        return self.G

    def lr_test_vs_linear(self):
        """LR test of the random effects against linear regression (chibar2 for one component)."""
        from .inference import lr_test_vs_linear

        return lr_test_vs_linear(self)

    def lincom(self, expr: str, level: float = 0.95) -> pd.Series:
        """Linear combination of fixed effects, e.g. ``"age_c + age_c_girl"`` (Stata ``lincom``)."""
        from .inference import lincom

        return lincom(self, expr, level)

    def test(self, *equations: str) -> dict:
        """Joint Wald test of linear hypotheses, e.g. ``fit.test("age_c_girl = 0", "age_sp_girl = 0")``."""
        from .inference import wald_test

        return wald_test(self, *equations)

    def robust_vcov(self, group: str | None = None) -> pd.DataFrame:
        """Cluster-robust (sandwich) covariance of the fixed effects (Stata ``vce(robust)``)."""
        from .inference import robust_vcov

        return robust_vcov(self, group)

    def confint(
        self, method: str = "wald", level: float = 0.95, n_boot: int = 500, seed: int | None = 0, progress: bool = True
    ) -> pd.DataFrame:
        """Confidence intervals for fixed effects, SDs, correlations and sigma.

        ``method``: ``"wald"`` (Stata's delta-method intervals), ``"profile"`` (profile
        likelihood) or ``"bootstrap"`` (parametric, ``n_boot`` replicates, seeded).
        """
        from .intervals import bootstrap, profile_intervals

        if method == "profile":
            return profile_intervals(self, level)
        if method == "bootstrap":
            return bootstrap(self, n_boot=n_boot, seed=seed, level=level, progress=progress)[0]
        if method != "wald":
            from .errors import OptionError

            raise OptionError(f"method must be 'wald', 'profile' or 'bootstrap', not {method!r}.")
        fixed = self.coef_table(level)[["estimate", "lower", "upper"]]
        variance = self.re_table(level, scale="sd").set_index("parameter")[["estimate", "lower", "upper"]]
        return pd.concat([fixed, variance]).rename_axis("parameter")

    # ------------------------------------------------------------------ presentation
    #: "var" (variances) or "sd" (SDs and correlations) for printed random-effects tables.
    display_scale = "var"

    def summary(self, **options: object) -> str:
        """Stata-style text summary (see :func:`mixedfx.output.summary_text` for options)."""
        from .output import summary_text

        return summary_text(self, **options)

    def to_dict(self, ranef: bool = False, dfmethod: str | None = None) -> dict:
        """JSON-ready dictionary of the results (the CLI's ``--json`` layout)."""
        from .output import results_dict

        return results_dict(self, ranef=ranef, dfmethod=dfmethod)

    def report(self, path, x: str | None = None, time: str | None = None, by: str | None = None, progress: bool = True):
        """Write a self-contained HTML report (tables, ICC, ranking, plots); see :mod:`mixedfx.report`."""
        from .report import write_report

        return write_report(self, path, x=x, time=time, by=by, progress=progress)

    def _repr_html_(self) -> str:
        from .output import html_summary

        return html_summary(self)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"<MixedResults {self.method}: {self.formula!r}, nobs={self.nobs}, loglik={self.loglik:.4f}>"


def require_rows(result, what: str) -> None:
    """Raise a clear error when ``what`` needs the data rows but the fit was made from reduced data."""
    if result.design.X is None:
        from .errors import OptionError

        raise OptionError(
            f"{what} needs the rows of the data, but this model was fitted from reduced data (sufficient "
            "statistics); refit in memory with mixedfx.fit(..., engine='memory') for it."
        )


def _inverse_from_lower(RX: np.ndarray) -> np.ndarray:
    """``(RX RX')^{-1}`` from a lower Cholesky factor, by triangular solves (p x p, small)."""
    import scipy.linalg as la

    if RX.size == 0:
        return np.zeros((0, 0))
    Rinv = la.solve_triangular(RX, np.eye(RX.shape[0]), lower=True)
    return Rinv.T @ Rinv
