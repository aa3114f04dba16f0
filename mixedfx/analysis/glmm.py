"""Inference and prediction for generalized linear mixed models.

- :func:`coef_table`: Wald z tests and normal CIs of the fixed effects; ``eform=True`` gives
  odds ratios (logit) or incidence-rate ratios (log): ``exp(b)``, SE ``exp(b) SE(b)`` (delta
  method) and the CI ``exp(b -+ z SE)``, as Stata's ``or`` / ``irr``;
- :func:`varcomp_table`: variances (or SDs) and covariances (or correlations) with SEs by the
  delta method from ``2 H^-1`` of the deviance in theta, CIs on the log (variances, SDs) and
  atanh (correlations) scales, as Stata;
- :func:`lr_test_vs_glm`: the LR test against the model without random effects (``chibar2(01)``
  for one variance, otherwise a conservative ``chi2``);
- :func:`latent_icc`: the latent-response ICC ``sigma_u^2 / (sigma_u^2 + pi^2/3)`` (logit) or
  ``/(sigma_u^2 + 1)`` (probit);
- :func:`ranef`: conditional modes with conditional SDs (lme4's ``ranef(condVar = TRUE)``);
- :func:`predict`: the linear predictor or the mean, conditional on the modes
  (``conditional``), with random effects 0 (``fixed``), or averaged over the random effects
  (``marginal``, population-averaged: ``E[g^-1(x b + z'u)]``, u normal, by Gauss-Hermite).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as st

from ..data.columns import offset_values
from ..data.design import ReBlock
from ..engine.laplace import gauss_hermite
from ..errors import OptionError
from ..results.glmm import GLMMRecord
from ..spec.options import two_sided_quantile
from .lrtest import LRTest
from .prediction import _complete_new_rows, _defined_rows, _new_codes, _random_matrix, fixed_matrix
from .wald import z_columns

#: Nodes of the Gauss-Hermite rule for population-averaged means.
MARGINAL_NODES = 40


def eform_name(record: GLMMRecord) -> str:
    """Stata's name of exponentiated coefficients: odds ratio, incidence-rate ratio, or exp(b)."""
    link = record.family.link
    return {"logit": "Odds Ratio", "log": "IRR"}.get(link, "exp(b)")


def coef_table(record: GLMMRecord, level: float = 95, eform: bool = False) -> pd.DataFrame:
    """Estimate, SE, z, p and CI of each fixed effect (exponentiated with ``eform``)."""
    est, se = record.fixef, record.se
    table = pd.DataFrame(z_columns(est, se, level))
    if eform:
        table["estimate"] = np.exp(est)
        table["se"] = np.exp(est) * se
        table["lower"], table["upper"] = np.exp(table["lower"]), np.exp(table["upper"])
    return table


def wald_chi2(record: GLMMRecord) -> tuple[float, int, float]:
    """Wald test that every fixed effect but the intercept is zero: ``(chi2, df, p)``."""
    names = [n for n in record.fixef.index if n != "(Intercept)"]
    if not names:
        return float("nan"), 0, float("nan")
    b = record.fixef[names].to_numpy()
    V = record.vcov.loc[names, names].to_numpy()
    chi2 = float(b @ np.linalg.solve(V, b))
    return chi2, len(names), float(st.chi2.sf(chi2, len(names)))


# ---------------------------------------------------------------------------- variance components
def theta_covariance(record: GLMMRecord) -> np.ndarray:
    """``2 H^-1`` of the deviance, its theta block (zero rows for theta held on a bound)."""
    opt = record.optimum
    k = record.theta.size
    free_theta = opt.free[:k]
    V = np.zeros((k, k))
    n_free = int(free_theta.sum())
    if n_free:
        H_inverse = np.linalg.inv(opt.hessian)
        V[np.ix_(free_theta, free_theta)] = 2.0 * H_inverse[:n_free, :n_free]
    return V


def _components(record: GLMMRecord, theta: np.ndarray) -> list[tuple[str, str, float]]:
    """``(group, label, value)`` of every variance and covariance at ``theta`` (varcorr's order)."""
    out = []
    for block, lam in zip(record.design.blocks, record.data.lambdas(theta)):
        G = lam @ lam.T
        for term in block.terms:
            idx = list(range(G.shape[0]))[term.columns]
            for i in idx:
                out.append((block.name, _display(block.names[i]), G[i, i]))
            if term.structure.kind in ("unstructured", "exchangeable"):
                for a, i in enumerate(idx):
                    for j in idx[a + 1 :]:
                        out.append((block.name, f"{_display(block.names[i])},{_display(block.names[j])}", G[i, j]))
    return out


def _display(name: str) -> str:
    return "_cons" if name == "(Intercept)" else name


def varcomp_table(record: GLMMRecord, level: float = 95, scale: str = "var") -> pd.DataFrame:
    """Random-effects parameters: ``var(...)``/``cov(...)`` or ``sd(...)``/``corr(...)`` with SE and CI."""
    if scale not in ("var", "sd"):
        raise OptionError(f"scale must be 'var' or 'sd', not {scale!r}.")
    theta = record.theta
    base = _components(record, theta)
    values = np.array([v for _, _, v in base])
    J = np.empty((values.size, theta.size))  # d component / d theta (components are quadratic: exact steps)
    for k in range(theta.size):
        h = 1e-6 * max(1.0, abs(theta[k]))
        up, down = theta.copy(), theta.copy()
        up[k] += h
        down[k] -= h
        J[:, k] = (np.array([v for *_, v in _components(record, up)]) - [v for *_, v in _components(record, down)]) / (
            2 * h
        )
    V = J @ theta_covariance(record) @ J.T
    q = two_sided_quantile(level)
    rows = []
    variances = {(g, label): v for g, label, v in base if "," not in label}
    for i, (group, label, value) in enumerate(base):
        se = float(np.sqrt(max(V[i, i], 0.0)))
        if "," not in label:
            est, est_se = (
                (value, se) if scale == "var" else (np.sqrt(value), se / (2 * np.sqrt(value)) if value > 0 else np.nan)
            )
            lower, upper = _log_interval(est, est_se, q)
            rows.append((group, f"{scale}({label})", est, est_se, lower, upper))
            continue
        if scale == "var":
            rows.append((group, f"cov({label})", value, se, value - q * se, value + q * se))
            continue
        a, b = label.split(",")
        sa, sb = np.sqrt(variances[(group, a)]), np.sqrt(variances[(group, b)])
        corr = value / (sa * sb) if sa > 0 and sb > 0 else np.nan
        corr_se = se / (sa * sb) if sa > 0 and sb > 0 else np.nan  # first order, variances held
        lower, upper = _atanh_interval(corr, corr_se, q)
        rows.append((group, f"corr({label})", corr, corr_se, lower, upper))
    return pd.DataFrame(rows, columns=["group", "parameter", "estimate", "se", "lower", "upper"])


def _log_interval(est: float, se: float, q: float) -> tuple[float, float]:
    if not (est > 0 and np.isfinite(se) and se > 0):
        return np.nan, np.nan
    return est * np.exp(-q * se / est), est * np.exp(q * se / est)


def _atanh_interval(r: float, se: float, q: float) -> tuple[float, float]:
    if not (np.isfinite(r) and abs(r) < 1 and np.isfinite(se)):
        return np.nan, np.nan
    z, z_se = np.arctanh(r), se / (1 - r * r)
    return float(np.tanh(z - q * z_se)), float(np.tanh(z + q * z_se))


def lr_test_vs_glm(record: GLMMRecord) -> LRTest:
    """LR test of the random effects against the GLM without them (Stata's "LR test vs. logistic model")."""
    statistic = max(0.0, 2.0 * (record.loglik - record.glm_loglik))
    k = record.theta.size
    label = {"binomial": "LR test vs. logistic model", "poisson": "LR test vs. Poisson model"}[record.family.name]
    if record.family.link != "logit" and record.family.name == "binomial":
        label = f"LR test vs. {record.family.link} model"
    if k == 1:
        return LRTest(statistic, 1, 0.5 * st.chi2.sf(statistic, 1), "chibar2(01)", label)
    return LRTest(statistic, k, st.chi2.sf(statistic, k), "chi2", label)


def latent_icc(record: GLMMRecord) -> pd.DataFrame:
    """The latent-response intraclass correlation of each random intercept (binomial models).

    For a logit link the latent residual variance is ``pi^2 / 3``, for a probit 1 (and
    ``pi^2 / 6`` for the complementary log-log); with several factors the ICC of a level is
    its variance (and those of the factors it is nested in) over the total.
    """
    if record.family.name != "binomial":
        raise OptionError("The latent-response ICC is defined for binomial models (logit, probit, cloglog links).")
    residual = {"logit": np.pi**2 / 3, "probit": 1.0, "cloglog": np.pi**2 / 6}[record.family.link]
    variances = {}
    for block in record.design.blocks:
        if "(Intercept)" not in block.names or block.q != 1:
            raise OptionError("The ICC needs random intercepts only (no random slopes).")
        variances[block.name] = float(record.G[block.name].iloc[0, 0])
    total = residual + sum(variances.values())
    return pd.DataFrame({"variance": variances, "icc": {k: v / total for k, v in variances.items()}})


# ---------------------------------------------------------------------------- conditional modes
def ranef(record: GLMMRecord) -> dict[str, pd.DataFrame]:
    """Conditional modes per factor with conditional SDs (columns ``<effect>`` and ``se(<effect>)``)."""
    out = {}
    for block, b, V in zip(record.design.blocks, record.modes, record.mode_covariances):
        frame = pd.DataFrame(b, index=pd.Index(list(block.levels), name=block.name), columns=block.names)
        for a, name in enumerate(block.names):
            frame[f"se({name})"] = np.sqrt(V[:, a, a])
        out[block.name] = frame
    return out


# ---------------------------------------------------------------------------- predictions
KINDS = ("link", "response")
LEVELS = ("conditional", "fixed", "marginal")


def predict(
    record: GLMMRecord,
    newdata: pd.DataFrame | None = None,
    kind: str = "response",
    level: str = "conditional",
    interval: bool = False,
    ci_level: float = 95,
) -> pd.DataFrame:
    """Predictions with columns ``prediction`` (and ``lower``, ``upper`` with ``interval``).

    ``kind``: ``"link"`` (the linear predictor) or ``"response"`` (probability or rate);
    ``level``: ``"conditional"`` (at the conditional modes; a level the fit never saw has
    effect 0), ``"fixed"`` (random effects 0) or ``"marginal"`` (averaged over the random
    effects' distribution; response scale only).  Intervals: normal on the link scale from
    ``x'V x`` (and, conditionally, ``z'Var(b|y)z``), transformed to the response scale; for
    marginal means by the delta method in beta given the variance components (see
    :func:`_marginal_interval`; columns ``lower``, ``upper``, ``se`` on the response scale).
    """
    if kind not in KINDS:
        raise OptionError(f"kind must be 'link' or 'response', not {kind!r}.")
    if level not in LEVELS:
        raise OptionError(f"level must be 'conditional', 'fixed' or 'marginal', not {level!r}.")
    if level == "marginal" and kind == "link":
        raise OptionError("Population-averaged (marginal) predictions are means: use kind='response'.")
    X, offset, Zs, codes, index, defined = _prediction_rows(record, newdata)
    eta_fixed = offset + X @ record.fixef.to_numpy()
    var_fixed = np.einsum("ij,jk,ik->i", X, record.vcov.to_numpy(), X)
    random_part, var_random, marginal_var = np.zeros(len(X)), np.zeros(len(X)), np.zeros(len(X))
    for block, Z, c, b, Vb in zip(record.design.blocks, Zs, codes, record.modes, record.mode_covariances):
        seen = c >= 0
        G = record.G[block.name].to_numpy()
        marginal_var += np.einsum("ij,jk,ik->i", Z, G, Z)
        random_part[seen] += np.einsum("ij,ij->i", Z[seen], b[c[seen]])
        var_random[seen] += np.einsum("ij,ijk,ik->i", Z[seen], Vb[c[seen]], Z[seen])
    if level == "marginal":
        prediction = _marginal_mean(record, eta_fixed, marginal_var)
        out = pd.DataFrame({"prediction": prediction}, index=index)
        if interval:
            out["lower"], out["upper"], out["se"] = _marginal_interval(
                record, X, eta_fixed, marginal_var, prediction, ci_level
            )
        return _undefined(out, defined)
    eta = eta_fixed + (random_part if level == "conditional" else 0.0)
    se = np.sqrt(var_fixed + (var_random if level == "conditional" else 0.0))
    transform = record.family.mean if kind == "response" else (lambda x: x)
    out = pd.DataFrame({"prediction": transform(eta)}, index=index)
    if interval:
        q = two_sided_quantile(ci_level)
        out["lower"], out["upper"] = transform(eta - q * se), transform(eta + q * se)
        out["se_link"] = se
    return _undefined(out, defined)


def _undefined(out: pd.DataFrame, defined: np.ndarray) -> pd.DataFrame:
    out.loc[~defined, :] = np.nan
    return out


def _prediction_rows(record: GLMMRecord, newdata: pd.DataFrame | None):
    """``(X, offset, Z per factor, codes per factor, index, defined)`` of the fitted or new rows."""
    design = record.design
    if newdata is None:
        offset = np.zeros(design.nobs) if design.offset is None else design.offset
        Zs = [b.Z for b in design.blocks]
        return design.X, offset, Zs, [b.codes for b in design.blocks], design.row_index, np.ones(design.nobs, bool)
    if not isinstance(newdata, pd.DataFrame):
        raise OptionError(f"newdata must be a pandas DataFrame, not {type(newdata).__name__}.")
    complete = _complete_new_rows(record, newdata)
    rows = newdata.loc[complete]
    X = np.full((len(newdata), len(design.fixed_names)), np.nan)
    X[complete] = fixed_matrix(record, rows)
    offset = np.zeros(len(newdata))
    if design.formula.offsets:
        from_rows = offset_values(design.formula, rows)
        offset[complete] = from_rows
        offset[~complete] = np.nan
    Zs, codes = [], []
    for block in design.blocks:
        Z = np.full((len(newdata), block.q), np.nan)
        Z[complete] = _random_matrix(block, rows)
        Zs.append(Z)
        codes.append(_codes_or_unseen(block, newdata))
    defined = complete & _defined_rows(record, np.nan_to_num(X, nan=0.0), [np.nan_to_num(Z) for Z in Zs], None)
    defined &= np.isfinite(X).all(axis=1) & np.isfinite(offset)
    return np.nan_to_num(X), np.nan_to_num(offset), [np.nan_to_num(Z) for Z in Zs], codes, newdata.index, defined


def _codes_or_unseen(block: ReBlock, data: pd.DataFrame) -> np.ndarray:
    if not all(name in data.columns for name in block.factor):
        return np.full(len(data), -1)
    return _new_codes(block, data)


def _marginal_interval(
    record: GLMMRecord, X: np.ndarray, eta: np.ndarray, variance: np.ndarray, mean: np.ndarray, ci_level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Delta-method interval of the marginal mean ``m(beta) = E[g^-1(x'beta + sqrt(v) z)]``, given
    the estimated variance components: ``dm/dbeta = E[dmu/deta] x``, ``se = sqrt(d'V d)``,
    normal on the logit (binomial) or log (Poisson) of ``m`` so that it stays in range."""
    nodes, log_w = gauss_hermite(MARGINAL_NODES)
    weights = np.exp(log_w - 0.5 * nodes**2) / np.sqrt(2 * np.pi)
    sd = np.sqrt(variance)
    slope = sum(w * np.exp(record.family.log_mu_eta(eta + sd * z)) for z, w in zip(nodes, weights))
    gradient = slope[:, None] * X
    se = np.sqrt(np.einsum("ij,jk,ik->i", gradient, record.vcov.to_numpy(), gradient))
    q = two_sided_quantile(ci_level)
    if record.family.name == "binomial":
        centre, scale = np.log(mean) - np.log1p(-mean), se / (mean * (1.0 - mean))
        lower, upper = centre - q * scale, centre + q * scale
        return 1.0 / (1.0 + np.exp(-lower)), 1.0 / (1.0 + np.exp(-upper)), se
    centre, scale = np.log(mean), se / mean
    return np.exp(centre - q * scale), np.exp(centre + q * scale), se


def _marginal_mean(record: GLMMRecord, eta: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """``E[g^-1(eta + sqrt(v) z)]``, ``z ~ N(0, 1)``, by Gauss-Hermite quadrature."""
    nodes, log_w = gauss_hermite(MARGINAL_NODES)
    weights = np.exp(log_w - 0.5 * nodes**2) / np.sqrt(2 * np.pi)
    sd = np.sqrt(variance)
    return sum(w * record.family.mean(eta + sd * z) for z, w in zip(nodes, weights))
