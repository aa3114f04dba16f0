"""The profiled deviance of a linear mixed model, evaluated from sufficient statistics.

With ``G = sigma^2 Lambda Lambda'`` (Lambda block diagonal over factors and levels), the
penalised least-squares formulation of Bates et al. (2015, J. Stat. Softw. 67(1)) gives,
for fixed ``theta``:

    L L'        = Lambda' Z'Z Lambda + I                   (blocked Cholesky)
    R_ZX        = L^{-1} Lambda' Z'X
    R_X' R_X    = X'X - R_ZX' R_ZX
    c_u         = L^{-1} Lambda' Z'y,   c_b = R_X^{-T} (X'y - R_ZX' c_u)
    beta        = R_X^{-1} c_b
    r^2         = y'y - |c_u|^2 - |c_b|^2                 (penalised residual sum of squares)

    ML:   -2 l   = log|L|^2 + n     (1 + log(2 pi r^2 / n))
    REML: -2 l_R = log|L|^2 + log|R_X|^2 + (n - p)(1 + log(2 pi r^2 / (n - p)))

and ``sigma^2 = r^2 / n`` (ML) or ``r^2 / (n - p)`` (REML); weights ``w`` (residual
variance ``sigma^2 / w``) subtract ``sum(log w)``.

The blocked Cholesky factor has the first grouping factor's block diagonal (one small
q x q block per level, factorised all at once by :mod:`mixedfx.batched`), and the other
factors' columns (crossed or nesting factors) as a dense Schur complement, as
MixedModels.jl does.  One evaluation costs O(m q^3) for m levels of the first factor plus a
dense factorisation of the remaining (usually far fewer) random effects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp

from . import batched
from .stats import SufficientStats, set_column_transforms

LOG_2PI = float(np.log(2 * np.pi))

#: Clusters per chunk in the single-factor evaluation.  Chunks this small keep each pass's
#: arrays in the CPU cache (at 10^6 clusters, 2.5x faster than chunks of 500,000 although the
#: factors are then recomputed for the gradient) and bound the temporaries to a few MB.
CHUNK_CLUSTERS = 20_000

#: The per-cluster factors ``P_j`` and ``B_j`` of all chunks are kept for the gradient pass
#: while they take at most this many bytes (recomputing them costs a fifth of an evaluation);
#: beyond it they are recomputed chunk by chunk, so memory stays bounded.
KEEP_FACTORS_BYTES = 32 * 2**20


@dataclass
class Solution:
    """Everything computed at one ``theta``: the deviance and the pieces that produced it."""

    deviance: float
    beta: np.ndarray
    sigma2: float
    r2: float
    L1: np.ndarray
    c1X: np.ndarray
    c1y: np.ndarray
    RX: np.ndarray
    logdet_L: float = 0.0
    logdet_X: float = 0.0
    L21: sp.csr_matrix | None = None
    L2: np.ndarray | None = None
    c2X: np.ndarray | None = None
    c2y: np.ndarray | None = None


def _stack_matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A_j B_j`` for element-major stacks (q, r, m) and (r, s, m)."""
    return np.einsum("ikm,kjm->ijm", A, B)


class ProfiledDeviance:
    """Callable ``theta -> -2 log-likelihood`` (ML) or ``-2 REML log-likelihood``.

    ``factors`` describe the relative covariance factor of each grouping factor, in the
    order of the statistics: ``(n_params, theta_k -> Lambda_k, theta_k -> dLambda_k/dtheta_k)``.

    With a single grouping factor, evaluation uses :meth:`deviance_and_gradient`, which
    never forms the (q, p, m) intermediates and also returns the analytic gradient.
    """

    def __init__(
        self,
        stats: SufficientStats,
        factors: list[tuple[int, object, object]],
        reml: bool,
        column_transforms: list[np.ndarray] | None = None,
    ):
        self.stats = stats
        self.factors = factors
        self.reml = reml
        # The transforms T_k of the random-effect columns this deviance works with; several
        # deviances may share (and transform in place) one set of statistics.
        self.z_transforms = column_transforms
        self.use_columns()
        self.n_theta = sum(f[0] for f in factors)
        self.offset = 0.0  # added to every deviance: sum log|R_i| of whitened R-side models
        self._last_profile: tuple[tuple, dict] | None = None  # the last single-factor pass, by theta
        self.single_factor = stats.rest_Z1 is None
        if stats.rest_Z1 is not None:
            self._prepare_rest()
        else:
            self._prepare_single()

    # ------------------------------------------------------------------ setup
    def _prepare_rest(self) -> None:
        """Index arrays for the per-evaluation sparse block-diagonal products (computed once)."""
        s = self.stats
        q1, m1 = s.first_q, s.n_first_levels
        # Block-diagonal (m1 blocks of q1 x q1) CSR pattern: row j*q1+a has columns j*q1+b.
        rows = np.arange(m1 * q1)
        self._bd_indptr = np.arange(0, m1 * q1 * q1 + 1, q1)
        self._bd_indices = ((rows // q1)[:, None] * q1 + np.arange(q1)[None, :]).ravel()
        self._nested = self._detect_nesting()
        # With scalar random effects everywhere, L21 is Z2'Z1 with scaled rows and columns.
        self._all_scalar = q1 == 1 and all(q == 1 for q, _ in s.rest_sizes)
        if self._all_scalar:
            self._Z21_rows = np.repeat(np.arange(s.rest_Z1.shape[0]), np.diff(s.rest_Z1.indptr))
            if not self._nested:
                self._prepare_fill_pairs()

    def _prepare_fill_pairs(self) -> None:
        """Symbolic part of ``L21 L21'`` for scalar random effects (computed once).

        ``L21 = D2 Z21 D1`` with diagonal ``D1, D2``, so the lower triangle of
        ``L21 L21' = D2 (sum_j d1_j^2 z_j z_j') D2`` has, for each pair of rows ``(r, r')``
        sharing a first-factor level j, the term ``z_rj z_r'j d1_j^2``.  ``_pair_matrix``
        (pairs x m1) maps the vector ``d1^2`` to those sums in one sparse product; the
        pairs' flat positions in the dense block are kept for the scatter.
        """
        Z = self.stats.rest_Z1.tocsc()
        Z.sort_indices()
        R, m1 = Z.shape
        counts = np.diff(Z.indptr)
        col_of = np.repeat(np.arange(m1), counts)
        pos = np.arange(Z.nnz) - Z.indptr[col_of]  # position of each entry within its column
        span = counts[col_of] - pos  # partners at or after it in the column
        first = np.repeat(np.arange(Z.nnz), span)
        second = first + (np.arange(first.size) - np.repeat(np.cumsum(span) - span, span))
        flat = Z.indices[second].astype(np.int64) * R + Z.indices[first]  # lower triangle: row >= column
        present = np.bincount(flat, minlength=R * R) > 0  # R^2 is the size of the dense block anyway
        self._pair_flat = np.flatnonzero(present)
        pair = np.cumsum(present)[flat] - 1
        indptr = np.zeros(m1 + 1, dtype=np.int64)
        np.cumsum(counts * (counts + 1) // 2, out=indptr[1:])  # pairs are generated column by column
        values = Z.data[first] * Z.data[second]
        self._pair_matrix = sp.csc_matrix((values, pair, indptr), shape=(self._pair_flat.size, m1))
        self._pair_rows, self._pair_cols = np.divmod(self._pair_flat, R)

    def _detect_nesting(self) -> bool:
        """True when there is one outer factor and every first-factor level lies in one of its levels.

        Then the Schur complement of the outer factor is block diagonal (one q2 x q2 block per
        level) and is factorised with the batched kernels instead of densely.
        """
        s = self.stats
        if len(s.rest_sizes) != 1:
            return False
        q2, m2 = s.rest_sizes[0]
        Z = s.rest_Z1.tocsc()  # entries grouped by column, so by first-factor level
        outer = Z.indices // q2
        level_ptr = Z.indptr[:: s.first_q]  # where each first-factor level's entries start
        starts = level_ptr[:-1][np.diff(level_ptr) > 0]
        if outer.size and np.any(np.minimum.reduceat(outer, starts) != np.maximum.reduceat(outer, starts)):
            return False  # some first-factor level meets two outer levels: crossed, not nested
        idx = (np.arange(m2) * q2)[:, None] + np.arange(q2)[None, :]
        blocks = s.rest_ZtZ[idx[:, :, None], idx[:, None, :]]  # (m2, q2, q2)
        off = s.rest_ZtZ.copy()
        off[idx[:, :, None], idx[:, None, :]] = 0.0
        if np.any(off != 0.0):
            return False
        self._outer_ZtZ = np.ascontiguousarray(blocks.transpose(1, 2, 0))
        self._outer_index = idx
        return True

    def _prepare_single(self) -> None:
        """Stacked ``Z_j'[X y]`` (q, p+1, m) and ``[X y]'[X y]`` for the single-factor path."""
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

    def use_columns(self) -> None:
        """Put the (possibly shared) statistics in this deviance's column transforms, if they are not."""
        if self.z_transforms is None:
            return
        current = self.stats.column_transforms
        if current is None or any(C is not T for C, T in zip(current, self.z_transforms)):
            set_column_transforms(self.stats, self.z_transforms)
            self.stats.column_transforms = self.z_transforms  # identity marks this deviance as the owner

    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        """Relative covariance factors of every grouping factor for ``theta``."""
        out, start = [], 0
        for k, build, _ in self.factors:
            out.append(build(theta[start : start + k]))
            start += k
        return out

    def original_lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        """Relative covariance factors for the original (untransformed) random-effect columns.

        The statistics use ``Z T`` (see ``ReBlock.standardising_transform``); the factor of
        the original columns is ``T Lambda``.
        """
        lams = self.lambdas(theta)
        transforms = getattr(self, "z_transforms", None)
        if transforms is None:
            return lams
        return [T @ lam for T, lam in zip(transforms, lams)]

    def engine_theta(self, relative_covariances: list[np.ndarray], structures_by_block: list[list]) -> np.ndarray:
        """Engine parameters theta from each block's ``G / sigma^2`` on the original columns."""
        transforms = getattr(self, "z_transforms", None) or [np.eye(G.shape[0]) for G in relative_covariances]
        thetas = []
        for Gr, T, terms in zip(relative_covariances, transforms, structures_by_block):
            Tinv = np.linalg.inv(T)
            Gt = Tinv @ Gr @ Tinv.T
            for columns, structure in terms:
                thetas.append(structure.theta_from_relative_covariance(Gt[columns, columns]))
        return np.concatenate(thetas) if thetas else np.zeros(0)

    def _rest_lambda(self, lams: list[np.ndarray]) -> sp.csr_matrix:
        """Sparse block-diagonal Lambda of the factors after the first (level-major)."""
        parts = [
            sp.kron(sp.identity(m, format="csr"), sp.csr_matrix(lam))
            for lam, (_, m) in zip(lams[1:], self.stats.rest_sizes)
        ]
        return sp.block_diag(parts, format="csr")

    # ------------------------------------------------------------------ evaluation
    def __call__(self, theta: np.ndarray) -> float:
        """Deviance (``-2 log L`` or ``-2 log L_R``) at ``theta``."""
        try:
            if self.single_factor:
                return self.deviance_and_gradient(theta, gradient=False)[0]
            return self.solve(theta, dense=False).deviance
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            return np.inf

    def deviance_and_gradient(self, theta: np.ndarray, gradient: bool = True) -> tuple[float, np.ndarray | None]:
        """Deviance and its analytic gradient for a single grouping factor.

        With ``A_j = Lambda' S_j Lambda + I`` (``S_j = Z_j'Z_j``), ``P_j = A_j^{-1}`` and
        ``B_j = Lambda P_j Lambda'``, Woodbury gives ``W'V^{-1}W = W'W - sum_j W_j'Z_j B_j Z_j'W_j``
        for ``W = [X y]`` and ``V = I + Z Lambda Lambda' Z'``: q^2 weighted products over the
        clusters.  By the envelope theorem (beta is profiled), with ``g_j = Z_j'(y - X beta)``,
        ``H_j = Z_j'X_j M^{-1} X_j'Z_j`` and ``Q_j = -(c / r^2) g_j g_j' - [REML] H_j``
        (``c = n`` or ``n - p``), the gradient is ``tr(F dLambda/dtheta_k)`` with
        ``F = 2 sum_j P_j Lambda' (S_j + Q_j - Q_j Lambda P_j Lambda' S_j)``.

        Clusters are processed in chunks of :data:`CHUNK_CLUSTERS`, so the per-cluster
        temporaries stay bounded however many clusters there are (the factorisations are kept
        for the gradient pass up to :data:`KEEP_FACTORS_BYTES`, recomputed beyond).
        """
        if not gradient:
            return self._profile_single(theta, keep=False)["deviance"], None
        return self._single_factor_pass(theta, information=False)[:2]

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
        return self._single_factor_pass(theta, information=True)

    def _single_factor_pass(self, theta: np.ndarray, information: bool):
        """Deviance, gradient and (optionally) expected information of the single-factor model."""
        pr = self._profile_single(theta, keep=True)
        s = self.stats
        q, p, lam, chunks, kept = s.first_q, s.p, pr["lam"], pr["chunks"], pr["kept"]
        v = np.append(-pr["beta"], 1.0)
        dof = s.n - p if self.reml else s.n
        Minv = la.cho_solve((pr["RX"], True), np.eye(p)) if (self.reml and p) else None
        F = np.zeros((q, q))
        KK, K_sum = np.zeros((q * q, q * q)), np.zeros((q, q))
        for i, sl in enumerate(chunks):
            P, B = kept[i] if kept is not None else self._cluster_factors(lam, sl)[:2]
            F += self._gradient_terms(P, B, lam, sl, v, dof / pr["r2"], Minv)
            if information:
                S = self.stats.first_ZtZ[:, :, sl]
                K = (S - _stack_matmul(S, _stack_matmul(B, S))).reshape(q * q, -1)
                KK += K @ K.T
                K_sum += K.sum(axis=1).reshape(q, q)
        jac = self.factors[0][2](theta)
        gradient = np.einsum("kij,ji->k", jac, F)
        if not information:
            return pr["deviance"], gradient, None
        G = np.einsum("kij,lj->kil", jac, lam)
        G = G + G.transpose(0, 2, 1)  # d(Lambda Lambda')/d theta_k
        T = np.einsum("abcd,kbc,lda->kl", KK.reshape(q, q, q, q), G, G)
        a = np.einsum("ab,kba->k", K_sum, G)
        return pr["deviance"], gradient, T - np.outer(a, a) / dof

    def light_solution(self, theta: np.ndarray) -> Solution:
        """The deviance, beta, sigma^2 and R_X at ``theta`` without the per-cluster factors.

        For one grouping factor this is one chunked pass (bounded memory); the full
        :meth:`solve` (needed only for BLUPs and conditional variances) is left to the caller.
        """
        if not self.single_factor:
            return self.solve(theta)
        pr = self._profile_single(theta, keep=False)
        sol = Solution(pr["deviance"], pr["beta"], pr["sigma2"], pr["r2"], None, None, None, pr["RX"])
        sol.logdet_L, sol.logdet_X = pr["logdet"], pr["logdet_x"]
        return sol

    def _profile_single(self, theta: np.ndarray, keep: bool) -> dict:
        """First pass of the single-factor evaluation: log-determinants, Woodbury products, beta, r^2.

        The last pass is remembered (without its per-cluster factors), so that the results'
        pass at the optimum, where the optimiser has just evaluated, costs nothing.
        """
        theta = np.asarray(theta, dtype=float)
        key = (theta.tobytes(), self.offset, self.reml)
        if not keep and self._last_profile is not None and self._last_profile[0] == key:
            return self._last_profile[1]
        self.use_columns()
        s = self.stats
        lam = self.factors[0][1](theta)
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
        M = M_full[:p, :p]
        rhs = M_full[:p, p]
        if p:
            RX = la.cholesky(M, lower=True)
            cb = la.solve_triangular(RX, rhs, lower=True)
            beta = la.solve_triangular(RX, cb, lower=True, trans="T")
            logdet_x = 2.0 * float(np.log(np.diag(RX)).sum())
        else:
            RX, cb, beta, logdet_x = None, np.zeros(0), np.zeros(0), 0.0
        r2 = max(float(M_full[p, p] - cb @ cb), 1e-300)
        dof = s.n - p if self.reml else s.n
        dev = logdet + (logdet_x if self.reml else 0.0) + dof * (1.0 + LOG_2PI + np.log(r2 / dof))
        dev = float(dev - s.sum_log_weights + self.offset)
        result = {
            "deviance": dev,
            "beta": beta,
            "r2": r2,
            "RX": RX if RX is not None else np.zeros((0, 0)),
            "sigma2": r2 / dof,
            "logdet": logdet,
            "logdet_x": logdet_x,
            "lam": lam,
            "chunks": chunks,
            "kept": kept,
        }
        self._last_profile = (key, {**result, "kept": None})
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
            R = -_stack_matmul(B, S)
            R[np.arange(q), np.arange(q)] += 1.0
            F -= batched.sum_of_products(_stack_matmul(Y, H), R)
        return 2.0 * F

    def solve(self, theta: np.ndarray, dense: bool = True) -> Solution:
        """Evaluate the profiled deviance at ``theta`` and keep the intermediate results.

        ``dense=False`` skips forming a dense outer factor that only BLUPs need.
        """
        self.use_columns()
        s = self.stats
        theta = np.asarray(theta, dtype=float)
        lams = self.lambdas(theta)
        lam1 = lams[0]
        A1 = batched.congruence(lam1, s.first_ZtZ)
        idx = np.arange(s.first_q)
        A1[idx, idx] += 1.0
        L1 = batched.cholesky(A1)
        c1X = batched.solve_lower(L1, batched.left_multiply_transpose(lam1, s.first_ZtX))
        c1y = batched.solve_lower(L1, batched.left_multiply_transpose(lam1, s.first_Zty))
        logdet = 2.0 * float(np.log(np.diagonal(L1, axis1=0, axis2=1)).sum())
        M = s.XtX - np.tensordot(c1X, c1X, axes=([0, 2], [0, 2]))
        rhs = s.Xty - np.tensordot(c1X, c1y, axes=([0, 2], [0, 1]))
        r2 = s.yty - float(np.einsum("am,am->", c1y, c1y))
        sol = Solution(0.0, np.empty(0), 0.0, 0.0, L1, c1X, c1y, np.empty((0, 0)))
        if s.rest_Z1 is not None:
            logdet_rest, M, rhs, r2 = self._solve_rest(lams, sol, M, rhs, r2, dense)
            logdet += logdet_rest
        p = s.p
        if p:
            RX = la.cholesky(M, lower=True)  # checks finiteness: a NaN deviance must become an error
            cb = la.solve_triangular(RX, rhs, lower=True)
            beta = la.solve_triangular(RX, cb, lower=True, trans="T")
            r2 -= float(cb @ cb)
            logdet_x = 2.0 * float(np.log(np.diag(RX)).sum())
        else:
            RX, beta, logdet_x = np.zeros((0, 0)), np.zeros(0), 0.0
        r2 = max(r2, 1e-300)
        n = s.n
        if self.reml:
            dof = n - p
            dev = logdet + logdet_x + dof * (1.0 + LOG_2PI + np.log(r2 / dof))
            sigma2 = r2 / dof
        else:
            dev = logdet + n * (1.0 + LOG_2PI + np.log(r2 / n))
            sigma2 = r2 / n
        sol.deviance = float(dev - s.sum_log_weights + self.offset)
        sol.beta, sol.sigma2, sol.r2, sol.RX = beta, sigma2, r2, RX
        sol.logdet_L, sol.logdet_X = logdet, logdet_x
        return sol

    def deviance_at(self, theta: np.ndarray, sigma2: float) -> float:
        """Deviance at ``theta`` and a given (not profiled) residual variance ``sigma2``.

        ML: ``log|L|^2 + n log(2 pi sigma2) + r^2 / sigma2``; REML adds ``log|R_X|^2`` and
        uses ``n - p`` in place of ``n`` (standardised scale, like :meth:`solve`).
        """
        sol = self.solve(theta)
        s = self.stats
        dof = s.n - s.p if self.reml else s.n
        dev = sol.logdet_L + (sol.logdet_X if self.reml else 0.0) + dof * (LOG_2PI + np.log(sigma2)) + sol.r2 / sigma2
        return float(dev - s.sum_log_weights + self.offset)

    def _solve_nested_rest(
        self,
        lam: np.ndarray,
        lam2: sp.csr_matrix,
        L21: sp.csr_matrix,
        sol: Solution,
        M: np.ndarray,
        rhs: np.ndarray,
        r2: float,
        dense: bool,
    ):
        """Outer factor nesting the first one: its Schur complement is block diagonal, factorised in batch."""
        s = self.stats
        q2, m2 = s.rest_sizes[0]
        q1, m1 = s.first_q, s.n_first_levels
        A2 = batched.congruence(lam, self._outer_ZtZ)
        A2[np.arange(q2), np.arange(q2)] += 1.0
        fill = (L21 @ L21.T).tocsr()
        idx = self._outer_index
        rows, cols = np.broadcast_arrays(idx[:, :, None], idx[:, None, :])
        A2 -= np.asarray(fill[rows.ravel(), cols.ravel()]).reshape(m2, q2, q2).transpose(1, 2, 0)
        L2 = batched.cholesky(A2)
        lam2T = lam2.T.tocsr()
        flat_c1X = sol.c1X.transpose(2, 0, 1).reshape(m1 * q1, -1)
        flat_c1y = sol.c1y.T.reshape(-1)
        p = flat_c1X.shape[1]
        rhs_X = (lam2T @ s.rest_ZtX - L21 @ flat_c1X).reshape(m2, q2, p).transpose(1, 2, 0)
        rhs_y = (lam2T @ s.rest_Zty - L21 @ flat_c1y).reshape(m2, q2).T
        c2X = batched.solve_lower(L2, np.ascontiguousarray(rhs_X)).transpose(2, 0, 1).reshape(m2 * q2, p)
        c2y = batched.solve_lower(L2, np.ascontiguousarray(rhs_y)).T.reshape(-1)
        dense_L2 = None
        if dense:  # the dense factor is only needed for BLUPs and conditional variances
            dense_L2 = sp.block_diag([L2[:, :, j] for j in range(m2)], format="csr").toarray()
        sol.L21, sol.L2, sol.c2X, sol.c2y = L21, dense_L2, c2X, c2y
        logdet = 2.0 * float(np.log(np.diagonal(L2, axis1=0, axis2=1)).sum())
        return logdet, M - c2X.T @ c2X, rhs - c2X.T @ c2y, r2 - float(c2y @ c2y)

    def _rest_lambda_T(self, lams: list[np.ndarray], M: np.ndarray) -> np.ndarray:
        """``Lambda2' M`` for ``M`` with one row per random effect outside the first factor (block by block)."""
        out = np.empty_like(M)
        offset = 0
        for lam, (q, m) in zip(lams[1:], self.stats.rest_sizes):
            part = M[offset : offset + q * m]
            if q == 1:
                np.multiply(part, lam[0, 0], out=out[offset : offset + m])
            else:
                shaped = part.reshape((m, q, -1))
                out[offset : offset + q * m] = np.einsum("ba,mbc->mac", lam, shaped).reshape(part.shape)
            offset += q * m
        return out

    def _scalar_rest_scale(self, lams: list[np.ndarray]) -> np.ndarray:
        """The diagonal of ``Lambda2`` when every factor after the first has scalar random effects."""
        return np.concatenate([np.full(m, lam[0, 0]) for lam, (_, m) in zip(lams[1:], self.stats.rest_sizes)])

    def _lower_left_block(self, lams: list[np.ndarray], sol: Solution) -> sp.csr_matrix:
        """``L21 = Lambda2' Z2'Z1 Lambda1 L1^{-T}``, sparse with the pattern of ``Z2'Z1``."""
        s = self.stats
        q1, m1 = s.first_q, s.n_first_levels
        Z21 = s.rest_Z1
        if self._all_scalar:  # diagonal Lambdas and L1: scale the rows and columns of Z2'Z1
            col_scale = lams[0][0, 0] / sol.L1[0, 0]
            row_scale = self._scalar_rest_scale(lams)
            data = Z21.data * row_scale[self._Z21_rows] * col_scale[Z21.indices]
            return sp.csr_matrix((data, Z21.indices, Z21.indptr), shape=Z21.shape)
        # Right factor per level: Lambda1 L1_j^{-T}.
        L1inv = batched.lower_inverse(sol.L1)
        right = np.einsum("ab,cbm->acm", lams[0], L1inv)  # [a, c] = sum_b lam[a,b] Linv[c,b]
        data = right.transpose(2, 0, 1).reshape(-1)
        blockdiag = sp.csr_matrix((data, self._bd_indices, self._bd_indptr), shape=(m1 * q1, m1 * q1))
        return (self._rest_lambda(lams).T @ Z21 @ blockdiag).tocsr()

    def _solve_rest(
        self, lams: list[np.ndarray], sol: Solution, M: np.ndarray, rhs: np.ndarray, r2: float, dense: bool = True
    ) -> tuple[float, np.ndarray, np.ndarray, float]:
        """Eliminate the first factor from the other factors' block and factor the rest densely."""
        s = self.stats
        q1, m1 = s.first_q, s.n_first_levels
        L21 = self._lower_left_block(lams, sol)
        if self._nested:
            lam2 = self._rest_lambda(lams)
            return self._solve_nested_rest(lams[1], lam2, L21, sol, M, rhs, r2, dense)
        if self._all_scalar:  # only the lower triangle is formed: the Cholesky reads no more
            row_scale = self._scalar_rest_scale(lams)
            S = s.rest_ZtZ * np.outer(row_scale, row_scale)
            col_scale = lams[0][0, 0] / sol.L1[0, 0]
            fill = self._pair_matrix @ (col_scale * col_scale)
            S.reshape(-1)[self._pair_flat] -= fill * row_scale[self._pair_rows] * row_scale[self._pair_cols]
        else:  # Lambda2 is block diagonal: apply it block by block from both sides
            S = self._rest_lambda_T(lams, self._rest_lambda_T(lams, s.rest_ZtZ).T).T
            S -= (L21 @ L21.T).toarray()
        S[np.diag_indices_from(S)] += 1.0
        L2 = la.cholesky(S, lower=True, overwrite_a=True, check_finite=False)
        flat_c1X = sol.c1X[0].T if q1 == 1 else sol.c1X.transpose(2, 0, 1).reshape(m1 * q1, -1)
        flat_c1y = sol.c1y[0] if q1 == 1 else sol.c1y.T.reshape(-1)
        c2X = la.solve_triangular(L2, self._rest_lambda_T(lams, s.rest_ZtX) - L21 @ flat_c1X, lower=True)
        c2y = la.solve_triangular(L2, self._rest_lambda_T(lams, s.rest_Zty) - L21 @ flat_c1y, lower=True)
        sol.L21, sol.L2, sol.c2X, sol.c2y = L21, L2, c2X, c2y
        logdet = 2.0 * float(np.log(np.diag(L2)).sum())
        return logdet, M - c2X.T @ c2X, rhs - c2X.T @ c2y, r2 - float(c2y @ c2y)

    # ------------------------------------------------------------------ random effects
    def spherical_modes(self, sol: Solution) -> tuple[np.ndarray, np.ndarray | None]:
        """Spherical random effects ``u`` solving ``L' u = c_u - R_ZX beta`` (first, rest)."""
        beta = sol.beta
        r1 = sol.c1y - np.tensordot(sol.c1X, beta, axes=([1], [0])) if beta.size else sol.c1y.copy()
        if sol.L2 is None:
            return batched.solve_upper_from_lower(sol.L1, r1), None
        r2 = sol.c2y - sol.c2X @ beta if beta.size else sol.c2y.copy()
        u2 = la.solve_triangular(sol.L2, r2, lower=True, trans="T")
        # L1' u1 + L21' u2 = r1  =>  u1 = L1^{-T} (r1 - L21' u2)
        q1, m1 = self.stats.first_q, self.stats.n_first_levels
        corr = (sol.L21.T @ u2).reshape(m1, q1).T
        return batched.solve_upper_from_lower(sol.L1, r1 - corr), u2

    def fixed_effect_fill(self, sol: Solution) -> list[np.ndarray]:
        """Per factor, the stack (q, q, m) of ``(E M^{-1} E')_jj`` with ``E = L^{-T} R_ZX``.

        Added to the conditional covariance ``(L L')^{-1}`` this gives the random block of
        the inverse of the full mixed-model-equations matrix: the prediction-error
        covariance ``Var(b_hat - b)`` that also counts the estimation of beta (Stata's
        comparative standard errors).  Returned before multiplication by Lambda and sigma^2.
        """
        s = self.stats
        p = s.p
        q1, m1 = s.first_q, s.n_first_levels
        if p == 0:
            fills = [np.zeros((q1, q1, m1))] + [np.zeros((q, q, m)) for q, m in s.rest_sizes]
            return fills
        Minv = la.cho_solve((sol.RX, True), np.eye(p))
        c1X = sol.c1X
        E2 = None
        if sol.L2 is not None:
            E2 = la.solve_triangular(sol.L2, sol.c2X, lower=True, trans="T")  # Q2 x p
            corr = (sol.L21.T @ E2).reshape(m1, q1, p).transpose(1, 2, 0)
            c1X = c1X - corr
        E1 = batched.solve_upper_from_lower(sol.L1, c1X)  # (q1, p, m1)
        EM = np.einsum("akm,kl->alm", E1, Minv)
        fills = [np.einsum("akm,bkm->abm", EM, E1)]
        if E2 is not None:
            offset = 0
            for q, m in s.rest_sizes:
                part = E2[offset : offset + q * m].reshape(m, q, p)
                fills.append(np.einsum("jak,kl,jbl->abj", part, Minv, part))
                offset += q * m
        return fills

    def conditional_covariances(self, sol: Solution, lams: list[np.ndarray]) -> list[np.ndarray]:
        """Per factor, the stack (q, q, m) of ``Lambda (L L')^{-1}_jj Lambda'`` (times sigma^2: condVar).

        For the first factor the diagonal blocks of the inverse add, to ``(L1_j L1_j')^{-1}``,
        the fill from the rest: ``W_j' W_j`` with ``W = L2^{-1} L21 L1^{-1}`` (computed in
        column chunks so memory stays bounded).
        """
        s = self.stats
        inv1 = batched.inverse_from_cholesky(sol.L1)
        out = []
        if sol.L2 is not None:
            q1, m1 = s.first_q, s.n_first_levels
            eye = np.broadcast_to(np.eye(q1)[:, :, None], (q1, q1, m1))
            L1inv = batched.solve_lower(sol.L1, np.ascontiguousarray(eye))
            data = L1inv.transpose(2, 0, 1).reshape(-1)
            bd_inv = sp.csr_matrix((data, self._bd_indices, self._bd_indptr), shape=(m1 * q1, m1 * q1))
            chunk = max(q1, (2_000_000 // max(sol.L2.shape[0], 1)) // q1 * q1)
            for start in range(0, m1 * q1, chunk):
                stop = min(start + chunk, m1 * q1)
                block = (sol.L21 @ bd_inv[:, start:stop]).toarray()
                W = la.solve_triangular(sol.L2, block, lower=True)
                k = (stop - start) // q1
                Wr = W.reshape(W.shape[0], k, q1)
                inv1[:, :, start // q1 : stop // q1] += np.einsum("rja,rjb->abj", Wr, Wr)
        out.append(np.einsum("ia,abm,jb->ijm", lams[0], inv1, lams[0]))
        if sol.L2 is not None:
            L2inv = la.solve_triangular(sol.L2, np.eye(sol.L2.shape[0]), lower=True)
            offset = 0
            for lam, (q, m) in zip(lams[1:], s.rest_sizes):
                part = L2inv[:, offset : offset + q * m].reshape(-1, m, q)
                inv = np.einsum("rja,rjb->abj", part, part)
                out.append(np.einsum("ia,abm,jb->ijm", lam, inv, lam))
                offset += q * m
        return out
