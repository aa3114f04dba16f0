"""Standard errors and intervals of the variance components, and intraclass correlations.

Variance components get their standard errors as Stata's ``mixed`` does: the observed
information of the (restricted) log-likelihood, profiled over the fixed effects only, in
the parameterisation

    phi = (log sd_k, atanh corr_kl per grouping factor, ..., log sigma)

is inverted (``Cov(phi) = 2 H^{-1}`` with ``H`` the Hessian of the deviance ``-2 l``), and the
delta method carries it to variances, SDs, covariances and correlations.  Confidence
intervals are computed on the log-SD and atanh-correlation scale and transformed back
(covariances: symmetric normal intervals), exactly as Stata reports them.  The covariance
of phi is computed once per fit (cached in the record).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data.design import nested_within
from ..engine.covariance import CovStructure
from ..engine.numdiff import central_hessian, richardson_jacobian
from ..errors import OptionError
from ..results import FitRecord
from ..spec.options import two_sided_quantile
from ..spec.residuals import TITLES
from ..spec.structures import TITLES as STRUCTURE_TITLES

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


def _term_covariance(structure: CovStructure, values: np.ndarray, labels: list[tuple[str, int, int]]) -> np.ndarray:
    """A term's covariance matrix G from its phi values (log-SDs, atanh-correlations)."""
    q = structure.q
    if structure.kind in ("identity", "exchangeable"):
        sd = np.exp(values[0])
        rho = np.tanh(values[1]) if (structure.kind == "exchangeable" and q > 1) else 0.0
        return sd**2 * ((1 - rho) * np.eye(q) + rho * np.ones((q, q)))
    sd = np.zeros(q)
    corr = np.eye(q)
    for v, (kind, i, j) in zip(values, labels):
        if kind == "lsd":
            sd[i] = np.exp(v)
        else:
            corr[i, j] = corr[j, i] = np.tanh(v)
    return corr * np.outer(sd, sd)


def res_engine_sigma2(result: FitRecord, sigma: float) -> float:
    """The engine's residual variance (standardised y, unit-mean weights) for a reported ``sigma``."""
    return (sigma / result.scaling.y_scale) ** 2 / result.weight_scale


class VarianceParameterisation:
    """Map between Stata's phi and (theta, sigma) for a fitted model."""

    def __init__(self, result: FitRecord):
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
        """Engine theta and sigma for a phi vector."""
        sigma = float(np.exp(phi[-1]))
        engine_sigma2 = sigma**2 / self.result.weight_scale  # G is relative to sigma for unit-mean weights
        relative = []
        k = 0
        for block in self.result.design.blocks:
            G = np.zeros((block.q, block.q))
            for term in block.terms:
                structure, where, labels = self.terms[k]
                G[term.columns, term.columns] = _term_covariance(structure, phi[where], labels)
                k += 1
            relative.append(G / engine_sigma2)
        return self.result.deviance.engine_theta(relative), sigma

    def deviance(self, phi: np.ndarray) -> float:
        """Deviance (original scale) at phi, profiled over the fixed effects only."""
        res = self.result
        theta, sigma = self.theta_sigma(phi)
        return res.deviance_to_original_scale(res.deviance.deviance_at(theta, res_engine_sigma2(res, sigma)))


def _boundary_flags(result: FitRecord, param: VarianceParameterisation) -> np.ndarray:
    """phi entries of terms on the boundary (their SEs are not defined)."""
    flags = np.zeros(len(param.infos), dtype=bool)
    start = 0
    per_term = {}
    for b, block in enumerate(result.design.blocks):
        for t, term in enumerate(block.terms):
            k = term.structure.n_params
            per_term[(b, t)] = term.structure.on_boundary(result.theta_engine[start : start + k], tol=1e-6)
            start += k
    for n, info in enumerate(param.infos):
        if info.block >= 0 and per_term[(info.block, info.term)]:
            flags[n] = True
    return flags


def phi_covariance(result: FitRecord) -> tuple[VarianceParameterisation, np.ndarray]:
    """phi at the optimum and its covariance ``2 H^{-1}`` (NaN rows for boundary terms); cached.

    With a residual structure the Hessian is taken jointly over phi and the R-side
    parameters ``u``; their covariance block is stored as ``param.r_cov``.
    """
    if "phi_covariance" not in result.cache:
        result.cache["phi_covariance"] = _phi_covariance(result)
    return result.cache["phi_covariance"]


#: Step (on the log-SD / atanh scale) of the Richardson differences of the clusters' scores.
SCORE_STEP = 1e-3


def pseudo_phi_covariance(result: FitRecord, param: VarianceParameterisation, free: np.ndarray) -> np.ndarray:
    """Sandwich covariance of phi for a fit with sampling weights, clustered at the top level.

    ``m/(m-1) H^{-1} (sum_k s_k s_k') H^{-1}`` with ``s_k`` the derivatives in phi of top
    cluster k's term of the log pseudo-likelihood (beta held at its estimate) and ``H`` the
    phi block of the log pseudo-likelihood's Hessian: the variance block of the
    block-diagonal sandwich whose fixed-effects block is Stata's.  NaN where H is singular.
    """
    deviance = result.deviance
    beta = result.light.beta

    def contributions(phi: np.ndarray) -> np.ndarray:
        theta, sigma = param.theta_sigma(phi)
        return deviance.cluster_loglik(theta, beta, res_engine_sigma2(result, sigma))

    scores = richardson_jacobian(contributions, param.phi_hat, SCORE_STEP, free)
    H = richardson_jacobian(
        lambda phi: richardson_jacobian(contributions, phi, SCORE_STEP, free).sum(axis=0),
        param.phi_hat,
        SCORE_STEP,
        free,
    )
    m = deviance.n_top_clusters
    cov = np.full((free.size, free.size), np.nan)
    try:
        bread = np.linalg.inv(-0.5 * (H + H.T))
    except np.linalg.LinAlgError:
        return cov
    sandwich = (m / (m - 1)) * bread @ (scores.T @ scores) @ bread
    if np.all(np.diag(sandwich) > 0):
        cov[np.ix_(free, free)] = sandwich
    return cov


def _phi_covariance(result: FitRecord) -> tuple[VarianceParameterisation, np.ndarray]:
    param = VarianceParameterisation(result)
    boundary = _boundary_flags(result, param)
    if result.pseudo:
        param.r_cov = np.zeros((0, 0))
        return param, pseudo_phi_covariance(result, param, ~boundary)
    rside = result.rside
    n_phi = param.phi_hat.size
    if rside is None:
        x, func, free = param.phi_hat, param.deviance, ~boundary
    else:
        x = np.concatenate([param.phi_hat, rside.u])
        free = np.concatenate([~boundary, np.ones(rside.u.size, dtype=bool)])

        def func(v: np.ndarray) -> float:
            theta, sigma = param.theta_sigma(v[:n_phi])
            inner = rside.model.inner(v[n_phi:])
            return result.deviance_to_original_scale(inner.deviance_at(theta, res_engine_sigma2(result, sigma)))

    H = central_hessian(func, x, HESSIAN_STEP, free)
    cov = np.full((free.size, free.size), np.nan)
    try:
        inv = 2.0 * np.linalg.inv(H)
        if np.all(np.diag(inv) > 0):
            cov[np.ix_(free, free)] = inv
    except np.linalg.LinAlgError:
        pass
    param.r_cov = cov[n_phi:, n_phi:]
    return param, cov[:n_phi, :n_phi]


def _label(name: str) -> str:
    """Stata's label for a random effect: ``_cons`` for the intercept."""
    return "_cons" if name == "(Intercept)" else name


def varcomp_rows(result: FitRecord, level: float = 95, scale: str = "var") -> pd.DataFrame:
    """:func:`varcomp_table` and a column ``phi``: each row's position in phi (None for R-side rows)."""
    if scale not in ("var", "sd"):
        raise OptionError(f"scale must be 'var' or 'sd', not {scale!r}.")
    param, cov = phi_covariance(result)
    z = two_sided_quantile(level)
    phi = param.phi_hat
    se_phi = np.sqrt(np.diag(cov))
    rows = []
    blocks = result.design.blocks
    position = {(info.block, info.term, info.kind, info.i, info.j): n for n, info in enumerate(param.infos)}
    for b, block in enumerate(blocks):
        for t, term in enumerate(block.terms):
            names = block.names[term.columns]
            title = STRUCTURE_TITLES["identity" if term.structure.q == 1 else term.structure.kind]
            q = term.structure.q
            if term.structure.kind in ("identity", "exchangeable"):  # one SD (and one correlation) for all
                n = position[(b, t, "lsd", 0, 0)]
                rows.append(_sd_row(block.name, title, names[0], phi[n], se_phi[n], z, scale) | {"phi": n})
                if q > 1:
                    rows[-1]["parameter"] = f"{scale}({_label(names[0])}..{_label(names[-1])})"
                if term.structure.kind == "exchangeable" and q > 1:
                    k = position[(b, t, "z", 1, 0)]
                    rows.append(
                        _corr_row(block.name, title, names[0], names[1], phi, cov, k, n, n, z, scale) | {"phi": k}
                    )
                continue
            # Stata's order: slopes first, the intercept last; correlations in that order.
            order = [k for k in range(q) if names[k] != "(Intercept)"] + [
                k for k in range(q) if names[k] == "(Intercept)"
            ]
            for i in order:
                n = position[(b, t, "lsd", i, i)]
                rows.append(_sd_row(block.name, title, names[i], phi[n], se_phi[n], z, scale) | {"phi": n})
            if term.structure.kind == "unstructured":
                for a_pos, i in enumerate(order):
                    for j in order[a_pos + 1 :]:
                        n = position[(b, t, "z", max(i, j), min(i, j))]
                        ni, nj = position[(b, t, "lsd", i, i)], position[(b, t, "lsd", j, j)]
                        row = _corr_row(block.name, title, names[j], names[i], phi, cov, n, ni, nj, z, scale)
                        rows.append(row | {"phi": n})
    n = len(phi) - 1
    rside = result.rside
    title = _rside_title(rside) if rside is not None else ""
    if rside is not None:
        rows += _rside_rows(rside, param.r_cov, z, title)
    rows.append(_sd_row("Residual", title, "Residual", phi[n], se_phi[n], z, scale) | {"phi": n})
    return pd.DataFrame(rows, columns=VARCOMP_COLUMNS + ["phi"])


VARCOMP_COLUMNS = ["group", "structure", "parameter", "estimate", "se", "lower", "upper"]


def varcomp_table(result: FitRecord, level: float = 95, scale: str = "var") -> pd.DataFrame:
    """Random-effects parameters with SEs and CIs, as Stata's ``mixed`` prints them.

    ``scale="var"`` reports variances and covariances, ``scale="sd"`` (Stata's ``stddev``)
    SDs and correlations, in Stata's order (a term's slopes, then its intercept, then the
    correlations).  Columns: group, structure, parameter, estimate, se, lower, upper.
    """
    return varcomp_rows(result, level, scale)[VARCOMP_COLUMNS]


def _rside_title(rside) -> str:
    spec = rside.spec
    title = TITLES[spec.kind] + (f" {spec.order}" if spec.order else "")
    if spec.by:
        title += f", by {spec.by}"
    if spec.variance:
        title += f", {spec.variance[0]} variance of {spec.variance[1]}"
    return title


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


def _rside_rows(rside, r_cov: np.ndarray, z: float, title: str) -> list[dict]:
    """R-side parameters on their natural scale with delta-method SEs.

    Intervals: from the unconstrained scale for single-parameter transforms (correlations
    through tanh, SD ratios through exp, the exponential's rho through its log range, as
    nlme's ``intervals``); through atanh for correlations that depend on several parameters
    (unstructured).
    """
    params = rside.model.structure.params
    u = rside.u
    natural = params.natural(u)
    step = 1e-6
    jac = np.empty((u.size, u.size))
    for k in range(u.size):
        e = np.zeros_like(u)
        e[k] = step
        jac[:, k] = (params.natural(u + e) - params.natural(u - e)) / (2 * step)
    ok = np.all(np.isfinite(r_cov))
    rows = []
    for k, (label, kind) in enumerate(zip(params.labels, params.kinds)):
        se = float(np.sqrt(jac[k] @ r_cov @ jac[k])) if ok else np.nan
        est = natural[k]
        if kind == "chol" and ok and abs(est) < 1:
            zse = se / (1 - est**2)
            lower, upper = np.tanh(np.arctanh(est) - z * zse), np.tanh(np.arctanh(est) + z * zse)
        elif ok and r_cov[k, k] > 0:
            se_u = np.sqrt(r_cov[k, k])
            ends = []
            for v in (u[k] - z * se_u, u[k] + z * se_u):
                shifted = u.copy()
                shifted[k] = v
                ends.append(params.natural(shifted)[k])
            lower, upper = min(ends), max(ends)
        else:
            lower = upper = np.nan
        rows.append(
            dict(group="Residual", structure=title, parameter=label, estimate=est, se=se, lower=lower, upper=upper)
        )
    return rows


def icc(result: FitRecord, level: float = 95) -> pd.DataFrame:
    """Intraclass correlations with delta-method CIs on the logit scale (Stata ``estat icc``).

    For each grouping factor k: the correlation of two observations that share k's level
    (and hence every level k is nested in): ``sum of those variances / total variance``.
    Only for random-intercept models (with random slopes the correlation depends on the
    covariates: use :func:`wcorrelation`).
    """
    blocks = result.design.blocks
    if not blocks:
        raise OptionError(
            "This model has no random effects (a marginal model): see fit.wcorrelation() instead of ICCs."
        )
    for block in blocks:
        if block.names != ["(Intercept)"]:
            raise OptionError(
                f"ICCs are defined for random-intercept models; ({' + '.join(block.names)} | {block.name}) "
                "has random slopes. Use fit.wcorrelation() for the implied correlations."
            )
    param, cov = phi_covariance(result)
    phi = param.phi_hat
    z = two_sided_quantile(level)

    def shares(phi_vec: np.ndarray) -> list[float]:
        variances = np.exp(2 * phi_vec)
        block_var = variances[:-1]  # one log-SD per random-intercept block, residual last
        total = variances.sum()
        out = []
        for block in blocks:
            num = sum(v for other, v in zip(blocks, block_var) if nested_within(block.factor, other.factor))
            out.append(num / total)
        return out

    values = shares(phi)
    rows = []
    for k, block in enumerate(blocks):
        grad = np.array([(shares(phi + e)[k] - shares(phi - e)[k]) / (2e-6) for e in np.eye(phi.size) * 1e-6])
        se = float(np.sqrt(grad @ cov @ grad)) if np.all(np.isfinite(cov)) else np.nan
        rho = values[k]
        logit = np.log(rho / (1 - rho)) if 0 < rho < 1 else np.nan
        se_logit = se / (rho * (1 - rho)) if 0 < rho < 1 else np.nan
        lower = 1 / (1 + np.exp(-(logit - z * se_logit)))
        upper = 1 / (1 + np.exp(-(logit + z * se_logit)))
        label = "|".join(_outer_first(block, blocks))
        rows.append({"level": label, "icc": rho, "se": se, "lower": lower, "upper": upper, "_depth": label.count("|")})
    return pd.DataFrame(rows).sort_values("_depth").drop(columns="_depth").set_index("level")


def _outer_first(block, blocks) -> list[str]:
    """Stata's level label, innermost last: ``school|class``."""
    names = [b.name for b in sorted(blocks, key=lambda b: b.n_levels) if nested_within(block.factor, b.factor)]
    return [n.split(":")[0] for n in names]
