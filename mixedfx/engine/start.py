"""Starting values for the covariance parameters from per-cluster least squares (moments).

For one grouping factor the sufficient statistics give, cheaply and without the rows:

- the pooled OLS fit ``beta0`` and its residuals' cross-products ``g_j = Z_j'(y_j - X_j beta0)``;
- per cluster with a well-conditioned ``S_j = Z_j'Z_j``, the least-squares random effects
  ``b_j = S_j^{-1} g_j`` (what the lecture's per-cluster OLS lines estimate);
- the within-cluster residual variance ``s^2 = (RSS - sum_j g_j'S_j^{-1}g_j) / (n - p - q m')``;
- the moment estimate ``G = Cov(b_j) - s^2 mean(S_j^{-1})`` (the sampling noise of ``b_j``
  removed, as in Swamy's random-coefficient estimator).

``G / s^2`` is projected on the term's structure and on the positive semi-definite cone
and turned into ``theta``.  Starting there instead of at ``Lambda = I`` saves the optimiser
a third of its iterations on large two-level models; whenever the moments are unusable
(too few clusters with enough observations, non-finite values) the default start stays.

Crossed or nested factors with random intercepts only get an ANOVA-type (Henderson method 1)
start: with OLS residuals ``r``, the sums of squares ``r'r`` and ``Q_k = sum_j (Z_k'r)_j^2 / n_kj``
have expectations (ignoring the fixed effects' few degrees of freedom)
``E[r'r] = n (s^2 + sum_l v_l)`` and ``E[Q_k] = m_k s^2 + sum_l v_l c_kl`` with
``c_kl = sum_j sum_h N_kl[j, h]^2 / n_kj`` (``N_kl`` the levels' cross-counts, ``c_kk = n``),
a linear system for the residual variance ``s^2`` and the factors' variances ``v_k``.
"""

from __future__ import annotations

import numpy as np

from . import batched
from .covariance import BlockLayout, CovStructure
from .deviance import ProfiledDeviance
from .stats import SufficientStats

#: First-step length of the optimiser (in theta units) from a moment start, which is close.
MOMENT_START_STEP = 0.1

#: Fewest clusters with a well-conditioned ``Z_j'Z_j`` for a moment start.
MIN_CLUSTERS = 10

#: Smallest starting relative SD: a start exactly on a zero-variance bound is a stationary point.
MIN_RELATIVE_SD = 0.05


def _well_conditioned(L: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Clusters whose Cholesky pivots of ``S_j`` are all finite and not tiny relative to ``S_j``'s diagonal."""
    q = S.shape[0]
    ok = np.ones(S.shape[2], dtype=bool)
    for a in range(q):
        pivot = L[a, a]
        ok &= np.isfinite(pivot) & (pivot * pivot > 1e-8 * np.maximum(S[a, a], 1e-300))
    return ok


def _project(G: np.ndarray, structure: CovStructure) -> np.ndarray:
    """``G`` in the form of ``structure`` (before the positive semi-definite projection)."""
    q = G.shape[0]
    if structure.kind == "identity":
        return np.eye(q) * np.trace(G) / q
    if structure.kind == "independent":
        return np.diag(np.diag(G))
    if structure.kind == "exchangeable" and q > 1:
        variance = np.trace(G) / q
        covariance = (G.sum() - np.trace(G)) / (q * (q - 1))
        return (variance - covariance) * np.eye(q) + covariance
    return G


def _psd(G: np.ndarray, floor: float) -> np.ndarray:
    """Nearest symmetric matrix with eigenvalues at least ``floor``."""
    values, vectors = np.linalg.eigh((G + G.T) / 2)
    return (vectors * np.maximum(values, floor)) @ vectors.T


def moment_start(stats: SufficientStats, terms: list[tuple[slice, CovStructure]], default: np.ndarray) -> np.ndarray:
    """``theta`` from the moment estimate of ``G / sigma^2`` (see the module docstring), else ``default``.

    ``terms`` lists the first factor's terms as (columns, structure) in parameter order.
    """
    if stats.rest_Z1 is not None or stats.first_q == 0 or stats.p == 0:
        return default
    with np.errstate(all="ignore"):
        theta = _moment_theta(stats, terms)
    if theta is None or theta.shape != default.shape or not np.all(np.isfinite(theta)):
        return default
    return theta


#: Clusters per chunk of the moment computation (bounds its temporaries for 10^7 clusters).
CHUNK = 100_000


def _cluster_moments(S: np.ndarray, g: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, float]:
    """Over the well-conditioned clusters of a chunk: count, sum b_j, sum b_j b_j', sum S_j^{-1}, sum g_j'b_j."""
    L = batched.cholesky(S)
    ok = _well_conditioned(L, S)
    L, g = L[:, :, ok], g[:, ok]
    b = batched.solve_upper_from_lower(L, batched.solve_lower(L, g))  # S_j^{-1} g_j
    inverse_sum = batched.inverse_from_cholesky(L).sum(axis=2)
    return int(ok.sum()), b.sum(axis=1), b @ b.T, inverse_sum, float(np.einsum("am,am->", b, g))


def starting_point(deviance: ProfiledDeviance, default: np.ndarray) -> tuple[np.ndarray, float]:
    """``(theta0, step_scale)`` for :func:`mixedfx.engine.optimize.minimize_deviance`.

    One grouping factor: the moment start and a short first step; several factors with
    random intercepts only: the ANOVA start and a short first step; otherwise ``default`` and 1.
    """
    deviance.claim_statistics()  # statistics shared with other fits: in this deviance's columns
    layouts = deviance.layouts
    if deviance.stats.rest_Z1 is None:
        return moment_start(deviance.stats, layouts[0].terms, default), MOMENT_START_STEP
    with np.errstate(all="ignore"):
        theta = _intercepts_theta(deviance.stats, layouts)
    if theta is None or theta.shape != default.shape or not np.all(np.isfinite(theta)):
        return default, 1.0
    return theta, MOMENT_START_STEP


def _moment_theta(stats: SufficientStats, terms: list[tuple[slice, CovStructure]]) -> np.ndarray | None:
    q, p, n, m = stats.first_q, stats.p, stats.n, stats.n_first_levels
    try:
        beta = np.linalg.solve(stats.XtX, stats.Xty)
    except np.linalg.LinAlgError:
        return None
    v = np.append(-beta, 1.0)
    count, b_sum, bb_sum, inverse_sum, between = 0, np.zeros(q), np.zeros((q, q)), np.zeros((q, q)), 0.0
    for start in range(0, m, CHUNK):
        sl = slice(start, min(start + CHUNK, m))
        if stats.first_ZtW is not None:
            g = np.stack([v @ stats.first_ZtW[a, :, sl] for a in range(q)])  # Z_j'(y_j - X_j beta0)
        else:
            g = np.stack([v[:p] @ stats.first_ZtX[a, :, sl] + stats.first_Zty[a, sl] for a in range(q)])
        c, bs, bb, inv, btw = _cluster_moments(np.ascontiguousarray(stats.first_ZtZ[:, :, sl]), g)
        count, between = count + c, between + btw
        b_sum, bb_sum, inverse_sum = b_sum + bs, bb_sum + bb, inverse_sum + inv
    if count < max(MIN_CLUSTERS, 2 * q) or n - p - q * count <= 0:
        return None
    rss = float(v @ (np.block([[stats.XtX, stats.Xty[:, None]], [stats.Xty[None, :], stats.yty]]) @ v))
    sigma2 = (rss - between) / (n - p - q * count)
    if not sigma2 > 0:
        return None
    mean_b = b_sum / count
    G = (bb_sum - count * np.outer(mean_b, mean_b)) / (count - 1)  # covariance of the b_j
    Gr = (G - sigma2 * inverse_sum / count) / sigma2
    thetas = []
    for columns, structure in terms:
        block = _psd(_project(Gr[columns, columns], structure), MIN_RELATIVE_SD**2)
        theta = structure.theta_from_relative_covariance(block)
        lower, upper = structure.lower_bounds(), structure.upper_bounds()
        finite_upper = np.where(np.isfinite(upper), upper - 0.01, np.inf)
        thetas.append(np.clip(theta, lower, finite_upper))
    return np.concatenate(thetas)


def _is_random_intercept(layout: BlockLayout) -> bool:
    """Whether a block is one random-intercept term (``(1 | g)``)."""
    return layout.q == 1 and len(layout.terms) == 1 and layout.names == ["(Intercept)"]


def _level_counts_and_sums(stats: SufficientStats, beta: np.ndarray) -> tuple[list, list, np.ndarray]:
    """Per factor: the levels' counts ``n_kj`` and residual sums ``(Z_k'r)_j``; and where each
    outer factor's levels start in the ``rest_*`` statistics."""
    counts = [stats.first_ZtZ[0, 0]]
    sums = [stats.first_Zty[0] - beta @ stats.first_ZtX[0]]
    rest_counts = stats.rest_ZtZ.diagonal()
    rest_sums = stats.rest_Zty - stats.rest_ZtX @ beta
    edges = np.cumsum([0] + [m for _, m in stats.rest_sizes])
    for a, b in zip(edges[:-1], edges[1:]):
        counts.append(rest_counts[a:b])
        sums.append(rest_sums[a:b])
    return counts, sums, edges


def _cross_counts(stats: SufficientStats, Z1, edges: np.ndarray, k: int, other: int):
    """``N_k,other``: cross-counts of the levels of factor ``k`` (rows) and ``other`` (columns)."""
    if k == 0:
        return Z1[edges[other - 1] : edges[other], :].T
    if other == 0:
        return Z1[edges[k - 1] : edges[k], :]
    return stats.rest_ZtZ[edges[k - 1] : edges[k], edges[other - 1] : edges[other]]


def _intercepts_theta(stats: SufficientStats, blocks: list[BlockLayout]) -> np.ndarray | None:
    """The ANOVA start (module docstring) for factors that all have one random intercept, else None."""
    if not all(_is_random_intercept(b) for b in blocks) or stats.rest_Z1 is None or stats.p == 0:
        return None
    try:
        beta = np.linalg.solve(stats.XtX, stats.Xty)
    except np.linalg.LinAlgError:
        return None
    counts, sums, edges = _level_counts_and_sums(stats, beta)
    if any(np.any(c <= 0) for c in counts):
        return None
    K, n = len(counts), stats.n
    Z1 = stats.rest_Z1.tocsc()
    system = np.full((K + 1, K + 1), float(n))  # row 0 and the diagonal c_kk = n
    rhs = np.empty(K + 1)
    rhs[0] = float(stats.yty - 2 * beta @ stats.Xty + beta @ stats.XtX @ beta)  # r'r
    for k in range(K):
        system[k + 1, 0] = counts[k].size
        rhs[k + 1] = float(np.sum(sums[k] ** 2 / counts[k]))
        for other in range(K):
            if other != k:
                N = _cross_counts(stats, Z1, edges, k, other)
                squares = N.multiply(N) if hasattr(N, "multiply") else N**2
                system[k + 1, other + 1] = float(np.asarray(squares.sum(axis=1)).ravel() @ (1.0 / counts[k]))
    try:
        sigma2, *variances = np.linalg.solve(system, rhs)
    except np.linalg.LinAlgError:
        return None
    if not sigma2 > 0:
        return None
    relative = np.maximum(np.asarray(variances) / sigma2, MIN_RELATIVE_SD**2)
    thetas = [block.theta_from_relative_covariance(np.array([[r]])) for block, r in zip(blocks, relative)]
    return np.concatenate(thetas)
