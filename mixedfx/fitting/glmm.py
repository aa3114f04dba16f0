"""Fitting a generalized linear mixed model: the stages of lme4's ``glmer``.

1. the design (:func:`mixedfx.data.design.build_design` with a family): proportions and
   trials or counts, X, Z, grouping factors; X is standardised for the optimiser (centred,
   unit root mean square; the record maps back exactly);
2. a GLM without random effects by IRLS: the start of beta, and the null model of the LR test;
3. ``nagq = 0`` stage: theta optimised with beta inside PIRLS (:meth:`joint_mode`), lme4's
   fast first stage (the answer when ``nagq = 0``); skipped where stage 4 has an analytic
   gradient, which converges as fast from the GLM and theta = 1;
4. the Laplace (``nagq = 1``) or adaptive Gauss-Hermite (``nagq > 1``) deviance minimised over
   ``(theta, beta)`` together, from stage 3 (analytic gradient where available);
5. the covariance of beta: twice the inverse Hessian of the deviance in ``(theta, beta)``
   (lme4's default for GLMMs), its beta block; theta on a bound is held fixed.  The Hessian
   is a central difference of the analytic gradient where there is one, else of the deviance
   (the one the optimiser's final Newton steps computed, where they ran close enough).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..data.design import Design, build_design
from ..engine.family import Family
from ..engine.laplace import GLM, ClusteredLaplace, GLMMData, GLMMOptimum, SparseLaplace
from ..engine.numdiff import central_hessian, hessian_from_gradient
from ..engine.optimize import Curvature, OptimumReport, minimize_deviance
from ..engine.stats import Scaling, standardisation
from ..errors import ConvergenceWarning, DataError, FormulaError, OptionError, SeparationWarning, SingularFitWarning
from ..results.glmm import GLMMRecord
from ..spec.formula import ParsedFormula
from ..spec.options import check_missing
from .threads import one_blas_thread

#: Stata's default number of quadrature points for one scalar random effect (``intpoints(7)``).
STATA_POINTS = 7
#: Most quadrature points accepted (lme4's limit too).
MOST_POINTS = 25
#: A standardised fixed effect beyond this (a change of e^15 in odds or rate per SD) means separation.
SEPARATED = 15.0


def glmm_family(family: str, link: str | None) -> Family:
    """The engine's family for a user's family name (``bernoulli`` is the binomial with one trial)."""
    name = {"bernoulli": "binomial", "binomial": "binomial", "poisson": "poisson"}.get(family)
    if name is None:
        raise OptionError(f"family must be 'binomial', 'bernoulli' or 'poisson', not {family!r}.")
    links = {"binomial": ("logit", "probit", "cloglog"), "poisson": ("log",)}[name]
    chosen = links[0] if link is None else link
    if chosen not in links:
        raise OptionError(f"link {link!r} is not available for the {family} family; choose {', '.join(links)}.")
    return Family(name, chosen)


def check_nagq(nagq: int | None, design: Design) -> int:
    """Refuse quadrature where it is not defined (several factors or random effects per cluster).

    ``None`` is Stata's default: 7 points for one random intercept, else Laplace.
    """
    simple = len(design.blocks) == 1 and design.blocks[0].q == 1
    if nagq is None:
        return STATA_POINTS if simple else 1
    if not isinstance(nagq, (int, np.integer)) or isinstance(nagq, bool) or not 0 <= nagq <= MOST_POINTS:
        raise OptionError(f"nagq must be a whole number from 0 to {MOST_POINTS}, not {nagq!r}.")
    if nagq > 1 and not simple:
        raise OptionError(
            f"nagq={nagq} (adaptive quadrature) needs one grouping factor with one random intercept; this model "
            "has " + ", ".join(f"{b.q} effect(s) on {b.name!r}" for b in design.blocks) + ": use nagq=1 (Laplace)."
        )
    return int(nagq)


def glmm_scaling(design: Design) -> Scaling:
    """The standardisation of X (the response is left as it is: its scale is the family's)."""
    _, _, scaling = standardisation(design.X, design.y, design.X_gram, design.X_scales)
    return Scaling(scaling.T, 0.0, 1.0, scaling.intercept, scaling.intercept_value)


def glmm_data(design: Design, family: Family, scaling: Scaling) -> GLMMData:
    """The engine's view of ``design``: standardised X, responses, trials, offsets, Z per factor."""
    n = design.nobs
    return GLMMData(
        X=np.ascontiguousarray(design.X @ scaling.T),
        y=design.y,
        m=design.trials,
        offset=np.zeros(n) if design.offset is None else design.offset,
        codes=[b.codes for b in design.blocks],
        Zs=[b.Z for b in design.blocks],
        layouts=[b.layout for b in design.blocks],
        n_levels=[b.n_levels for b in design.blocks],
        family=family,
    )


def check_response_varies(design: Design) -> None:
    """Refuse a response with one outcome only: no model of it can be estimated."""
    y = design.y
    if design.family == "poisson":
        if np.all(y == 0):
            raise DataError(f"The response {design.response_name!r} is 0 in every row used: there is nothing to model.")
    elif np.all(y == 0) or np.all(y == 1):
        outcome = "failures" if np.all(y == 0) else "successes"
        raise DataError(f"The response {design.response_name!r} has only {outcome}: there is nothing to model.")


def evaluator(data: GLMMData) -> ClusteredLaplace | SparseLaplace:
    """Batched per-cluster systems for one grouping factor, one sparse system for several."""
    return ClusteredLaplace(data) if len(data.codes) == 1 else SparseLaplace(data)


# ---------------------------------------------------------------------------- stage 2: the GLM
def fit_glm(data: GLMMData, iterations: int = 100) -> GLM:
    """IRLS (Newton with the expected information, step-halving) for the model without random effects."""
    fam, X = data.family, data.X
    mu0 = (data.y * data.m + 0.5) / (data.m + 1.0) if fam.name == "binomial" else data.y + 0.1
    eta = fam.link_of(mu0)
    beta = np.linalg.lstsq(X, eta - data.offset, rcond=None)[0]

    def loglik(b: np.ndarray) -> float:
        return float(np.sum(data.kernel(data.offset + X @ b))) + data.constant

    ll = loglik(beta)
    converged = False
    for _ in range(iterations):
        eta = data.offset + X @ beta
        s, w = fam.score_and_weight(data.y, eta, data.m)
        step = np.linalg.lstsq(X * np.sqrt(w)[:, None], s / np.sqrt(w), rcond=None)[0]
        size = 1.0
        for _ in range(30):
            trial = beta + size * step
            ll_trial = loglik(trial)
            if ll_trial >= ll - 1e-12 * abs(ll):
                break
            size *= 0.5
        change = ll_trial - ll
        beta, ll = trial, ll_trial
        if abs(change) <= 1e-12 * (abs(ll) + 1.0):
            converged = True
            break
    return GLM(beta, ll, converged)


def has_analytic_gradient(ev, nagq: int) -> bool:
    """Whether the Laplace or AGQ deviance has an analytic gradient: one grouping factor with
    one scalar random effect and a canonical link."""
    return nagq >= 1 and ev.has_gradient


# ---------------------------------------------------------------------------- stage 3: nAGQ = 0
def optimise_theta_joint(ev, data: GLMMData, beta0: np.ndarray, lower: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """theta minimising the Laplace deviance with beta inside PIRLS (lme4's ``nAGQ = 0``)."""
    state = {"beta": beta0.copy()}

    def deviance(theta: np.ndarray) -> float:
        beta, mode = ev.joint_mode(state["beta"], theta)
        state["beta"] = beta
        return mode.laplace

    start = np.concatenate([layout.start() for layout in data.layouts])
    report = minimize_deviance(deviance, start, lower, np.full(lower.size, np.inf), mirrors=None)
    beta, _ = ev.joint_mode(state["beta"], report.theta)
    return report.theta, beta


# ---------------------------------------------------------------------------- stage 4: Laplace / AGQ
def optimise_laplace(ev, data: GLMMData, theta0: np.ndarray, beta0: np.ndarray, nagq: int, lower: np.ndarray):
    """``(theta, beta)`` minimising the Laplace or AGQ deviance, from the ``nagq = 0`` optimum."""
    k = theta0.size

    def deviance(x: np.ndarray) -> float:
        return ev.deviance(x[k:], x[:k], nagq)

    analytic = None
    if has_analytic_gradient(ev, nagq):

        def analytic(x: np.ndarray) -> tuple[float, np.ndarray]:
            value, g_theta, g_beta = ev.deviance_gradient(x[k:], x[:k], nagq)
            return value, np.concatenate([g_theta, g_beta])

    lower_all = np.concatenate([lower, np.full(beta0.size, -np.inf)])
    upper_all = np.full(lower_all.size, np.inf)
    return minimize_deviance(
        deviance, np.concatenate([theta0, beta0]), lower_all, upper_all, value_and_gradient=analytic, mirrors=None
    )


#: The Newton polish's Hessian serves for the standard errors if it was computed this close
#: to the optimum (relative to 1 + |x|): its error is then ~1e-4 of the third derivatives'.
CURVATURE_REUSE = 1e-4


def deviance_hessian(
    ev, x: np.ndarray, k: int, nagq: int, lower: np.ndarray, curvature: Curvature | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference Hessian of the deviance in ``(theta, beta)``, theta on a bound left out;
    the optimiser's own ``curvature`` where it covers the same coordinates close to ``x``."""
    free = np.ones(x.size, dtype=bool)
    free[:k] = x[:k] > lower + 1e-4
    if curvature is not None and np.array_equal(curvature.free, free):
        if np.max(np.abs(curvature.point - x) / (1.0 + np.abs(x))) < CURVATURE_REUSE:
            return curvature.hessian, free
    steps = 1e-4 * np.maximum(np.abs(x), 1.0)

    def deviance(point: np.ndarray) -> float:
        return ev.deviance(point[k:], point[:k], nagq)

    def gradient(point: np.ndarray) -> np.ndarray:
        _, g_theta, g_beta = ev.deviance_gradient(point[k:], point[:k], nagq)
        return np.concatenate([g_theta, g_beta])

    if has_analytic_gradient(ev, nagq):
        H = hessian_from_gradient(gradient, x, steps, free)
    else:
        H = central_hessian(deviance, x, steps, free)
    ev.mode(x[k:], x[:k])  # leave the evaluator at the optimum's mode
    return H, free


def fit_glmm_design(design: Design, family: Family, nagq: int) -> tuple[GLMMOptimum, Scaling, GLMMData, list]:
    """Stages 2-5 for a design with its rows; also ``Var(u | y)`` per factor at the optimum."""
    check_response_varies(design)
    scaling = glmm_scaling(design)
    data = glmm_data(design, family, scaling)
    glm = fit_glm(data)
    ev = evaluator(data)
    lower = np.concatenate([layout.lower_bounds() for layout in data.layouts])
    if has_analytic_gradient(ev, nagq):
        # with the analytic gradient the Laplace/AGQ stage needs no better start than the GLM
        # (it took as many steps from here as from the nAGQ = 0 optimum, which cost as many again)
        theta, beta = np.concatenate([layout.start() for layout in data.layouts]), glm.beta
    else:
        theta, beta = optimise_theta_joint(ev, data, glm.beta, lower)
    k = theta.size
    if nagq == 0:
        report = OptimumReport(theta, ev.mode(beta, theta).laplace, True, "nAGQ = 0 optimum", 0, np.zeros(k))
    else:
        report = optimise_laplace(ev, data, theta, beta, nagq, lower)
        theta, beta = report.theta[:k], report.theta[k:]
    x = np.concatenate([theta, beta])
    if nagq == 0:
        H, free = deviance_hessian(ev, x, k, 1, np.full(k, np.inf))  # beta's block only, at fixed theta
    else:
        H, free = deviance_hessian(ev, x, k, nagq, lower, report.curvature)
    mode = ev.mode(beta, theta)
    deviance = mode.laplace if nagq <= 1 else ev.quadrature(beta, theta, mode, nagq)
    optimum = GLMMOptimum(theta, beta, deviance, nagq, report, H, free, mode, glm, ev.iterations)
    return optimum, scaling, data, ev.conditional_variances(beta, theta)


def warn_glmm(optimum: GLMMOptimum, singular: bool, names: list[str], stacklevel: int = 3) -> None:
    """Warnings of a GLMM fit: non-convergence, boundary, separation."""
    if not optimum.report.converged:
        warnings.warn(f"Model did not converge: {optimum.report.message}.", ConvergenceWarning, stacklevel=stacklevel)
    if not optimum.mode.converged:
        warnings.warn(
            "The conditional modes (PIRLS) did not converge at the optimum; the likelihood is approximate.",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )
    if singular:
        warnings.warn(
            "Boundary (singular) fit: a variance is estimated as zero or a correlation as +-1; "
            "see fit.varcorr and consider a simpler random-effects structure.",
            SingularFitWarning,
            stacklevel=stacklevel,
        )
    big = np.flatnonzero(np.abs(optimum.beta) > SEPARATED)
    if big.size:
        name = names[int(big[np.argmax(np.abs(optimum.beta[big]))])]
        warnings.warn(
            f"The fixed effect of {name!r} diverges (its estimate grows without bound): the data are "
            "(quasi-)completely separated by it, so some outcomes are predicted with probability 0 or 1. "
            "Its estimate and standard error are not meaningful; consider removing or recoding it.",
            SeparationWarning,
            stacklevel=stacklevel,
        )


def fit_glmm_rows(
    parsed: ParsedFormula,
    frame: pd.DataFrame,
    family: str,
    link: str | None = None,
    nagq: int | None = 1,
    weights: object = None,
    missing: str = "drop",
    covariance: dict[str, str] | None = None,
) -> GLMMRecord:
    """Every stage for data in memory: design, GLM start, nAGQ = 0, Laplace or AGQ, record, warnings."""
    engine_family = glmm_family(family, link)
    if not parsed.random:
        raise FormulaError(f"The formula {parsed.text!r} has no random-effects term; add one such as (1 | group).")
    design = build_design(
        parsed, frame, weights=weights, covariance=covariance, missing=check_missing(missing), family=family
    )
    nagq = check_nagq(nagq, design)
    with one_blas_thread():
        optimum, scaling, data, variances = fit_glmm_design(design, engine_family, nagq)
    record = GLMMRecord(design, engine_family, family, scaling, data, optimum, variances)
    warn_glmm(optimum, record.singular, design.fixed_names, stacklevel=4)
    if not _positive_definite(optimum.hessian):
        warnings.warn(
            "The Hessian of the deviance is not positive definite at the optimum: the standard errors are "
            "unreliable (a variance or a fixed effect is not well determined by the data).",
            ConvergenceWarning,
            stacklevel=4,
        )
    return record


def _positive_definite(H: np.ndarray) -> bool:
    try:
        np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return False
    return True
