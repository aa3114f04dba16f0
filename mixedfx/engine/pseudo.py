"""The log pseudo-likelihood of a linear mixed model with sampling weights at every level.

For nested grouping factors (level 1: observations; level 2: clusters j; level 3: clusters
k of clusters) with sampling weights conditional on the level above (``a_i`` for an
observation given its cluster, ``w_j`` for a cluster given its parent, ``w_k`` at the top),
the pseudo-likelihood of Pfeffermann et al. (1998) and Rabe-Hesketh & Skrondal (2006) is

    log PL = sum_k w_k log INT prod_j [INT prod_i f(y_i | u_j, v_k)^{a_i} phi(u_j) du_j]^{w_j} phi(v_k) dv_k.

For the Gaussian model ``y = X beta + Z_2 Lambda_2 u + Z_3 Lambda_3 v + e``, ``u, v`` spherical with
variance ``sigma^2`` and ``Var(e) = sigma^2``, every integral is Gaussian and is done by the
penalised least-squares steps of the unweighted model, one level at a time (finest first):

    C_j     = [Z_j X_j y_j]' A_j [Z_j X_j y_j]   (the cluster's weighted cross-products, Lambda applied)
    M_j     = I + (C_j)_{uu} = L_j L_j'          (Cholesky per cluster)
    S_j     = (C_j)_{rr} - (C_j)_{ru} M_j^{-1} (C_j)_{ur}      (Schur complement: what is left of
                                                   the coarser effects, X and y once u_j is integrated out)
    C_k     = sum_{j in k} w_j S_j,   logdet_k = log|M_k| + sum_{j in k} w_j log|M_j|,
    N_k     = sum_{j in k} w_j sum_{i in j} a_i,

and at the top, with ``S = sum_k w_k S_k = [[X'X, X'y], [y'X, y'y]]`` (weighted, reduced):

    beta    = (X'X)^{-1} X'y,   r^2 = y'y - y'X beta,   N_w = sum_k w_k N_k,
    -2 log PL = sum_k w_k logdet_k + N_w log(2 pi sigma^2) + r^2 / sigma^2,

profiled at ``sigma^2 = r^2 / N_w``.  (The densities are raised to the weights, so no
``log a_i`` term appears.)  The per-top-cluster terms

    l_k(beta, sigma^2) = -1/2 w_k [N_k log(2 pi sigma^2) + logdet_k + S_k(beta) / sigma^2]

are the estimating-equation contributions whose scores give the linearisation (sandwich)
variance at the top level (see :meth:`PseudoLikelihoodDeviance.cluster_loglik`).  There is no
restricted (REML) version: with sampling weights the fixed effects are not integrated out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp

from .covariance import BlockLayout
from .deviance import LOG_2PI, ProfiledDeviance, Solution
from .stats import SufficientStats


@dataclass
class NestedWeights:
    """Sampling weights of a nested design, on the engine's factors.

    ``row_weights`` are the observations' (scaled, conditional) weights ``a_i``;
    ``level_weights[f]`` the (scaled, conditional) weight of each level of factor ``f`` (in
    the deviance's layout order); ``order`` lists the factors from the finest to the
    coarsest; ``parents[f]`` gives, for each level of ``order[f]``, its level of
    ``order[f + 1]`` (one entry fewer than ``order``); ``codes[f]`` each row's level of factor ``f``.
    """

    row_weights: np.ndarray
    level_weights: list[np.ndarray]
    order: list[int]
    parents: list[np.ndarray]
    codes: list[np.ndarray]


@dataclass
class PseudoSolution(Solution):
    """A :class:`Solution` with the top-level clusters' pieces of the pseudo-likelihood.

    ``top_S`` (m, p+1, p+1) holds each top cluster's weighted reduced cross-products ``w_k S_k``;
    ``count`` is ``N_w``.
    """

    top_S: np.ndarray | None = None
    count: float = 0.0


def _indicator(codes: np.ndarray, m: int) -> sp.csr_matrix:
    """The m x n matrix summing rows (or clusters) into their levels."""
    n = codes.size
    return sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(m, n))


def cluster_crossproducts(W: np.ndarray, weights: np.ndarray, codes: np.ndarray, m: int) -> np.ndarray:
    """``sum_{i in c} a_i w_i w_i'`` for every level c: a stack (m, d, d), in O(n d^2) time and O(n) memory."""
    d = W.shape[1]
    out = np.empty((m, d, d))
    for r in range(d):
        weighted = weights * W[:, r]
        for s in range(r, d):
            out[:, r, s] = out[:, s, r] = np.bincount(codes, weights=weighted * W[:, s], minlength=m)
    return out


class PseudoLikelihoodDeviance(ProfiledDeviance):
    """Callable ``theta -> -2 log PL`` for nested factors with sampling weights (ML only).

    ``stats`` are the unweighted statistics (used only for starting values); ``X`` and ``y``
    the standardised rows and ``Z`` each factor's random-effect columns, in layout order.
    Gradients are central differences: the cost of one evaluation is O(m d^3) after the
    O(n d^2) reduction made once here.
    """

    analytic_gradient = False

    def __init__(
        self,
        stats: SufficientStats,
        layouts: list[BlockLayout],
        X: np.ndarray,
        y: np.ndarray,
        Z: list[np.ndarray],
        weights: NestedWeights,
    ):
        super().__init__(stats, layouts, reml=False)
        # The estimates do not change when the top level's weights are multiplied by a constant
        # (-2 log PL is multiplied by it): the engine works with them divided by their mean, so
        # that weights of 1e-300 or 1e300 leave the optimiser's tolerances meaningful, and
        # ``likelihood_scale`` carries the mean back to the reported log pseudo-likelihood.
        top = weights.order[-1]
        self.likelihood_scale = float(np.mean(weights.level_weights[top]))
        levels = list(weights.level_weights)
        levels[top] = levels[top] / self.likelihood_scale
        weights = replace(weights, level_weights=levels)
        self.weights = weights
        self.p = X.shape[1]
        finest = weights.order[0]
        self.level_counts = [int(w.size) for w in weights.level_weights]
        self.columns = [Z[f].shape[1] for f in weights.order]
        W = np.hstack([Z[f] for f in weights.order] + [X, y[:, None]])
        m1 = self.level_counts[finest]
        self.raw = cluster_crossproducts(W, weights.row_weights, weights.codes[finest], m1)
        raw_count = np.bincount(weights.codes[finest], weights=weights.row_weights, minlength=m1)
        self.rollups = [
            _indicator(parent, self.level_counts[weights.order[f + 1]]) for f, parent in enumerate(weights.parents)
        ]
        self.top_counts = self._weighted_counts(raw_count)  # free of theta: made once, not per evaluation

    def _weighted_counts(self, count: np.ndarray) -> np.ndarray:
        """Each top cluster's ``w_k N_k``: the finest clusters' ``sum_i a_i`` weighted and summed up the levels."""
        for f, factor in enumerate(self.weights.order):
            count = self.weights.level_weights[factor] * count
            if f < len(self.rollups):
                count = self.rollups[f] @ count
        return count

    @property
    def n_likelihood(self) -> float:
        """``N_w = sum_k w_k sum_j w_j|k sum_i a_i`` (times ``log sigma^2``; top weights divided by their mean)."""
        return float(self.top_counts.sum())

    @property
    def n_top_clusters(self) -> int:
        """Number of clusters at the top level (the sampling units of the sandwich variance)."""
        return self.level_counts[self.weights.order[-1]]

    def robust_beta_covariance(self, theta: np.ndarray) -> np.ndarray:
        """Linearisation (sandwich) covariance of beta, clustered at the top level (Stata's with pweights).

        ``m/(m-1) H^{-1} (sum_k g_k g_k') H^{-1}`` with ``H = sum_k w_k X'X_k`` (reduced) and the
        clusters' scores ``g_k = w_k (X'y_k - X'X_k beta)`` (``sigma^2`` cancels).  The bread is
        the fixed-effects block of the pseudo-likelihood's Hessian alone, as Stata's ``mixed``
        uses (its robust standard errors for the PISA example are reproduced to every digit).
        """
        sol = self.solve(theta)
        p, S, m = self.p, sol.top_S, self.n_top_clusters
        scores = S[:, :p, p] - S[:, :p, :p] @ sol.beta
        half = la.solve_triangular(sol.RX, scores.T, lower=True)
        inner = la.solve_triangular(sol.RX, half, lower=True, trans="T")
        factor = m / (m - 1) if m > 1 else np.nan
        return factor * (inner @ inner.T)

    def _transformed(self, theta: np.ndarray) -> np.ndarray:
        """The finest clusters' cross-products with every factor's Lambda applied: ``D' C D``."""
        lams = self.lambdas(theta)
        blocks = [lams[f] for f in self.weights.order] + [np.eye(self.p + 1)]
        D = la.block_diag(*blocks)
        return np.einsum("ia,mij,jb->mab", D, self.raw, D, optimize=True)

    def reduce(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integrate out every level: per top cluster ``(w_k S_k, w_k logdet_k)`` (``w_k N_k``: ``top_counts``)."""
        C = self._transformed(np.asarray(theta, dtype=float))
        logdet = np.zeros(C.shape[0])
        for f, factor in enumerate(self.weights.order):
            q = self.columns[f]
            own = C[:, :q, :q] + np.eye(q)
            L = np.linalg.cholesky(own)
            T = np.linalg.solve(L, C[:, :q, q:])
            S = C[:, q:, q:] - np.einsum("mki,mkj->mij", T, T)
            w = self.weights.level_weights[factor]
            logdet = w * (logdet + 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1))
            S = S * w[:, None, None]
            if f == len(self.weights.order) - 1:
                return S, logdet
            roll = self.rollups[f]
            d = S.shape[1]
            C = (roll @ S.reshape(S.shape[0], d * d)).reshape(-1, d, d)
            logdet = roll @ logdet
        raise AssertionError("unreachable: the loop returns at the top level")

    def solve(self, theta: np.ndarray, dense: bool = True) -> PseudoSolution:
        """``-2 log PL`` at ``theta`` profiled over beta and sigma^2, with the pieces that made it."""
        S, logdet = self.reduce(theta)
        total = S.sum(axis=0)
        p = self.p
        RX = la.cholesky(total[:p, :p], lower=True)
        cb = la.solve_triangular(RX, total[:p, p], lower=True)
        beta = la.solve_triangular(RX, cb, lower=True, trans="T")
        r2 = max(float(total[p, p] - cb @ cb), 1e-300)
        n_w = self.n_likelihood
        sigma2 = r2 / n_w
        logdet_sum = float(logdet.sum())
        deviance = logdet_sum + n_w * (LOG_2PI + np.log(sigma2)) + r2 / sigma2
        return PseudoSolution(
            deviance=float(deviance),
            beta=beta,
            sigma2=sigma2,
            r2=r2,
            L1=None,
            c1X=None,
            c1y=None,
            RX=RX,
            logdet_L=logdet_sum,
            top_S=S,
            count=n_w,
        )

    def deviance_at(self, theta: np.ndarray, sigma2: float) -> float:
        """``-2 log PL`` at ``theta`` and a given residual variance, profiled over beta only."""
        sol = self.solve(theta)
        return float(sol.logdet_L + sol.count * (LOG_2PI + np.log(sigma2)) + sol.r2 / sigma2)

    def cluster_loglik(self, theta: np.ndarray, beta: np.ndarray, sigma2: float) -> np.ndarray:
        """Each top cluster's term ``l_k`` of the log pseudo-likelihood at (theta, beta, sigma^2), unprofiled.

        ``l_k = -1/2 [w_k N_k log(2 pi sigma^2) + w_k logdet_k + w_k S_k(beta) / sigma^2]`` with
        ``S_k(beta) = y'y - 2 beta'X'y + beta'X'X beta`` from the cluster's reduced cross-products.
        """
        S, logdet = self.reduce(theta)
        p = self.p
        count = self.top_counts
        quad = S[:, p, p] - 2.0 * S[:, :p, p] @ beta + np.einsum("i,mij,j->m", beta, S[:, :p, :p], beta)
        return -0.5 * (count * (LOG_2PI + np.log(sigma2)) + logdet + quad / sigma2)

    def boundary_alternatives(self, theta: np.ndarray) -> list[np.ndarray]:
        """No boundary restarts: each evaluation is cheap, but gradients are finite differences."""
        return []
