"""The public interface: :func:`fit`, :func:`mixed` (Stata syntax), :func:`fit_reduced` and the
fitted-model facade :class:`MixedResults`.

:class:`MixedResults` is a thin facade over a :class:`~mixedfx.results.FitRecord`: its
attributes are the record's estimates and its methods call the analysis and presentation
layers with the record (and the display options a Stata command chose).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .analysis import intervals, marginal, margins, prediction, ranef, ranking, robust, varcomp, wald
from .analysis import lrtest as lrtests
from .analysis import moments as moments_analysis
from .analysis.lrtest import LRTest
from .data.conditions import evaluate_condition
from .data.io import read_data
from .data.reduce.cells import ReducedCells, reduce_cells_dask, reduce_cells_duckdb
from .data.reduce.chunks import reduce_dask
from .data.reduce.reduced import ReducedData
from .data.reduce.sqlscan import reduce_duckdb
from .errors import DataError, OptionError
from .fitting import pipeline
from .fitting.moments import fit_moments, fit_moments_cells
from .fitting.rside import fit_rside
from .fitting.survey import fit_pseudo
from .glmm import GLMMResults, fit_glmm, stata_glmm
from .present import html, report, serialize, text
from .results import FitRecord
from .results.moments import MomentsRecord
from .spec.model import model_spec
from .spec.options import check_engine, is_reml
from .spec.stata import parse_mixed, parse_range, stata_coefficient_name


class Summary(str):
    """The Stata-style summary text; a REPL shows it as the table itself."""

    def __repr__(self) -> str:
        return str(self)


class MixedResults:
    """A fitted linear mixed model.

    Attributes
    ----------
    loglik: maximised log-likelihood (ML) or restricted log-likelihood (REML); ``llf`` too.
    fixef, se, vcov: fixed effects, their standard errors and covariance (``params``, ``bse``).
    sigma: residual standard deviation.
    theta: relative covariance parameters (lme4's theta for unstructured terms); the
        optimiser's own parameters (for standardised random-effect columns) are ``theta_engine``.
    varcorr: variance components, one row per variance, covariance and the residual,
        columns ``group, var1, var2, vcov, sdcor`` (as lme4's ``as.data.frame(VarCorr())``).
    G: covariance matrix of the random effects per grouping factor.
    nobs, ngroups, group_sizes, n_missing: observations used, groups, obs per group, rows dropped.
    converged, singular: the optimiser's verdict and whether the fit is on the boundary.
    record: the underlying :class:`~mixedfx.results.FitRecord`.
    """

    def __init__(self, record: FitRecord, display_scale: str = "var", display_level: float = 95):
        self.record = record
        #: "var" (variances) or "sd" (SDs and correlations) for printed random-effects tables.
        self.display_scale = display_scale
        self.display_level = display_level
        self.stata_command: str | None = None
        #: Standard errors and degrees of freedom printed by default (Stata's vce() and dfmethod()).
        self.display_vce: str = "model"
        self.display_dfmethod: str | None = None
        #: The level of predictions by default: "subject" (lme4) or "population" (Stata's xb).
        self.default_prediction: str = "subject"
        #: The data file the model was fitted to, if any (a report never overwrites it).
        self.source: Path | None = None

    # ------------------------------------------------------------------ estimates
    @property
    def fixef(self) -> pd.Series:
        return self.record.fixef

    @property
    def se(self) -> pd.Series:
        return self.record.se

    @property
    def vcov(self) -> pd.DataFrame:
        return self.record.vcov

    @property
    def sigma(self) -> float:
        return self.record.sigma

    @property
    def loglik(self) -> float:
        return self.record.loglik

    @property
    def theta(self) -> np.ndarray:
        return self.record.theta

    @property
    def theta_engine(self) -> np.ndarray:
        return self.record.theta_engine

    @property
    def varcorr(self) -> pd.DataFrame:
        return self.record.varcorr

    @property
    def G(self) -> dict[str, pd.DataFrame]:
        return self.record.G

    @property
    def method(self) -> str:
        return self.record.method

    @property
    def reml(self) -> bool:
        return self.record.reml

    @property
    def formula(self) -> str:
        return self.record.formula

    @property
    def nobs(self) -> int:
        return self.record.nobs

    @property
    def n_missing(self) -> int:
        return self.record.n_missing

    @property
    def ngroups(self) -> dict[str, int]:
        return self.record.ngroups

    @property
    def group_sizes(self) -> pd.DataFrame:
        return self.record.group_sizes

    @property
    def converged(self) -> bool:
        return self.record.converged

    @property
    def singular(self) -> bool:
        return self.record.singular

    @property
    def optimum(self):
        """The optimiser's report (theta, deviance, convergence message, evaluations)."""
        return self.record.optimum

    @property
    def design(self):
        return self.record.design

    @property
    def rside(self):
        """The residual structure's fit (None without one)."""
        return self.record.rside

    @property
    def aic(self) -> float:
        return self.record.aic

    @property
    def bic(self) -> float:
        return self.record.bic

    @property
    def deviance(self) -> float:
        """``-2 loglik`` (the REML criterion for REML fits)."""
        return self.record.minus_two_loglik

    @property
    def n_params(self) -> int:
        return self.record.n_params

    # statsmodels' names, for users who reach for them
    @property
    def params(self) -> pd.Series:
        """The fixed effects (statsmodels' name)."""
        return self.fixef

    @property
    def bse(self) -> pd.Series:
        """Standard errors of the fixed effects (statsmodels' name)."""
        return self.se

    @property
    def llf(self) -> float:
        """The log-likelihood (statsmodels' name)."""
        return self.loglik

    @property
    def pvalues(self) -> pd.Series:
        """Two-sided p-values of the fixed effects' z tests."""
        return self.coef_table()["p"]

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Wald confidence intervals of the fixed effects, columns ``lower``/``upper`` (statsmodels' form)."""
        if not 0 < alpha < 1:
            raise OptionError(f"alpha must be between 0 and 1, not {alpha}.")
        return self.coef_table(level=100 * (1 - alpha))[["lower", "upper"]]

    # ------------------------------------------------------------------ random effects and predictions
    def ranef(self, condvar: bool = False) -> dict[str, pd.DataFrame]:
        """Conditional modes (BLUPs) per grouping factor; ``condvar`` adds their conditional SDs."""
        return ranef.ranef(self.record, condvar)

    def ranef_table(self) -> pd.DataFrame:
        """BLUPs as a long table: group, level, term, estimate, se, se_comparative, n."""
        return ranef.ranef_table(self.record)

    def ranef_conditional_covariance(self) -> dict[str, np.ndarray]:
        """Per factor, the stack (m, q, q) of conditional covariance matrices of the BLUPs."""
        return ranef.conditional_covariance(self.record)

    def coef_by_group(self) -> dict[str, pd.DataFrame]:
        """Cluster-specific coefficients ``beta + b_j`` per grouping factor (lme4's ``coef()``)."""
        return ranef.coef_by_group(self.record)

    def predict(self, data: pd.DataFrame | None = None, level: str | None = None, **options: object) -> pd.DataFrame:
        """Population (``level="population"``, Stata xb) or subject-specific predictions (see
        :func:`mixedfx.analysis.prediction.predict` for ``interval``, ``conf_level`` and ``strict``).

        The default is subject-specific (lme4's), or xb for a model fitted with :func:`mixed` (Stata's).
        """
        return prediction.predict(self.record, data, level=level or self.default_prediction, **options)

    def fitted(self, level: str = "subject") -> pd.Series:
        """Fitted values on the estimation rows."""
        return prediction.fitted(self.record, level)

    def residuals(self, level: str = "subject", kind: str = "raw") -> pd.Series:
        """Residuals (raw or Pearson) at the subject or population level."""
        return prediction.residuals(self.record, level, kind)

    def predict_grid(self, over: dict, by: dict | None = None, groups=None, derive=None, **options) -> pd.DataFrame:
        """Population-mean and individual predicted curves over a grid (tidy, ready to plot)."""
        return prediction.predict_grid(self.record, over, by, groups, derive, **options)

    def shrinkage(self, group: str | None = None, min_size: int = 1) -> pd.DataFrame:
        """Per cluster: OLS and EB estimates, size and shrinkage factor."""
        return ranking.shrinkage(self.record, group, min_size)

    def rank(self, term: str = "(Intercept)", group: str | None = None, level: float = 95, **options) -> pd.DataFrame:
        """Clusters ranked by their EB estimate with intervals and above/below-average flags."""
        return ranking.rank(self.record, term, group, level, **options)

    # ------------------------------------------------------------------ margins
    def margins(
        self,
        specs: str | list[str] | None = None,
        at: dict | None = None,
        over: str | list[str] | None = None,
        dydx: str | list[str] | None = None,
        predict: str | None = None,
        level: float = 95,
        derive=None,
    ) -> margins.Margins:
        """Predictive margins or average marginal effects with delta-method SEs (Stata ``margins``).

        ``specs`` names factors whose every level is a margin (``margins schgend``), ``at`` sets
        variables to values (``{"lrt": [-20, 0, 20]}``; lists are crossed), ``over`` computes
        the margins within subgroups, ``dydx`` gives average marginal effects instead (derivatives,
        or discrete changes from a factor's base level).  ``predict``: ``"xb"`` (the linear
        prediction, fixed portion).  ``derive`` recomputes derived columns (splines) after ``at``.
        """
        return margins.margins_table(self.record, specs, at, over, dydx, predict, level, derive)

    def emmeans(
        self, specs: str | list[str], at: dict | None = None, weights: str = "equal", level: float = 95, derive=None
    ) -> margins.Margins:
        """Estimated marginal means on emmeans' reference grid (factors' levels, covariates at their means),
        averaged over the other factors with ``weights="equal"`` or ``"proportional"``."""
        prediction = margins.prediction_for(self.record, None)
        return margins.estimated_marginal_means(self.record, specs, at, weights, prediction, level, derive)

    def contrast(self, spec: str, adjust: str = "none", level: float = 95, weights: str = "equal") -> margins.Margins:
        """Contrasts of a factor's marginal means: ``"r.x"`` each level minus the base, ``"pw.x"`` every pair;
        ``adjust`` = none, bonferroni, holm or sidak (Stata ``contrast``/``pwcompare``, emmeans ``pairs``)."""
        return margins.contrast(self.record, spec, adjust, level, None, weights)

    def postestimation(self, command: str) -> margins.Margins:
        """Stata's ``margins``, ``contrast`` or ``pwcompare`` after the fit, e.g.
        ``fit.postestimation("margins schgend, at(lrt_groupc=(-20 0 20)) pwcompare mcompare(holm)")``."""
        return margins.stata_postestimation(self.record, command)

    # ------------------------------------------------------------------ inference
    def coef_table(self, level: float = 95, dfmethod: str | None = None, vce: str = "model") -> pd.DataFrame:
        """Fixed effects with SE, z (or t with ``dfmethod``), p and CI; ``vce="robust"`` for sandwich SEs."""
        return wald.coef_table(self.record, level, dfmethod, vce)

    def re_table(self, level: float = 95, scale: str | None = None) -> pd.DataFrame:
        """Random-effects parameters with SEs and CIs (``scale="var"`` or ``"sd"``)."""
        return varcomp.varcomp_table(self.record, level, scale or self.display_scale)

    def icc(self, level: float = 95) -> pd.DataFrame:
        """Intraclass correlations with CIs (Stata ``estat icc``)."""
        return varcomp.icc(self.record, level)

    def wcovariance(self, group: str | None = None, cluster: object | None = None) -> pd.DataFrame:
        """Model-implied covariance matrix of one cluster's observations."""
        return marginal.wcovariance(self.record, group, cluster)

    def wcorrelation(self, group: str | None = None, cluster: object | None = None) -> pd.DataFrame:
        """Model-implied correlation matrix of one cluster's observations (Stata ``estat wcorrelation``)."""
        return marginal.wcorrelation(self.record, group, cluster)

    def recovariance(self) -> dict[str, pd.DataFrame]:
        """Covariance matrix G of the random effects per grouping factor (Stata ``estat recovariance``)."""
        return self.G

    def lr_test_vs_linear(self) -> LRTest:
        """LR test of the random effects against linear regression (chibar2 for one component)."""
        return lrtests.lr_test_vs_linear(self.record)

    def lincom(self, expr: str, level: float = 95) -> pd.Series:
        """Linear combination of fixed effects, e.g. ``"age_c + age_c_girl"`` (Stata ``lincom``)."""
        return wald.lincom(self.record, expr, level)

    def test(self, *equations: str) -> dict:
        """Joint Wald test of linear hypotheses, e.g. ``fit.test("age_c_girl = 0", "age_sp_girl = 0")``."""
        return wald.wald_test(self.record, *equations)

    def robust_vcov(self, group: str | None = None) -> pd.DataFrame:
        """Cluster-robust (sandwich) covariance of the fixed effects (Stata ``vce(robust)``)."""
        return robust.robust_vcov(self.record, group)

    def confint(
        self, method: str = "wald", level: float = 95, n_boot: int = 500, seed: int | None = 0, progress: bool = True
    ) -> pd.DataFrame:
        """Confidence intervals for fixed effects, SDs, correlations and sigma.

        ``method``: ``"wald"`` (Stata's delta-method intervals), ``"profile"`` (profile
        likelihood) or ``"bootstrap"`` (parametric, ``n_boot`` replicates, seeded).
        """
        if method == "profile":
            return intervals.profile_intervals(self.record, level)
        if method == "bootstrap":
            return intervals.bootstrap(self.record, n_boot=n_boot, seed=seed, level=level, progress=progress)[0]
        if method != "wald":
            raise OptionError(f"method must be 'wald', 'profile' or 'bootstrap', not {method!r}.")
        fixed = self.coef_table(level)[["estimate", "lower", "upper"]]
        variance = self.re_table(level, scale="sd").set_index("parameter")[["estimate", "lower", "upper"]]
        return pd.concat([fixed, variance]).rename_axis("parameter")

    # ------------------------------------------------------------------ presentation
    def summary(
        self,
        level: float | None = None,
        scale: str | None = None,
        dfmethod: str | None = None,
        vce: str | None = None,
        digits: int = 7,
    ) -> Summary:
        """Stata-style summary: header, fixed effects, random-effects parameters, LR test.

        ``scale``: ``"var"`` (variances) or ``"sd"`` (Stata's ``stddev``); ``dfmethod``:
        ``"satterthwaite"`` or ``"kroger"`` for t tests; ``vce="robust"`` for cluster-robust SEs;
        ``digits``: significant digits of the numbers (Stata's 7).
        """
        level = self.display_level if level is None else level
        dfmethod = self.display_dfmethod if dfmethod is None else dfmethod
        vce = self.display_vce if vce is None else vce
        return Summary(text.summary_text(self.record, level, scale or self.display_scale, dfmethod, vce, digits))

    def to_dict(self, ranef: bool = False, dfmethod: str | None = None) -> dict:
        """JSON-ready dictionary of the results (the CLI's ``--json`` layout)."""
        return serialize.results_dict(self.record, ranef=ranef, dfmethod=dfmethod)

    def report(
        self,
        path,
        x: str | None = None,
        time: str | None = None,
        by: str | None = None,
        progress: bool = True,
        digits: int = 7,
    ):
        """Write a self-contained HTML report (tables, ICC, ranking, plots); see :mod:`mixedfx.present.report`."""
        inputs = (self.source,) if self.source is not None else ()
        return report.write_report(
            self.record,
            path,
            x=x,
            time=time,
            by=by,
            progress=progress,
            scale=self.display_scale,
            inputs=inputs,
            digits=digits,
        )

    def _repr_html_(self) -> str:
        return html.html_summary(self.record, self.display_level, self.display_scale)

    def __str__(self) -> str:
        return str(self.summary())

    def __repr__(self) -> str:
        return f"<MixedResults {self.method}: {self.formula!r}, nobs={self.nobs}, loglik={self.loglik:.4f}>"


# ---------------------------------------------------------------------------- fitting
def _choose_engine(engine: str, data: object) -> str:
    """Resolve ``engine="auto"``: dask for a Dask DataFrame, else memory."""
    check_engine(engine)
    if engine == "auto":
        return "dask" if type(data).__module__.startswith("dask") else "memory"
    return engine


def fit(
    formula: str,
    data: pd.DataFrame | str | Path,
    method: str = "reml",
    weights: str | np.ndarray | None = None,
    covariance: dict[str, str] | None = None,
    missing: str = "drop",
    start: np.ndarray | None = None,
    max_iterations: int = 1000,
    engine: str = "auto",
    residuals: str | None = None,
    variance: tuple[str, str] | None = None,
    group: str | None = None,
    family: str | None = None,
    link: str | None = None,
    nagq: int | None = 1,
    pweights: dict[str, str] | None = None,
    pwscale: str | None = None,
) -> MixedResults | GLMMResults | MomentsResults:
    """Fit a linear mixed model by REML (default) or ML, or with ``family`` a generalized one.

    Parameters
    ----------
    formula:
        lme4 syntax, e.g. ``"gcse ~ lrt + (1 + lrt | school)"``.
    data:
        a DataFrame, or the path of a ``.csv``, ``.dta`` or ``.parquet`` file.
    method:
        ``"reml"``, ``"ml"`` or ``"moments"`` (random intercepts, crossed or nested, at any scale:
        method-of-moments components and GLS fixed effects, :mod:`mixedfx.engine.moments`).
    weights:
        column name or array of positive weights ``w``: residual variance ``sigma^2 / w``.
    covariance:
        covariance structure per grouping factor, overriding the formula's
        (``{"school": "exchangeable"}``): identity, independent, exchangeable, unstructured.
    missing:
        ``"drop"`` (listwise deletion, reported) or ``"raise"``.
    start:
        starting values of theta (default: for one grouping factor the moment estimate of
        :mod:`mixedfx.engine.start`, otherwise relative covariance factor = identity, as lme4).
    max_iterations:
        iteration limit of the optimiser; a fit that reaches it is reported as not converged.
    engine:
        ``"memory"`` (rows in memory), ``"duckdb"`` (Parquet/CSV files, a glob or a directory,
        reduced in SQL without loading the rows), ``"dask"`` (a Dask DataFrame, reduced by
        map-reduce over its partitions) or ``"auto"`` (dask for a Dask DataFrame, else memory).
        The out-of-memory engines need one grouping factor or nested ones.
    residuals:
        residual covariance within clusters, Stata's ``residuals()`` syntax:
        ``"ar1, t(Days)"``, ``"exchangeable"``, ``"toeplitz 2, t(visit)"``,
        ``"independent, by(sex)"``, ``"exponential, t(age)"`` (see :mod:`mixedfx.engine.rside`).
    variance:
        a variance function of a covariate, ``("power", "x")`` (SD times ``|x|^delta``) or
        ``("exp", "x")`` (SD times ``exp(delta x)``).
    group:
        the cluster variable of the residual structure for a model without random effects
        (a marginal/GLS model, e.g. ``fit("y ~ x", data, residuals="unstructured", group="id")``).
    family, link, nagq:
        a generalized linear mixed model (:func:`mixedfx.glmm.fit_glmm`): ``family`` binomial,
        bernoulli or poisson, ``link`` logit/probit/cloglog or log, ``nagq`` 1 (Laplace),
        0 (lme4's fast nAGQ = 0) or the points of adaptive quadrature; maximum likelihood
        (``method`` does not apply), rows in memory.
    pweights, pwscale:
        sampling weights of a multistage sample, Stata's ``[pw=w1] || school:, pweight(w2)``:
        ``pweights`` maps ``""`` (the observations: weights given their cluster) and grouping
        factors (cluster weights, constant within each cluster) to columns; ``pwscale`` scales
        the lower levels' weights within their clusters (``"size"``, ``"effective"``, ``"gk"``;
        None keeps them as given).  Pseudo-maximum likelihood (``method="ml"``) with
        standard errors clustered at the top level (:mod:`mixedfx.engine.pseudo`); nested
        factors, rows in memory.
    """
    if str(method).strip().lower() == "moments":
        unsupported = {
            "weights": weights,
            "pweights": pweights,
            "pwscale": pwscale,
            "family": family,
            "link": link,
            "residuals": residuals,
            "variance": variance,
            "group": group,
            "start": start,
        }
        return _fit_moments(formula, data, engine, covariance, missing, unsupported)
    if family is not None:
        _check_glmm_options(engine, residuals, variance, group, start)
        if pweights is not None or pwscale is not None:
            raise OptionError("Sampling weights (pweights, pwscale) are for linear mixed models, not GLMMs, yet.")
        return fit_glmm(formula, data, family, link, nagq, weights, missing, covariance)
    engine = _choose_engine(engine, data)
    spec = model_spec(formula, method, covariance, residuals, variance, group, missing)
    if pweights is not None or pwscale is not None:
        return _fit_pseudo(spec, data, engine, weights, pweights, pwscale, start, max_iterations)
    if engine != "memory":
        if not spec.residuals.is_trivial:
            raise OptionError(f"Residual structures need the rows in memory; use engine='memory', not {engine!r}.")
        if weights is not None and not isinstance(weights, str):
            raise OptionError(f"With engine={engine!r}, weights must name a column.")
        reduced = (
            reduce_duckdb(spec.formula.text, data, weights=weights)
            if engine == "duckdb"
            else reduce_dask(spec.formula.text, data, weights=weights)
        )
        return MixedResults(pipeline.fit_reduced(reduced, spec.reml, spec.covariance or None))
    frame = read_data(data)
    if not spec.residuals.is_trivial:
        result = MixedResults(fit_rside(spec, frame, weights, max_iterations))
    else:
        result = MixedResults(pipeline.fit_rows(spec, frame, weights, start, max_iterations))
    result.source = None if isinstance(data, pd.DataFrame) else Path(data)
    return result


def _fit_moments(formula, data, engine, covariance, missing, unsupported: dict) -> MomentsResults:
    """A method-of-moments fit (see :func:`fit`), after refusing the options it does not take."""
    for name, given in unsupported.items():
        if given is not None:
            raise OptionError(f"method='moments' does not take {name} yet.")
    engine = _choose_engine(engine, data)
    spec = model_spec(formula, "ml", covariance, None, None, None, missing)
    if engine == "duckdb":
        return MomentsResults(fit_moments_cells(reduce_cells_duckdb(spec.formula.text, data)))
    if engine == "dask":
        return MomentsResults(fit_moments_cells(reduce_cells_dask(spec.formula.text, data)))
    return MomentsResults(fit_moments(spec, read_data(data)))


class MomentsResults:
    """A random-intercepts model fitted by the method of moments (``fit(..., method="moments")``).

    Attributes: ``fixef``, ``se``, ``vcov`` (GLS given the components), ``components``
    (variances per grouping factor and ``Residual``), ``sigma``, ``nobs``, ``ngroups``,
    ``record``; ``summary()`` prints the table with bootstrap SEs of the components.
    """

    method = "moments"

    def __init__(self, record: MomentsRecord):
        self.record = record

    fixef = property(lambda self: self.record.fixef)
    se = property(lambda self: self.record.se)
    vcov = property(lambda self: self.record.vcov)
    components = property(lambda self: self.record.components)
    sigma = property(lambda self: self.record.sigma)
    nobs = property(lambda self: self.record.nobs)
    ngroups = property(lambda self: self.record.ngroups)

    def coef_table(self, level: float = 95) -> pd.DataFrame:
        """GLS fixed effects with SE, z, p and CI."""
        return moments_analysis.moments_coef_table(self.record, level)

    def re_table(self, level: float = 95, replicates: int | None = None) -> pd.DataFrame:
        """Variance components with parametric-bootstrap SEs and percentile intervals."""
        return moments_analysis.moments_component_table(self.record, level, replicates)

    def summary(self, level: float = 95, replicates: int | None = None, digits: int = 7) -> Summary:
        """The table: GLS coefficients, moment components with bootstrap SEs (``replicates``, default 50)."""
        return Summary(text.moments_text(self.record, level, replicates, digits))

    def to_dict(self, level: float = 95, replicates: int | None = None) -> dict:
        """JSON-ready dictionary: method, counts, fixed effects with SEs, components with bootstrap SEs."""
        return serialize.moments_dict(self.record, level, replicates)

    def __str__(self) -> str:
        return str(self.summary())

    def __repr__(self) -> str:
        return f"<MomentsResults: {self.record.formula!r}, nobs={self.nobs}>"


def _fit_pseudo(spec, data, engine, weights, pweights, pwscale, start, max_iterations) -> MixedResults:
    """A pseudo-likelihood fit with sampling weights (see :func:`fit`), after the option checks."""
    if pweights is None:
        raise OptionError("pwscale scales sampling weights: give them with pweights={'': column, group: column}.")
    if not isinstance(pweights, Mapping):
        raise OptionError("pweights must map '' (observations) and grouping factors to weight columns.")
    if weights is not None:
        raise OptionError("Give either weights (precision weights) or pweights (sampling weights), not both.")
    if engine != "memory":
        raise OptionError(f"Sampling weights need the rows in memory; use engine='memory', not {engine!r}.")
    frame = read_data(data)
    result = MixedResults(fit_pseudo(spec, frame, pweights, pwscale, start, max_iterations))
    result.source = None if isinstance(data, pd.DataFrame) else Path(data)
    return result


def fit_reduced(
    reduced: ReducedData | ReducedCells, method: str | None = None, covariance: dict[str, str] | None = None
) -> MixedResults | MomentsResults:
    """Fit a model from a reduction (no rows needed).

    A :class:`~mixedfx.data.reduce.reduced.ReducedData` (``reduce_duckdb``, ``reduce_dask``, ...)
    is fitted by ``method`` ``"reml"`` (default) or ``"ml"``; a
    :class:`~mixedfx.data.reduce.cells.ReducedCells` (``reduce_cells_duckdb``, ``reduce_cells_dask``:
    crossed random intercepts) by the method of moments, the only method its sums serve.
    """
    if isinstance(reduced, ReducedCells):
        if method not in (None, "moments") or covariance is not None:
            raise OptionError("A reduction to cells is fitted by method='moments' (no method or covariance to choose).")
        return MomentsResults(fit_moments_cells(reduced))
    return MixedResults(pipeline.fit_reduced(reduced, is_reml(method or "reml"), covariance))


def _check_glmm_options(engine: str, residuals, variance, group, start) -> None:
    """Refuse the linear-model options a generalized model does not have."""
    if engine not in ("auto", "memory"):
        raise OptionError(
            f"Generalized models are fitted with the rows in memory; use engine='memory', not {engine!r}."
        )
    for name, value in (("residuals", residuals), ("variance", variance), ("group", group), ("start", start)):
        if value is not None:
            raise OptionError(f"{name}= is an option of linear mixed models, not of generalized ones (family=).")


def mixed(command: str, data: pd.DataFrame | str | Path, **fit_options: object) -> MixedResults | GLMMResults:
    """Fit a model written in Stata's ``mixed`` syntax, as Stata would.

    ``if`` and ``in`` select rows, ``ib#.``/``ib(last).`` set base levels, coefficients carry
    Stata's names (``2.schgend``, ``c.lrt#2.schgend``), printing follows the command's options
    (``variance``/``stddev``, ``level()``, ``vce(robust)``, ``dfmethod()``), and ``predict``
    defaults to the fixed part (Stata's ``xb``).

    >>> fit = mixed("weight age_c age_sp girl age_c_girl age_sp_girl || id:, variance", asian)
    """
    frame = read_data(data)
    spec = parse_mixed(command, levels_of=lambda var: sorted(frame[var].dropna().unique()) if var in frame else [])
    source = None if isinstance(data, pd.DataFrame) else Path(data)
    if spec["in"] is not None:
        frame = frame.iloc[parse_range(spec["in"], len(frame))]
    if spec["if"] is not None:
        frame = frame.loc[evaluate_condition(spec["if"], frame)]
    if frame.empty:
        raise DataError("The if/in qualifiers select no observations (Stata: no observations).")
    if spec["family"] is not None:
        if spec["pweights"] is not None or spec["pwscale"] is not None:
            raise OptionError(f"{command.split()[0]} does not take sampling weights ([pw=], pweight(), pwscale()) yet.")
        if fit_options:
            raise OptionError(f"{command.split()[0]} takes its options in the command, not {', '.join(fit_options)}.")
        return stata_glmm(spec, frame, command)
    result = fit(
        spec["formula"],
        frame,
        method=spec["method"],
        covariance=spec["covariance"],
        residuals=spec["residuals"],
        group=spec["group"],
        **_stata_weights(spec),
        **fit_options,
    )
    result.record.relabel(
        {name: stata_coefficient_name(name) for name in result.design.fixed_names if name != "(Intercept)"}
    )
    result.display_scale = spec["scale"]
    result.display_level = spec["level"]
    result.display_vce, result.display_dfmethod = spec["vce"], spec["dfmethod"]
    result.default_prediction = "population"
    result.stata_command, result.source = command, source
    return result


def _stata_weights(spec: dict) -> dict:
    """``pweights``/``pwscale`` keyword arguments of a parsed command that has sampling weights."""
    if spec["pweights"] is None:
        if spec["pwscale"] is not None:
            raise OptionError("pwscale() scales sampling weights: give them with [pw=var] and pweight(var).")
        return {}
    return {"pweights": spec["pweights"], "pwscale": spec["pwscale"]}


def melogit(command: str, data: pd.DataFrame | str | Path) -> GLMMResults:
    """Stata's ``melogit`` (``meprobit``/``mecloglog`` through :func:`mixed`): ``melogit y x || g:, or``."""
    return mixed(f"melogit {command}", data)


def mepoisson(command: str, data: pd.DataFrame | str | Path) -> GLMMResults:
    """Stata's ``mepoisson``: ``mepoisson y x, exposure(t) || g:, irr``."""
    return mixed(f"mepoisson {command}", data)


def lrtest(restricted: MixedResults, full: MixedResults) -> LRTest:
    """Likelihood-ratio test of two nested fits (order does not matter); see :func:`mixedfx.analysis.lrtest.lrtest`."""
    return lrtests.lrtest(restricted.record, full.record)


def compare(*fits: MixedResults, names: list[str] | None = None) -> pd.DataFrame:
    """AIC/BIC table of several fits: parameters, log-likelihood, AIC, BIC (Stata ``estat ic``)."""
    return lrtests.compare(*[f.record for f in fits], names=names)
