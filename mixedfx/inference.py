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
from .results import require_rows  # noqa: E402

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
        """Engine theta and sigma for a phi vector."""
        sigma = float(np.exp(phi[-1]))
        blocks = self.result.design.blocks
        relative, structures = [], []
        k = 0
        for block in blocks:
            G = np.zeros((block.q, block.q))
            for term in block.terms:
                structure, where, labels = self.terms[k]
                G[term.columns, term.columns] = _term_covariance(structure, phi[where], labels)
                k += 1
            relative.append(G / sigma**2)
            structures.append([(term.columns, term.structure) for term in block.terms])
        return self.result.deviance_function.engine_theta(relative, structures), sigma

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
            per_term[(b, t)] = term.structure.on_boundary(result.theta_engine[start : start + k], tol=1e-6)
            start += k
    for n, info in enumerate(param.infos):
        if info.block >= 0 and per_term[(info.block, info.term)]:
            flags[n] = True
    return flags


def phi_covariance(result) -> tuple[VarianceParameterisation, np.ndarray]:
    """phi at the optimum and its covariance ``2 H^{-1}`` (NaN rows for boundary terms).

    With a residual structure the Hessian is taken jointly over phi and the R-side
    parameters ``u``; their covariance block is stored as ``param.r_cov``.
    """
    param = VarianceParameterisation(result)
    boundary = _boundary_flags(result, param)
    rside = getattr(result, "rside", None)
    n_phi = param.phi_hat.size
    if rside is None:
        x, func, free = param.phi_hat, param.deviance, ~boundary
    else:
        x = np.concatenate([param.phi_hat, rside.u])
        free = np.concatenate([~boundary, np.ones(rside.u.size, dtype=bool)])

        def func(v: np.ndarray) -> float:
            theta, sigma = param.theta_sigma(v[:n_phi])
            inner = rside.model.inner(v[n_phi:])
            return result.deviance_to_original_scale(inner.deviance_at(theta, (sigma / result.scaling.y_scale) ** 2))

    H = _hessian(func, x, free)
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
                if shared and q > 1:
                    rows[-1]["parameter"] = (
                        f"{'var' if scale == 'var' else 'sd'}({_label(names[0])}..{_label(names[-1])})"
                    )
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
    rside = getattr(result, "rside", None)
    title = _rside_title(rside) if rside is not None else ""
    if rside is not None:
        rows += _rside_rows(rside, param.r_cov, z, title)
    rows.append(_sd_row("Residual", title, "Residual", phi[n], se_phi[n], z, scale))
    return pd.DataFrame(rows, columns=["group", "structure", "parameter", "estimate", "se", "lower", "upper"])


def _rside_title(rside) -> str:
    from .rside import TITLES

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
    through tanh, SD ratios through exp); through atanh for correlations that depend on
    several parameters (unstructured).
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


def lr_test_vs_linear(result) -> LRTest:
    """LR test of all random effects against the linear regression with the same fixed effects.

    With one variance component the null distribution is the 50:50 mixture of chi2(0) and
    chi2(1) (``chibar2(01)``); with more, chi2(k) is conservative (Stata notes this).
    """
    dev = result.deviance_function
    zero = np.zeros_like(result.theta)
    rside = getattr(result, "rside", None)
    if rside is None:
        dev0 = result.deviance_to_original_scale(dev.solve(zero).deviance)
        k = result.theta.size
    else:  # the linear model: no random effects and R = I
        dev0 = result.deviance_to_original_scale(rside.model.linear_deviance())
        k = result.theta.size + rside.u.size
    stat = max(dev0 - result.deviance, 0.0)
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


def coef_table(result, level: float = 0.95, dfmethod: str | None = None, vce: str = "model") -> pd.DataFrame:
    """Fixed effects with SE, test statistic, p-value and confidence interval.

    Without ``dfmethod``: z tests and normal intervals (Stata).  With ``dfmethod`` =
    ``"satterthwaite"`` or ``"kroger"``: t tests with those denominator df (column ``df``;
    Kenward-Roger also uses its adjusted covariance).  ``vce="robust"`` uses the
    cluster-robust covariance (z tests).
    """
    est = result.fixef
    if vce == "robust":
        if dfmethod:
            raise ValueError("vce='robust' gives large-sample z tests; do not combine it with dfmethod.")
        se = pd.Series(np.sqrt(np.diag(robust_vcov(result).to_numpy())), index=est.index)
    elif vce != "model":
        raise ValueError(f"vce must be 'model' or 'robust', not {vce!r}.")
    else:
        se = result.se
    if dfmethod is None:
        return pd.DataFrame(_z_columns(est, se, level))
    from .ddf import coefficient_df

    df, vcov = coefficient_df(result, dfmethod)
    se = pd.Series(np.sqrt(np.diag(vcov.to_numpy())), index=est.index)
    stat = est / se
    q = st.t.ppf(0.5 + level / 2, df)
    return pd.DataFrame(
        {
            "estimate": est,
            "se": se,
            "df": df,
            "t": stat,
            "p": 2 * st.t.sf(np.abs(stat), df),
            "lower": est - q * se,
            "upper": est + q * se,
        }
    )


# ---------------------------------------------------------------------------- ICC
def _nested_within(inner: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    """True when sharing a level of ``inner`` implies sharing the level of ``outer``."""
    return set(outer) <= set(inner)


def icc(result, level: float = 0.95) -> pd.DataFrame:
    """Intraclass correlations with delta-method CIs on the logit scale (Stata ``estat icc``).

    For each grouping factor k: the correlation of two observations that share k's level
    (and hence every level k is nested in): ``sum of those variances / total variance``.
    Only for random-intercept models (with random slopes the correlation depends on the
    covariates: use :func:`wcorrelation`).
    """
    blocks = result.design.blocks
    if not blocks:
        raise ValueError("This model has no random effects (a marginal model): see fit.wcorrelation() instead of ICCs.")
    for block in blocks:
        if block.names != ["(Intercept)"]:
            raise ValueError(
                f"ICCs are defined for random-intercept models; ({' + '.join(block.names)} | {block.name}) "
                "has random slopes. Use fit.wcorrelation() for the implied correlations."
            )
    param, cov = phi_covariance(result)
    phi = param.phi_hat
    z = st.norm.ppf(0.5 + level / 2)

    def shares(phi_vec: np.ndarray) -> list[float]:
        variances = np.exp(2 * phi_vec)
        block_var = variances[:-1]  # one log-SD per random-intercept block, residual last
        total = variances.sum()
        out = []
        for block in blocks:
            num = sum(v for other, v in zip(blocks, block_var) if _nested_within(block.factor, other.factor))
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
    names = [b.name for b in sorted(blocks, key=lambda b: b.n_levels) if _nested_within(block.factor, b.factor)]
    return [n.split(":")[0] for n in names]


# ---------------------------------------------------------------------------- within-cluster covariance
def _cluster_rows(result, group: str | None, cluster: object | None) -> tuple[object, np.ndarray, str]:
    """Row positions of one cluster of ``group`` (default: the factor with fewest levels, first level)."""
    blocks = result.design.blocks
    rside = getattr(result, "rside", None)
    if not blocks and rside is not None:  # marginal model: clusters of the residual structure
        codes, uniques = pd.factorize(result.design.data[rside.cluster], sort=True)
        labels = [str(u) for u in uniques]
        label = labels[0] if cluster is None else str(cluster)
        if label not in labels:
            raise ValueError(f"{rside.cluster!r} has no level {label!r}.")
        return label, np.flatnonzero(codes == labels.index(label)), rside.cluster
    block = (
        min(blocks, key=lambda b: b.n_levels) if group is None else next((b for b in blocks if b.name == group), None)
    )
    if block is None:
        raise ValueError(f"No grouping factor {group!r}; the model has {', '.join(b.name for b in blocks)}.")
    label = block.levels[0] if cluster is None else str(cluster)
    if label not in block.levels:
        raise ValueError(f"{block.name!r} has no level {label!r}.")
    rows = np.flatnonzero(block.codes == block.levels.index(label))
    return label, rows, block.name


def wcovariance(result, group: str | None = None, cluster: object | None = None) -> pd.DataFrame:
    """Model-implied covariance of the observations of one cluster (Stata ``estat wcorrelation, covariance``).

    ``V = sum_k Z_k G_k Z_k' + sigma^2 W^{-1}`` over the rows of ``cluster`` (a level of
    ``group``); random slopes make its diagonal depend on the covariates (the lecture's
    ``var(xi_ij) = tau_1^2 + 2 tau_12 x + tau_2^2 x^2 + sigma^2``).
    """
    require_rows(result, "The within-cluster covariance")
    label, rows, name = _cluster_rows(result, group, cluster)
    V = np.zeros((rows.size, rows.size))
    for block in result.design.blocks:
        Z = block.Z[rows]
        same = block.codes[rows][:, None] == block.codes[rows][None, :]
        V += (Z @ result.G[block.name].to_numpy() @ Z.T) * same
    rside = getattr(result, "rside", None)
    if rside is not None:
        V += rside.covariance_rows(rows, result.sigma)
    else:
        w = result.design.weights[rows] if result.design.weights is not None else np.ones(rows.size)
        V += np.diag(result.sigma**2 / w)
    index = pd.Index(result.design.row_index[rows], name=f"{name}={label}")
    return pd.DataFrame(V, index=index, columns=index)


def wcorrelation(result, group: str | None = None, cluster: object | None = None) -> pd.DataFrame:
    """Model-implied correlation of the observations of one cluster (Stata ``estat wcorrelation``)."""
    V = wcovariance(result, group, cluster)
    sd = np.sqrt(np.diag(V.to_numpy()))
    return V / np.outer(sd, sd)


# ---------------------------------------------------------------------------- model comparison
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


# ---------------------------------------------------------------------------- linear hypotheses
def _coefficient_name(token: str, names: list[str]) -> str:
    token = token.strip()
    if token in ("_cons", "Intercept"):
        token = "(Intercept)"
    if token not in names:
        from .errors import OptionError, suggest

        raise OptionError(f"Unknown coefficient {token!r} in the expression.{suggest(token, names)}")
    return token


def _split_signed(expr: str) -> list[tuple[int, str]]:
    """Split a linear expression at top-level + and - (not inside parentheses)."""
    parts, depth, sign, start = [], 0, 1, 0
    text = expr.strip()
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and ch in "+-" and i > 0 and text[i - 1] not in "eE*":
            piece = text[start:i].strip()
            if piece:
                parts.append((sign, piece))
            sign, start = (1 if ch == "+" else -1), i + 1
        elif depth == 0 and ch in "+-" and i == 0:
            sign, start = (1 if ch == "+" else -1), 1
    piece = text[start:].strip()
    if piece:
        parts.append((sign, piece))
    return parts


def parse_linear(expr: str, names: list[str], allow_constant: bool = False) -> tuple[np.ndarray, float]:
    """``"2*age_c - age_sp + 1"`` -> (weights over coefficients, constant)."""
    from .errors import OptionError

    weights = np.zeros(len(names))
    constant = 0.0
    for sign, piece in _split_signed(expr):
        factors = [f.strip() for f in piece.split("*")]
        coef, name = float(sign), None
        for f in factors:
            try:
                coef *= float(f)
            except ValueError:
                if name is not None:
                    raise OptionError(f"{piece!r} is not linear in the coefficients.") from None
                name = _coefficient_name(f, names)
        if name is None:
            constant += coef
        else:
            weights[names.index(name)] += coef
    if not weights.any() and not allow_constant:
        raise OptionError(f"The expression {expr!r} names no coefficient.")
    return weights, constant


def lincom(result, expr: str, level: float = 0.95, vcov: np.ndarray | None = None) -> pd.Series:
    """A linear combination of fixed effects with SE, z, p and CI (Stata ``lincom``)."""
    names = list(result.fixef.index)
    L, c = parse_linear(expr, names)
    V = result.vcov.to_numpy() if vcov is None else vcov
    est = float(L @ result.fixef.to_numpy() + c)
    se = float(np.sqrt(L @ V @ L))
    return pd.Series(_z_columns(est, se, level), name=expr)


def _z_columns(est, se, level: float) -> dict:
    """Estimate, SE, z, two-sided p and normal CI (scalars or aligned Series)."""
    q = st.norm.ppf(0.5 + level / 2)
    z = est / se
    return {
        "estimate": est,
        "se": se,
        "z": z,
        "p": 2 * st.norm.sf(np.abs(z)),
        "lower": est - q * se,
        "upper": est + q * se,
    }


def hypothesis_matrix(result, *equations: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``L beta = r`` from equations like ``"a = 0"`` or ``"a = b"`` (a bare ``"a"`` means ``a = 0``)."""
    from .errors import OptionError

    names = list(result.fixef.index)
    rows, rhs = [], []
    for eq in equations:
        if eq.count("=") > 1:
            raise OptionError(f"{eq!r} has more than one '='.")
        left, _, right = eq.partition("=")
        L1, c1 = parse_linear(left, names, allow_constant=True)
        L2, c2 = parse_linear(right, names, allow_constant=True) if right.strip() else (np.zeros(len(names)), 0.0)
        if not (L1 - L2).any():
            raise OptionError(f"The hypothesis {eq!r} involves no coefficient.")
        rows.append(L1 - L2)
        rhs.append(c2 - c1)
    return np.array(rows), np.array(rhs)


def wald_test(result, *equations: str, vcov: np.ndarray | None = None) -> dict:
    """Joint Wald test of linear hypotheses (Stata ``test``): chi2, df, p."""
    L, r = hypothesis_matrix(result, *equations)
    V = result.vcov.to_numpy() if vcov is None else vcov
    diff = L @ result.fixef.to_numpy() - r
    chi2 = float(diff @ np.linalg.solve(L @ V @ L.T, diff))
    df = int(np.linalg.matrix_rank(L))
    return {"chi2": chi2, "df": df, "p": float(st.chi2.sf(chi2, df))}


# ---------------------------------------------------------------------------- robust covariance
def robust_vcov(result, group: str | None = None, small_sample: bool = True) -> pd.DataFrame:
    """Cluster-robust (sandwich) covariance of the fixed effects (Stata ``vce(robust)``).

    ``B^{-1} (sum_c X_c' V_c^{-1} r_c r_c' V_c^{-1} X_c) B^{-1}`` with ``B = X' V^{-1} X``,
    ``r = y - X beta`` and clusters ``c`` the levels of ``group`` (default: the factor with
    fewest levels; every other factor must nest in it).  ``small_sample`` multiplies by
    ``C / (C - 1)`` for C clusters.
    """
    require_rows(result, "The robust (sandwich) covariance")
    if getattr(result, "rside", None) is not None:
        raise ValueError("Robust standard errors are not available with a residual structure yet.")
    blocks = result.design.blocks
    top = min(blocks, key=lambda b: b.n_levels) if group is None else next(b for b in blocks if b.name == group)
    for block in blocks:
        if not _nested_within(block.factor, top.factor):
            raise ValueError(f"{block.name!r} is not nested in {top.name!r}; cluster at a factor every level nests in.")
    X, y = result.design.X, result.design.y
    w = result.design.weights if result.design.weights is not None else np.ones(len(y))
    r = y - X @ result.fixef.to_numpy()
    order = np.argsort(top.codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(top.codes, minlength=top.n_levels))])
    scores = np.zeros((top.n_levels, X.shape[1]))
    for c in range(top.n_levels):
        rows = order[bounds[c] : bounds[c + 1]]
        V = np.diag(result.sigma**2 / w[rows])
        for block in blocks:
            Z = block.Z[rows]
            same = block.codes[rows][:, None] == block.codes[rows][None, :]
            V += (Z @ result.G[block.name].to_numpy() @ Z.T) * same
        cho = np.linalg.cholesky(V)
        Vi_X = np.linalg.solve(cho.T, np.linalg.solve(cho, X[rows]))
        scores[c] = Vi_X.T @ r[rows]
    bread = result.vcov.to_numpy()
    meat = scores.T @ scores
    factor = top.n_levels / (top.n_levels - 1) if small_sample else 1.0
    names = result.fixef.index
    return pd.DataFrame(factor * bread @ meat @ bread, index=names, columns=names)
