"""Denominator degrees of freedom for small-sample t and F tests of fixed effects.

Satterthwaite (as lmerTest): for a contrast ``l``, ``df = 2 (l'C l)^2 / (g' A g)`` where
``C(v)`` is the covariance of beta as a function of ``v = (theta, sigma)``, ``g`` its
gradient (central differences) and ``A = 2 H^{-1}`` with ``H`` the Hessian of the deviance
in ``v``.  Several contrasts use
lmerTest's F method: ``nu = 2E / (E - q)`` with ``E = sum nu_i / (nu_i - 2)`` over the
eigen-contrasts.

Kenward-Roger (as pbkrtest): with ``Sigma = sum_i s_i G_i`` linear in the variance
parameters ``s_i`` (variances, covariances, residual), ``Phi = (X' Sigma^{-1} X)^{-1}``,
``P_i = -X' Sigma^{-1} G_i Sigma^{-1} X``, ``Q_ij = X' Sigma^{-1} G_i Sigma^{-1} G_j Sigma^{-1} X``
and ``W = 2 I_E^{-1}`` (expected REML information), the adjusted covariance is
``Phi_A = Phi + 2 Phi [sum_ij W_ij (Q_ij - P_i Phi P_j)] Phi`` and the df follow from
Kenward & Roger (1997, Biometrics 53:983).  Sigma is block diagonal over independent
clusters, so every product is formed cluster by cluster.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ..engine.numdiff import central_hessian
from ..errors import OptionError
from ..results import FitRecord

#: Largest independent cluster (rows) for which Kenward-Roger forms dense matrices.
KR_MAX_CLUSTER = 6000


# ---------------------------------------------------------------------------- Satterthwaite
def _varpar_functions(result: FitRecord):
    """Deviance and beta covariance as functions of lmerTest's ``varpar = (theta, sigma)``.

    ``sigma`` is the residual SD the engine's theta is relative to (:attr:`FitRecord.sigma_lambda`).
    """
    dev = result.deviance
    scale = result.scaling.y_scale

    def deviance(vp: np.ndarray) -> float:
        sigma2_tilde = (vp[-1] / scale) ** 2
        return result.deviance_to_original_scale(dev.deviance_at(vp[:-1], sigma2_tilde))

    def beta_cov(vp: np.ndarray) -> np.ndarray:
        sol = dev.solve(vp[:-1])
        Rinv = np.linalg.inv(sol.RX)
        return result.scaling.beta_cov((vp[-1] / scale) ** 2 * (Rinv.T @ Rinv))

    return deviance, beta_cov


def _cov_jacobian(result: FitRecord, step: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vcov of beta, its derivatives w.r.t. (theta, sigma) (k, p, p), and Cov(theta_hat, sigma_hat).

    The parameterisation is lmerTest's, so that the df agree with it near a boundary too
    (Satterthwaite's df is invariant to reparameterisation only to first order).
    """
    deviance, beta_cov = _varpar_functions(result)
    vp = np.append(result.theta_engine, result.sigma_lambda)
    steps = step * np.maximum(np.abs(vp), 1e-2)
    k = vp.size
    H = central_hessian(deviance, vp, steps)
    try:
        A = 2 * np.linalg.inv(H)
    except np.linalg.LinAlgError:
        A = np.full((k, k), np.nan)
    if result.singular or not np.all(np.diag(A) > 0):
        A = np.full((k, k), np.nan)
    jac = np.empty((k,) + result.vcov.shape)
    for i in range(k):
        e = np.zeros(k)
        e[i] = steps[i]
        jac[i] = (beta_cov(vp + e) - beta_cov(vp - e)) / (2 * steps[i])
    return result.vcov.to_numpy(), jac, A


def satterthwaite_df(result: FitRecord, L: np.ndarray, cache: tuple | None = None) -> float:
    """Satterthwaite df of the contrasts in the rows of ``L`` (one row: t test; several: F test)."""
    C, jac, A = cache if cache is not None else _cov_jacobian(result)
    L = np.atleast_2d(L)
    if not np.all(np.isfinite(A)):
        return np.nan
    if L.shape[0] == 1:
        row = L[0]
        var = row @ C @ row
        g = np.einsum("i,kij,j->k", row, jac, row)
        return float(2 * var**2 / (g @ A @ g))
    vals, vecs = np.linalg.eigh(L @ C @ L.T)
    contrasts = (vecs.T @ L) / np.sqrt(vals)[:, None]
    nus = np.array([satterthwaite_df(result, c, (C, jac, A)) for c in contrasts])
    E = np.sum(nus[nus > 2] / (nus[nus > 2] - 2))
    q = L.shape[0]
    return float(2 * E / (E - q)) if E > q else np.nan


# ---------------------------------------------------------------------------- Kenward-Roger
def _basis(structure, q: int) -> list[np.ndarray]:
    """Matrices E_k with G = sum_k s_k E_k for the structure's natural variance parameters."""
    kind = structure.kind
    if kind == "identity":
        return [np.eye(q)]
    if kind == "exchangeable" and q > 1:
        return [np.eye(q), np.ones((q, q)) - np.eye(q)]
    out = []
    for a in range(q):
        E = np.zeros((q, q))
        E[a, a] = 1.0
        out.append(E)
    if kind == "unstructured":
        for a in range(q):
            for c in range(a + 1, q):
                E = np.zeros((q, q))
                E[a, c] = E[c, a] = 1.0
                out.append(E)
    return out


def _components(result: FitRecord) -> tuple[int, np.ndarray]:
    """Independent clusters of rows (connected through shared levels of any factor)."""
    blocks = result.design.blocks
    offsets = np.cumsum([0] + [b.n_levels for b in blocks])
    n_nodes = offsets[-1]
    rows, cols = [], []
    for k in range(1, len(blocks)):
        rows.append(blocks[0].codes + offsets[0])
        cols.append(blocks[k].codes + offsets[k])
    if rows:
        r, c = np.concatenate(rows), np.concatenate(cols)
        graph = sp.coo_matrix((np.ones(r.size), (r, c)), shape=(n_nodes, n_nodes))
    else:
        graph = sp.coo_matrix((n_nodes, n_nodes))
    n_comp, labels = connected_components(graph, directed=False)
    return n_comp, labels[blocks[0].codes]


def _sigma_parts(result: FitRecord, rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Derivative matrices G_i (restricted to ``rows``) and Sigma for one cluster."""
    parts = []
    Sigma = np.zeros((rows.size, rows.size))
    for block in result.design.blocks:
        same = block.codes[rows][:, None] == block.codes[rows][None, :]
        Gb = result.G[block.name].to_numpy()
        for term in block.terms:
            Z = block.Z[rows][:, term.columns]
            for E in _basis(term.structure, term.structure.q):
                parts.append((Z @ E @ Z.T) * same)
        Zb = block.Z[rows]
        Sigma += (Zb @ Gb @ Zb.T) * same
    w = result.design.weights[rows] if result.design.weights is not None else np.ones(rows.size)
    parts.append(np.diag(1.0 / w))
    Sigma += result.sigma**2 * np.diag(1.0 / w)
    return parts, Sigma


def kenward_roger(result: FitRecord) -> dict:
    """Adjusted covariance ``Phi_A`` and the pieces (Phi, P, W) for Kenward-Roger df."""
    result.require_rows("Kenward-Roger")
    if result.method != "REML":
        raise OptionError("Kenward-Roger degrees of freedom need a REML fit; refit with method='reml'.")
    n_comp, labels = _components(result)
    sizes = np.bincount(labels, minlength=n_comp)
    if sizes.max() > KR_MAX_CLUSTER:
        raise OptionError(
            f"Kenward-Roger needs dense matrices per independent cluster; the largest has {sizes.max()} rows "
            f"(limit {KR_MAX_CLUSTER}). Use dfmethod='satterthwaite'."
        )
    X = result.design.X
    p = X.shape[1]
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    XtSiX = np.zeros((p, p))
    P_parts: list[np.ndarray] | None = None
    Q_parts: dict[tuple[int, int], np.ndarray] = {}
    Ktrace = None
    for c in range(n_comp):
        rows = order[bounds[c] : bounds[c + 1]]
        parts, Sigma = _sigma_parts(result, rows)
        cho = np.linalg.cholesky(Sigma)
        Sinv = np.linalg.solve(cho.T, np.linalg.solve(cho, np.eye(rows.size)))
        U = Sinv @ X[rows]
        H = [G @ Sinv for G in parts]
        GU = [G @ U for G in parts]  # G_i Sigma^{-1} X
        k = len(parts)
        if P_parts is None:
            P_parts = [np.zeros((p, p)) for _ in range(k)]
            Ktrace = np.zeros((k, k))
        XtSiX += X[rows].T @ U
        for i in range(k):
            P_parts[i] -= U.T @ GU[i]
            for j in range(i, k):
                Q_parts[(i, j)] = Q_parts.get((i, j), 0) + GU[i].T @ Sinv @ GU[j]
                Ktrace[i, j] += np.sum(H[i] * H[j].T)
    k = len(P_parts)
    Phi = np.linalg.inv(XtSiX)
    IE2 = np.zeros((k, k))
    for i in range(k):
        for j in range(i, k):
            IE2[i, j] = IE2[j, i] = (
                Ktrace[i, j] - 2 * np.sum(Phi * Q_parts[(i, j)]) + np.sum((Phi @ P_parts[i]) * (P_parts[j] @ Phi))
            )
    W = 2 * np.linalg.pinv(IE2) if np.min(np.abs(np.linalg.eigvalsh(IE2))) <= 1e-10 else 2 * np.linalg.inv(IE2)
    UU = np.zeros((p, p))
    for i in range(k):
        for j in range(i, k):
            term = W[i, j] * (Q_parts[(i, j)] - P_parts[i] @ Phi @ P_parts[j])
            UU += term if i == j else term + term.T
    Phi_A = Phi + 2 * Phi @ UU @ Phi
    return {"Phi": Phi, "Phi_A": Phi_A, "P": P_parts, "W": W}


def kr_df(kr: dict, L: np.ndarray) -> tuple[float, float]:
    """Kenward-Roger denominator df and F scaling for the contrasts in the rows of ``L``."""
    L = np.atleast_2d(L)
    Phi, P, W = kr["Phi"], kr["P"], kr["W"]
    q = L.shape[0]
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    A1 = A2 = 0.0
    k = len(P)
    for i in range(k):
        for j in range(i, k):
            e = 1.0 if i == j else 2.0
            ui = Theta @ Phi @ P[i] @ Phi
            uj = Theta @ Phi @ P[j] @ Phi
            A1 += e * W[i, j] * np.trace(ui) * np.trace(uj)
            A2 += e * W[i, j] * np.sum(ui * uj.T)
    B = (A1 + 6 * A2) / (2 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    denom = 3 * q + 2 * (1 - g)
    c1, c2, c3 = g / denom, (q - g) / denom, (q + 2 - g) / denom
    E_star = 1 / (1 - A2 / q)
    V_star = (2 / q) * (1 + c1 * B) / ((1 - c2 * B) ** 2 * (1 - c3 * B))
    rho = V_star / (2 * E_star**2)
    df = 4 + (q + 2) / (q * rho - 1)
    scale = df / (E_star * (df - 2))
    return float(df), float(scale)


# ---------------------------------------------------------------------------- per-coefficient tables
def coefficient_df(result: FitRecord, method: str) -> tuple[pd.Series, pd.DataFrame]:
    """Per-coefficient denominator df and the covariance to use (KR: the adjusted one)."""
    result.require_likelihood("Denominator degrees of freedom (Satterthwaite, Kenward-Roger)")
    if result.rside is not None:
        raise OptionError("Satterthwaite and Kenward-Roger df are not available with a residual structure yet.")
    method = method.lower().replace("-", "").replace("_", "")
    names = result.fixef.index
    p = len(names)
    if method in ("satterthwaite", "satt", "sw"):
        cache = _cov_jacobian(result)
        dfs = [satterthwaite_df(result, np.eye(p)[j], cache) for j in range(p)]
        return pd.Series(dfs, index=names, name="df"), result.vcov
    if method in ("kroger", "kenwardroger", "kr"):
        kr = kenward_roger(result)
        dfs = [kr_df(kr, np.eye(p)[j])[0] for j in range(p)]
        return pd.Series(dfs, index=names, name="df"), pd.DataFrame(kr["Phi_A"], index=names, columns=names)
    raise OptionError(f"Unknown dfmethod {method!r}: use 'satterthwaite' or 'kroger'.")
