"""Inference for fitted models: Wald tests, LR tests and SEs of variance components.

Variance components get their standard errors as Stata's ``mixed`` does: the observed
information of the (restricted) log-likelihood, profiled over the fixed effects only, in
the parameterisation

    phi = (log sd_k, atanh corr_kl per grouping factor, ..., log sigma)

is inverted (``Cov(phi) = 2 H^{-1}`` with ``H`` the Hessian of the deviance ``-2 l``), and the
delta method carries it to variances, SDs, covariances and correlations.  Confidence
intervals are computed on the log-SD and atanh-correlation scale and transformed back
(covariances: symmetric normal intervals), exactly as Stata reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as st

from .covariance import CovStructure

#: Step (on the log-SD / atanh scale) of the central differences for the Hessian.
HESSIAN_STEP = 1e-4


@dataclass
class _ParamInfo:
    """One entry of phi: which block/term it belongs to and what it is."""

    block: int
    term: int
    kind: str  # "lsd" or "z"
    i: int
    j: int


def _term_phi(structure: CovStructure, G: np.ndarray) -> tuple[list[float], list[tuple[str, int, int]]]:
    """phi entries of one term's covariance matrix G, with (kind, i, j) labels."""
    sd = np.sqrt(np.maximum(np.diag(G), 1e-300))
    if structure.kind == "identity":
        return [np.log(sd[0])], [("lsd", 0, 0)]
    if structure.kind == "independent":
        return list(np.log(sd)), [("lsd", i, i) for i in range(structure.q)]
    if structure.kind == "exchangeable":
        if structure.q == 1:
            return [np.log(sd[0])], [("lsd", 0, 0)]
        rho = np.clip(G[1, 0] / (sd[0] * sd[1]), -0.999999999, 0.999999999)
        return [np.log(sd[0]), np.arctanh(rho)], [("lsd", 0, 0), ("z", 1, 0)]
    values, labels = list(np.log(sd)), [("lsd", i, i) for i in range(structure.q)]
    for j in range(structure.q):
        for i in range(j + 1, structure.q):
            rho = np.clip(G[i, j] / (sd[i] * sd[j]), -0.999999999, 0.999999999)
            values.append(np.arctanh(rho))
            labels.append(("z", i, j))
    return values, labels


def _term_theta(
    structure: CovStructure, values: np.ndarray, labels: list[tuple[str, int, int]], sigma: float
) -> np.ndarray:
    """Relative covariance parameters theta of a term from its phi values and sigma."""
    q = structure.q
    if structure.kind == "identity":
        return np.array([np.exp(values[0]) / sigma])
    if structure.kind == "independent":
        return np.exp(values) / sigma
    if structure.kind == "exchangeable":
        if q == 1:
            return np.array([np.exp(values[0]) / sigma])
        return np.array([np.exp(values[0]) / sigma, np.tanh(values[1])])
    sd = np.zeros(q)
    corr = np.eye(q)
    for v, (kind, i, j) in zip(values, labels):
        if kind == "lsd":
            sd[i] = np.exp(v)
        else:
            corr[i, j] = corr[j, i] = np.tanh(v)
    G = corr * np.outer(sd, sd) / sigma**2
    L = np.linalg.cholesky(G)
    rows, cols = np.triu_indices(q)
    return L[cols, rows]


class VarianceParameterisation:
    """Map between Stata's phi and (theta, sigma) for a fitted model."""

    def __init__(self, result):
        self.result = result
        self.infos: list[_ParamInfo] = []
        self.terms: list[tuple[CovStructure, slice, list[tuple[str, int, int]]]] = []
        values = []
        for b, block in enumerate(result.design.blocks):
            G = result.G[block.name].to_numpy()
            for t, term in enumerate(block.terms):
                Gt = G[term.columns, term.columns]
                v, labels = _term_phi(term.structure, Gt)
                self.terms.append((term.structure, slice(len(values), len(values) + len(v)), labels))
                values.extend(v)
                self.infos.extend(_ParamInfo(b, t, kind, i, j) for kind, i, j in labels)
        values.append(np.log(result.sigma))
        self.infos.append(_ParamInfo(-1, -1, "lsd", 0, 0))
        self.phi_hat = np.array(values)

    def theta_sigma(self, phi: np.ndarray) -> tuple[np.ndarray, float]:
        """theta (engine order) and sigma for a phi vector."""
        sigma = float(np.exp(phi[-1]))
        thetas = [_term_theta(structure, phi[where], labels, sigma) for structure, where, labels in self.terms]
        return np.concatenate(thetas), sigma

    def deviance(self, phi: np.ndarray) -> float:
        """Deviance (original scale) at phi, profiled over the fixed effects only."""
        res = self.result
        theta, sigma = self.theta_sigma(phi)
        sigma2_tilde = (sigma / res.scaling.y_scale) ** 2
        return res.deviance_to_original_scale(res.deviance_function.deviance_at(theta, sigma2_tilde))


def _hessian(func, x: np.ndarray, free: np.ndarray, step: float = HESSIAN_STEP) -> np.ndarray:
    """Central-difference Hessian of ``func`` over the coordinates flagged in ``free``."""
    idx = np.flatnonzero(free)
    k = idx.size
    H = np.zeros((k, k))
    f0 = func(x)
    for a, i in enumerate(idx):
        ei = np.zeros_like(x)
        ei[i] = step
        fp, fm = func(x + ei), func(x - ei)
        H[a, a] = (fp - 2 * f0 + fm) / step**2
        for b in range(a):
            ej = np.zeros_like(x)
            ej[idx[b]] = step
            fpp, fpm = func(x + ei + ej), func(x + ei - ej)
            fmp, fmm = func(x - ei + ej), func(x - ei - ej)
            H[a, b] = H[b, a] = (fpp - fpm - fmp + fmm) / (4 * step**2)
    return H


def _boundary_flags(result, param: VarianceParameterisation) -> np.ndarray:
    """phi entries of terms on the boundary (their SEs are not defined)."""
    flags = np.zeros(len(param.infos), dtype=bool)
    start = 0
    per_term = {}
    for b, block in enumerate(result.design.blocks):
        for t, term in enumerate(block.terms):
            k = term.structure.n_params
            per_term[(b, t)] = term.structure.on_boundary(result.theta[start : start + k], tol=1e-6)
            start += k
    for n, info in enumerate(param.infos):
        if info.block >= 0 and per_term[(info.block, info.term)]:
            flags[n] = True
    return flags


def phi_covariance(result) -> tuple[VarianceParameterisation, np.ndarray]:
    """phi at the optimum and its covariance ``2 H^{-1}`` (NaN rows for boundary terms)."""
    param = VarianceParameterisation(result)
    boundary = _boundary_flags(result, param)
    free = ~boundary
    H = _hessian(param.deviance, param.phi_hat, free)
    cov = np.full((free.size, free.size), np.nan)
    try:
        inv = 2.0 * np.linalg.inv(H)
        if np.all(np.diag(inv) > 0):
            cov[np.ix_(free, free)] = inv
    except np.linalg.LinAlgError:
        pass
    return param, cov


def _label(name: str) -> str:
    """Stata's label for a random effect: ``_cons`` for the intercept."""
    return "_cons" if name == "(Intercept)" else name


def varcomp_table(result, level: float = 0.95, scale: str = "var") -> pd.DataFrame:
    """Random-effects parameters with SEs and CIs, as Stata's ``mixed`` prints them.

    ``scale="var"`` reports variances and covariances, ``scale="sd"`` (Stata's ``stddev``)
    SDs and correlations.  Columns: group, structure, parameter, estimate, se, lower, upper.
    """
    if scale not in ("var", "sd"):
        raise ValueError("scale must be 'var' or 'sd'")
    param, cov = phi_covariance(result)
    z = st.norm.ppf(0.5 + level / 2)
    phi = param.phi_hat
    se_phi = np.sqrt(np.diag(cov))
    rows = []
    blocks = result.design.blocks
    position = {(info.block, info.term, info.kind, info.i, info.j): n for n, info in enumerate(param.infos)}
    for b, block in enumerate(blocks):
        for t, term in enumerate(block.terms):
            names = block.names[term.columns]
            title = "Identity" if term.structure.q == 1 else term.structure.kind.capitalize()
            q = term.structure.q
            shared = term.structure.kind in ("identity", "exchangeable")
            for i in range(q):
                n = position[(b, t, "lsd", 0 if shared else i, 0 if shared else i)]
                rows.append(_sd_row(block.name, title, names[i], phi[n], se_phi[n], z, scale))
                if term.structure.kind == "identity" and q > 1:
                    rows[-1]["parameter"] = f"{'var' if scale == 'var' else 'sd'}({names[0]}..{names[-1]})"
                    break
            if term.structure.kind in ("unstructured", "exchangeable") and q > 1:
                for j in range(q):
                    for i in range(j + 1, q):
                        key = (b, t, "z", 1, 0) if shared else (b, t, "z", i, j)
                        n = position[key]
                        ni = position[(b, t, "lsd", 0 if shared else i, 0 if shared else i)]
                        nj = position[(b, t, "lsd", 0 if shared else j, 0 if shared else j)]
                        rows.append(_corr_row(block.name, title, names[j], names[i], phi, cov, n, ni, nj, z, scale))
                        if shared:
                            break
                    if shared:
                        break
    n = len(phi) - 1
    rows.append(_sd_row("Residual", "", "Residual", phi[n], se_phi[n], z, scale))
    return pd.DataFrame(rows, columns=["group", "structure", "parameter", "estimate", "se", "lower", "upper"])


def _sd_row(group: str, title: str, name: str, lsd: float, se: float, z: float, scale: str) -> dict:
    """A variance (or SD) row from log-SD and its SE."""
    if scale == "var":
        est = np.exp(2 * lsd)
        return dict(
            group=group,
            structure=title,
            parameter=f"var({_label(name)})",
            estimate=est,
            se=2 * est * se,
            lower=np.exp(2 * (lsd - z * se)),
            upper=np.exp(2 * (lsd + z * se)),
        )
    est = np.exp(lsd)
    return dict(
        group=group,
        structure=title,
        parameter=f"sd({_label(name)})",
        estimate=est,
        se=est * se,
        lower=np.exp(lsd - z * se),
        upper=np.exp(lsd + z * se),
    )


def _corr_row(group, title, name_a, name_b, phi, cov, n, ni, nj, z, scale) -> dict:
    """A covariance (or correlation) row from atanh(corr) and the two log-SDs, by the delta method."""
    rho = np.tanh(phi[n])
    label = f"{_label(name_b)},{_label(name_a)}"
    if scale == "sd":
        se_z = np.sqrt(cov[n, n])
        return dict(
            group=group,
            structure=title,
            parameter=f"corr({label})",
            estimate=rho,
            se=(1 - rho**2) * se_z,
            lower=np.tanh(phi[n] - z * se_z),
            upper=np.tanh(phi[n] + z * se_z),
        )
    sda, sdb = np.exp(phi[ni]), np.exp(phi[nj])
    est = rho * sda * sdb
    grad = np.zeros(len(phi))
    grad[ni] += est
    grad[nj] += est
    grad[n] += sda * sdb * (1 - rho**2)
    var = (
        grad @ np.nan_to_num(cov, nan=0.0) @ grad
        if np.all(np.isfinite(cov[np.ix_([n, ni, nj], [n, ni, nj])]))
        else np.nan
    )
    se = np.sqrt(var) if np.isfinite(var) else np.nan
    return dict(
        group=group,
        structure=title,
        parameter=f"cov({label})",
        estimate=est,
        se=se,
        lower=est - z * se,
        upper=est + z * se,
    )


@dataclass
class LRTest:
    """A likelihood-ratio test: statistic, degrees of freedom, p-value and its kind."""

    statistic: float
    df: int
    pvalue: float
    kind: str  # "chibar2(01)" or "chi2"

    def describe(self) -> str:
        """One line as Stata prints it."""
        if self.kind == "chibar2(01)":
            return f"LR test vs. linear model: chibar2(01) = {self.statistic:.2f}   Prob >= chibar2 = {self.pvalue:.4f}"
        return f"LR test vs. linear model: chi2({self.df}) = {self.statistic:.2f}   Prob > chi2 = {self.pvalue:.4f}"


def lr_test_vs_linear(result) -> LRTest:
    """LR test of all random effects against the linear regression with the same fixed effects.

    With one variance component the null distribution is the 50:50 mixture of chi2(0) and
    chi2(1) (``chibar2(01)``); with more, chi2(k) is conservative (Stata notes this).
    """
    dev = result.deviance_function
    zero = np.zeros_like(result.theta)
    dev0 = result.deviance_to_original_scale(dev.solve(zero).deviance)
    stat = max(dev0 - result.deviance, 0.0)
    k = result.theta.size
    if k == 1:
        return LRTest(stat, 1, 0.5 * st.chi2.sf(stat, 1) if stat > 0 else 1.0, "chibar2(01)")
    return LRTest(stat, k, st.chi2.sf(stat, k), "chi2")


def wald_chi2(result) -> tuple[float, int, float]:
    """Wald chi2 test that every fixed effect but the intercept is zero: (chi2, df, p)."""
    names = [n for n in result.fixef.index if n != "(Intercept)"]
    if not names:
        return np.nan, 0, np.nan
    b = result.fixef[names].to_numpy()
    V = result.vcov.loc[names, names].to_numpy()
    chi2 = float(b @ np.linalg.solve(V, b))
    return chi2, len(names), float(st.chi2.sf(chi2, len(names)))


def coef_table(result, level: float = 0.95) -> pd.DataFrame:
    """Fixed effects with SE, z, P>|z| and a normal-theory confidence interval."""
    z = st.norm.ppf(0.5 + level / 2)
    est, se = result.fixef, result.se
    zstat = est / se
    return pd.DataFrame(
        {
            "estimate": est,
            "se": se,
            "z": zstat,
            "p": 2 * st.norm.sf(np.abs(zstat)),
            "lower": est - z * se,
            "upper": est + z * se,
        }
    )
