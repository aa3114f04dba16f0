"""One grouping factor: the profiled deviance in chunks of clusters, with its analytic gradient
and expected information.

With ``A_j = Lambda' S_j Lambda + I`` (``S_j = Z_j'Z_j``), ``P_j = A_j^{-1}`` and
``B_j = Lambda P_j Lambda'``, Woodbury gives ``W'V^{-1}W = W'W - sum_j W_j'Z_j B_j Z_j'W_j``
for ``W = [X y]`` and ``V = I + Z Lambda Lambda' Z'``: q^2 weighted products over the
clusters, never a (q, p, m) intermediate.  ``log|L|^2 = sum_j log|A_j|``; beta, ``r^2`` and
the deviance follow as in :func:`mixedfx.engine.deviance.gaussian_deviance`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as la

from . import batched
from .deviance import ProfiledDeviance, Solution, fixed_effects_step, gaussian_deviance, stack_matmul

#: Clusters per chunk in the single-factor evaluation.  Chunks this small keep each pass's
#: arrays in the CPU cache (at 10^6 clusters, 2.5x faster than chunks of 500,000 although the
#: factors are then recomputed for the gradient) and bound the temporaries to a few MB.
CHUNK_CLUSTERS = 20_000

#: The per-cluster factors ``P_j`` and ``B_j`` of all chunks are kept for the gradient pass
#: while they take at most this many bytes (recomputing them costs a fifth of an evaluation);
#: beyond it they are recomputed chunk by chunk, so memory stays bounded.
KEEP_FACTORS_BYTES = 32 * 2**20


@dataclass
class ClusterPass:
    """One pass over the clusters at ``theta``: the deviance and what the gradient pass reuses."""

    deviance: float
    beta: np.ndarray
    r2: float
    RX: np.ndarray
    sigma2: float
    logdet: float
    logdet_x: float
    lam: np.ndarray
    chunks: list[slice]
    kept: list[tuple[np.ndarray, np.ndarray]] | None  # (P_j, B_j) per chunk, when kept


class SingleFactorDeviance(ProfiledDeviance):
    """The profiled deviance of a model with one grouping factor (see the module docstring)."""

    analytic_gradient = True

    def __init__(self, stats, layouts, reml, column_transforms=None):
        super().__init__(stats, layouts, reml, column_transforms)
        self._last_pass: tuple[tuple, ClusterPass] | None = None  # the last pass, by theta
        s = self.stats
        if s.first_ZtW is not None:
            self._ZtW = s.first_ZtW
        else:
            self._ZtW = np.ascontiguousarray(np.concatenate([s.first_ZtX, s.first_Zty[:, None, :]], axis=1))
        WtW = np.empty((s.p + 1, s.p + 1))
        WtW[: s.p, : s.p] = s.XtX
        WtW[: s.p, s.p] = WtW[s.p, : s.p] = s.Xty
        WtW[s.p, s.p] = s.yty
        self._WtW = WtW

    def value(self, theta: np.ndarray) -> float:
        return self._cluster_pass(theta, keep=False).deviance

    def deviance_and_gradient(self, theta: np.ndarray, gradient: bool = True) -> tuple[float, np.ndarray | None]:
        """Deviance and its analytic gradient.

        By the envelope theorem (beta is profiled), with ``g_j = Z_j'(y - X beta)``,
        ``H_j = Z_j'X_j M^{-1} X_j'Z_j`` and ``Q_j = -(c / r^2) g_j g_j' - [REML] H_j``
        (``c = n`` or ``n - p``), the gradient is ``tr(F dLambda/dtheta_k)`` with
        ``F = 2 sum_j P_j Lambda' (S_j + Q_j - Q_j Lambda P_j Lambda' S_j)``.

        Clusters are processed in chunks of :data:`CHUNK_CLUSTERS`, so the per-cluster
        temporaries stay bounded however many clusters there are (the factorisations are kept
        for the gradient pass up to :data:`KEEP_FACTORS_BYTES`, recomputed beyond).
        """
        if not gradient:
            return self.value(theta), None
        return self._gradient_pass(theta, information=False)[:2]

    def deviance_gradient_information(self, theta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Deviance, analytic gradient and expected information (the deviance's approximate Hessian).

        For ``V_j = sigma^2 (I + Z_j Lambda Lambda' Z_j')``, ``K_j = Z_j'(I + Z_j Lambda Lambda'
        Z_j')^{-1} Z_j = S_j - S_j B_j S_j`` and ``G_k = d(Lambda Lambda')/d theta_k``, the Fisher
        information of theta with sigma^2 profiled out is half of
        ``sum_j tr(K_j G_k K_j G_l) - a_k a_l / c`` with ``a_k = sum_j tr(K_j G_k)`` (``c = n`` or
        ``n - p``); that is the returned matrix, in deviance units.  It differs from the
        Hessian of the profiled deviance by O(1/sqrt(m)) relative (and by O(p/m) for REML),
        which makes it a good Newton (Fisher scoring) metric when there are many clusters.
        """
        return self._gradient_pass(theta, information=True)

    def _gradient_pass(self, theta: np.ndarray, information: bool):
        """Deviance, gradient and (optionally) expected information of the single-factor model."""
        pr = self._cluster_pass(theta, keep=True)
        s = self.stats
        q, p, lam, chunks, kept = s.first_q, s.p, pr.lam, pr.chunks, pr.kept
        v = np.append(-pr.beta, 1.0)
        dof = s.n - p if self.reml else s.n
        Minv = la.cho_solve((pr.RX, True), np.eye(p)) if (self.reml and p) else None
        F = np.zeros((q, q))
        KK, K_sum = np.zeros((q * q, q * q)), np.zeros((q, q))
        for i, sl in enumerate(chunks):
            P, B = kept[i] if kept is not None else self._cluster_factors(lam, sl)[:2]
            F += self._gradient_terms(P, B, lam, sl, v, dof / pr.r2, Minv)
            if information:
                S = self.stats.first_ZtZ[:, :, sl]
                K = (S - stack_matmul(S, stack_matmul(B, S))).reshape(q * q, -1)
                KK += K @ K.T
                K_sum += K.sum(axis=1).reshape(q, q)
        jac = self.layouts[0].factor_jacobian(theta)
        gradient = np.einsum("kij,ji->k", jac, F)
        if not information:
            return pr.deviance, gradient, None
        G = np.einsum("kij,lj->kil", jac, lam)
        G = G + G.transpose(0, 2, 1)  # d(Lambda Lambda')/d theta_k
        T = np.einsum("abcd,kbc,lda->kl", KK.reshape(q, q, q, q), G, G)
        a = np.einsum("ab,kba->k", K_sum, G)
        return pr.deviance, gradient, T - np.outer(a, a) / dof

    def light_solution(self, theta: np.ndarray) -> Solution:
        """The deviance, beta, sigma^2 and R_X at ``theta`` from one chunked pass (bounded memory).

        The full :meth:`solve` (per-cluster factors, for BLUPs and conditional variances) is
        left to the caller that needs it.
        """
        pr = self._cluster_pass(theta, keep=False)
        sol = Solution(pr.deviance, pr.beta, pr.sigma2, pr.r2, None, None, None, pr.RX)
        sol.logdet_L, sol.logdet_X = pr.logdet, pr.logdet_x
        return sol

    def _cluster_pass(self, theta: np.ndarray, keep: bool) -> ClusterPass:
        """First pass of the evaluation: log-determinants, Woodbury products, beta, r^2.

        The last pass is remembered (without its per-cluster factors), so that the results'
        pass at the optimum, where the optimiser has just evaluated, costs nothing.
        """
        theta = np.asarray(theta, dtype=float)
        key = (theta.tobytes(), self.offset, self.reml)
        if not keep and self._last_pass is not None and self._last_pass[0] == key:
            return self._last_pass[1]
        self.claim_statistics()
        s = self.stats
        lam = self.layouts[0].factor_matrix(theta)
        m, p = s.n_first_levels, s.p
        chunks = [slice(i, min(i + CHUNK_CLUSTERS, m)) for i in range(0, m, CHUNK_CLUSTERS)] or [slice(0, 0)]
        logdet = 0.0
        M_full = self._WtW.copy()
        keep = keep and 2 * 8 * s.first_q**2 * m <= KEEP_FACTORS_BYTES
        kept = [] if keep else None
        for sl in chunks:
            P, B, chunk_logdet = self._cluster_factors(lam, sl)
            logdet += chunk_logdet
            M_full -= self._woodbury_correction(B, sl)
            if keep:
                kept.append((P, B))
        RX, cb, beta, logdet_x = fixed_effects_step(M_full[:p, :p], M_full[:p, p])
        r2 = max(float(M_full[p, p] - cb @ cb), 1e-300)
        dev, sigma2 = gaussian_deviance(logdet, logdet_x, r2, s.n, p, self.reml)
        result = ClusterPass(self._total(dev), beta, r2, RX, sigma2, logdet, logdet_x, lam, chunks, kept)
        self._last_pass = (key, ClusterPass(**{**result.__dict__, "kept": None}))
        return result

    def _cluster_factors(self, lam: np.ndarray, sl: slice) -> tuple[np.ndarray, np.ndarray, float]:
        """For the clusters in ``sl``: ``P_j = A_j^{-1}``, ``B_j = Lambda P_j Lambda'`` and ``sum log|A_j|``."""
        q = self.stats.first_q
        A = batched.congruence(lam, self.stats.first_ZtZ[:, :, sl])
        idx = np.arange(q)
        A[idx, idx] += 1.0
        L = batched.cholesky(A)
        logdet = 2.0 * float(np.log(np.diagonal(L, axis1=0, axis2=1)).sum())
        P = batched.inverse_from_cholesky(L)
        B = batched.kron_apply(lam, lam.T, P)
        return P, B, logdet

    def _woodbury_correction(self, B: np.ndarray, sl: slice) -> np.ndarray:
        """``sum_j W_j'Z_j B_j Z_j'W_j`` over the clusters in ``sl``.

        ``B_j`` is symmetric, so the sum is ``sum_a (B_aa Z_a'W)' Z_a'W`` plus, for ``a < b``,
        ``(B_ab Z_a'W)' Z_b'W`` and its transpose: q(q+1)/2 scaled copies into one buffer and
        as many matrix products.
        """
        ZtW = self._ZtW[:, :, sl]
        q = ZtW.shape[0]
        out = np.zeros((ZtW.shape[1], ZtW.shape[1]))
        if q == 0:
            return out
        scaled = np.empty_like(ZtW[0])
        for a in range(q):
            np.multiply(ZtW[a], B[a, a], out=scaled)
            out += scaled @ ZtW[a].T
            for b in range(a + 1, q):
                np.multiply(ZtW[a], B[a, b], out=scaled)
                cross = scaled @ ZtW[b].T
                out += cross + cross.T
        return out

    def _gradient_terms(
        self, P: np.ndarray, B: np.ndarray, lam: np.ndarray, sl: slice, v: np.ndarray, scale: float, Minv
    ) -> np.ndarray:
        """The clusters' contribution to ``F`` (see :meth:`deviance_and_gradient`); ``scale = c / r^2``.

        With ``Y_j = P_j Lambda'``, ``R_j = I - B_j S_j``, ``t_j = Y_j g_j`` and
        ``u_j = R_j' g_j`` this is ``2 sum_j (Y_j S_j - scale t_j u_j' - [REML] Y_j H_j R_j)``:
        only q x q work per cluster besides ``g`` and ``H``.
        """
        ZtW = self._ZtW[:, :, sl]
        S = self.stats.first_ZtZ[:, :, sl]
        q, p = ZtW.shape[0], ZtW.shape[1] - 1
        eye = np.eye(q)
        Y = batched.kron_apply(eye, lam.T, P)  # P_j Lambda'
        g = np.stack([v @ ZtW[a] for a in range(q)])  # Z_j'(y_j - X_j beta)
        t = np.einsum("abm,bm->am", Y, g)
        u = g - np.einsum("abm,bm->am", S, lam @ t)
        F = batched.sum_of_products(Y, S) - scale * (t @ u.T)
        if Minv is not None:
            H = np.empty_like(P)  # H_j = Z_j'X_j M^{-1} X_j'Z_j
            for b in range(q):
                MZ = Minv @ ZtW[b, :p]
                for a in range(b + 1):
                    H[a, b] = np.einsum("km,km->m", ZtW[a, :p], MZ)
                    H[b, a] = H[a, b]
            R = -stack_matmul(B, S)
            R[np.arange(q), np.arange(q)] += 1.0
            F -= batched.sum_of_products(stack_matmul(Y, H), R)
        return 2.0 * F
