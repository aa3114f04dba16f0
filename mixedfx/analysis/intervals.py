"""Profile-likelihood and parametric-bootstrap confidence intervals.

Profile intervals: for each parameter, the set of values whose profiled deviance exceeds
the minimum by at most ``chi2_1(level)``.  Variance parameters are profiled in Stata's
scale (log-SD, atanh-correlation, log-sigma; reported back as SD/correlation), with the
other variance parameters re-optimised and the fixed effects profiled out.  Fixed effects
are profiled for ML fits by refitting with the coefficient held fixed (an offset); REML
likelihoods do not contain the fixed effects, so REML fits get Wald intervals for them.

Parametric bootstrap: ``B`` responses simulated from the fitted model
(``y* = X beta + Z b* + e*``, ``b* ~ N(0, G)``, ``e* ~ N(0, sigma^2 / w)``), each refitted;
percentile intervals.  Seeded, with a progress line on stderr.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as st

from ..errors import OptionError
from ..fitting.pipeline import refit
from ..results import FitRecord
from ..spec.options import confidence_level, two_sided_quantile
from .varcomp import VarianceParameterisation, phi_covariance, varcomp_rows, varcomp_table


def _profile_variance(result: FitRecord, level: float) -> list[dict]:
    """Profile intervals of SDs, correlations and the residual SD."""
    param, cov = phi_covariance(result)
    phi_hat = param.phi_hat
    dev_min = result.minus_two_loglik
    crit = st.chi2.ppf(confidence_level(level), 1)
    table = varcomp_rows(result, level, scale="sd")
    labels, order = table["parameter"].tolist(), [int(k) for k in table["phi"]]
    rows = []
    for label, k in zip(labels, order):
        se = np.sqrt(cov[k, k]) if np.isfinite(cov[k, k]) else 0.5
        kind = param.infos[k].kind

        def excess(value: float, k: int = k) -> float:
            return _profiled_deviance(param, phi_hat, k, value) - dev_min - crit

        limit = 30.0 if kind == "lsd" else 20.0  # SD below exp(-30) of its estimate; |corr| within 1e-17 of 1
        lower = _bound(excess, phi_hat[k], -max(se, 1e-3), limit)
        upper = _bound(excess, phi_hat[k], max(se, 1e-3), limit)
        back = np.exp if kind == "lsd" else np.tanh
        low = back(lower) if np.isfinite(lower) else (0.0 if kind == "lsd" else -1.0)
        rows.append({"parameter": label, "estimate": back(phi_hat[k]), "lower": low, "upper": back(upper)})
    return rows


def _phi_order(result: FitRecord) -> list[int]:
    """Indices of phi in the row order of :func:`varcomp_table` (Stata's order, residual last)."""
    return [int(k) for k in varcomp_rows(result, scale="sd")["phi"]]


def _profiled_deviance(param: VarianceParameterisation, phi_hat: np.ndarray, k: int, value: float) -> float:
    """Deviance with phi_k fixed at ``value`` and the other variance parameters re-optimised."""
    others = [i for i in range(phi_hat.size) if i != k]

    def objective(sub: np.ndarray) -> float:
        phi = phi_hat.copy()
        phi[others] = sub
        phi[k] = value
        try:
            return param.deviance(phi)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            return np.inf

    if not others:
        return objective(np.zeros(0))
    res = optimize.minimize(objective, phi_hat[others], method="L-BFGS-B")
    return float(res.fun)


def _bound(excess, start: float, step: float, limit: float) -> float:
    """Root of ``excess`` beyond ``start`` in the direction of ``step``; +-inf if not within ``limit``."""
    a, b = start, start + step
    fb = excess(b)
    while fb < 0:
        if abs(b - start) > limit:
            return -np.inf if step < 0 else np.inf
        a, b = b, b + 2 * (b - a)
        fb = excess(b)
    return optimize.brentq(excess, min(a, b), max(a, b), xtol=1e-8)


def _profile_fixed(result: FitRecord, level: float) -> list[dict]:
    """Profile intervals of the fixed effects (ML) or Wald intervals (REML)."""
    crit = st.chi2.ppf(confidence_level(level), 1)
    z = two_sided_quantile(level)
    rows = []
    for j, name in enumerate(result.fixef.index):
        est, se = result.fixef.iloc[j], result.se.iloc[j]
        if result.reml:
            rows.append(
                {
                    "parameter": name,
                    "estimate": est,
                    "lower": est - z * se,
                    "upper": est + z * se,
                    "method": "wald (REML)",
                }
            )
            continue

        def excess(value: float, j: int = j) -> float:
            return refit(result, fixed_column=j, value=value).minus_two_loglik - result.minus_two_loglik - crit

        lower = optimize.brentq(excess, est - 4 * z * se, est, xtol=1e-10 * max(1.0, abs(est)))
        upper = optimize.brentq(excess, est, est + 4 * z * se, xtol=1e-10 * max(1.0, abs(est)))
        rows.append({"parameter": name, "estimate": est, "lower": lower, "upper": upper, "method": "profile"})
    return rows


def profile_intervals(result: FitRecord, level: float = 95) -> pd.DataFrame:
    """Profile-likelihood CIs for fixed effects (ML; Wald for REML), SDs, correlations and sigma."""
    result.require_likelihood("Profile-likelihood intervals")
    _refuse_rside(result, "Profile intervals")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixed = _profile_fixed(result, level)
        variance = [dict(row, method="profile") for row in _profile_variance(result, level)]
    return pd.DataFrame(fixed + variance).set_index("parameter")


def simulate_response(result: FitRecord, rng: np.random.Generator) -> np.ndarray:
    """One response vector drawn from the fitted model."""
    design = result.design
    y = design.X @ result.fixef.to_numpy()
    for block in design.blocks:
        G = result.G[block.name].to_numpy()
        b = rng.multivariate_normal(np.zeros(block.q), G, size=block.n_levels, method="cholesky")
        y += np.einsum("ia,ia->i", block.Z, b[block.codes])
    w = design.weights if design.weights is not None else 1.0
    return y + rng.normal(size=len(y)) * result.sigma / np.sqrt(w)


def bootstrap(
    result: FitRecord, n_boot: int = 500, seed: int | None = 0, level: float = 95, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parametric bootstrap: (percentile intervals, the replicate estimates).

    Columns of the replicates: every fixed effect, then the SD/correlation parameters and
    the residual SD (labels as in ``fit.re_table(scale="sd")``).
    """
    result.require_likelihood("The parametric bootstrap")
    _refuse_rside(result, "The parametric bootstrap")
    rng = np.random.default_rng(seed)
    labels = varcomp_table(result, level, scale="sd")["parameter"].tolist()
    names = list(result.fixef.index) + labels
    draws = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in range(n_boot):
            replicate = refit(result, y=simulate_response(result, rng))
            draws.append(np.concatenate([replicate.fixef.to_numpy(), _sd_estimates(replicate)]))
            if progress:
                done = b + 1
                bar = "#" * (30 * done // n_boot)
                print(f"\rbootstrap [{bar:<30}] {done}/{n_boot}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    reps = pd.DataFrame(draws, columns=names)
    alpha = (1 - confidence_level(level)) / 2
    estimate = np.concatenate([result.fixef.to_numpy(), _sd_estimates(result)])
    table = pd.DataFrame(
        {"estimate": estimate, "lower": reps.quantile(alpha).to_numpy(), "upper": reps.quantile(1 - alpha).to_numpy()},
        index=pd.Index(names, name="parameter"),
    )
    return table, reps


def _refuse_rside(result: FitRecord, what: str) -> None:
    if result.rside is not None:
        raise OptionError(f"{what} is not available with a residual structure yet; use the Wald intervals.")


def _sd_estimates(result: FitRecord) -> np.ndarray:
    """SDs and correlations in the order of ``re_table(scale='sd')``, without their SEs."""
    param = VarianceParameterisation(result)
    phi = param.phi_hat
    return np.array([np.exp(phi[k]) if param.infos[k].kind == "lsd" else np.tanh(phi[k]) for k in _phi_order(result)])
