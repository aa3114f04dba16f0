"""Method-of-moments variance components and GLS fixed effects for random intercepts, crossed or nested.

For ``y = X beta + sum_k Z_k u_k + e`` with ``u_k ~ N(0, s_k^2 I)`` (K factors with random
intercepts) and ``e ~ N(0, s_e^2 I)``, after the OLS residuals ``r = R y`` (``R = I - H``,
``H = X (X'X)^{-1} X'``), the within-level U-statistics of Gao & Owen (2017, 2020)

    U_k = r' A_k r = sum_levels (N_l sum r^2 - (sum r)^2),   A_k = diag(N_k(row)) - Z_k Z_k'
    U_e = r' A_e r = n r'r - (1'r)^2,                        A_e = n I - 1 1'

(half the sums of squared differences of residuals that share a level of factor k, and of all
pairs) have expectations linear in the variance components,

    E U_k = sum_l s_l^2 c_kl,   c_kl = tr(A_k R Z_l Z_l' R)   (Z_e = I),

and ``c_kl`` is computed exactly in O(n p) from per-level sums of X:

    c_kl = tr(Z_l' A_k Z_l) - 2 tr(G S_l Z_l' A_k X) + tr(G X'A_k X G S_l S_l'),

``G = (X'X)^{-1}``, ``S_l = X' Z_l``; ``tr(Z_l' A_k Z_l) = sum N_k^2 - sum_cells n_kl^2`` (cells of the
k x l cross-classification).  Solving ``C s = U`` gives unbiased estimates (truncated at zero).
Nothing is factorised: the cost is O(n (p + K)) plus sorting the cells.

The fixed effects are then GLS with those components, ``V = s_e^2 I + Z D Z'``:
``X'V^{-1}x = (X'x - X'Z w) / s_e^2`` with ``(Z'Z + s_e^2 D^{-1}) w = Z'x`` solved by conjugate
gradients preconditioned by the diagonal (Jacobi), using only level sums and the cells'
counts ``Z_k'Z_l`` (Z is never formed), and ``Cov(beta) = (X'V^{-1}X)^{-1}`` given the
components (Ghosh, Hastie & Owen 2022 solve the same system by backfitting).

Standard errors of the components come from a parametric bootstrap that redraws the random
effects and errors and recomputes U (each replicate O(n); no refit of beta is needed because
U depends on y only through ``r = R y``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

#: Rows per chunk where an n x p product would otherwise be held whole.
CHUNK_ROWS = 1 << 20


@dataclass
class MomentEstimates:
    """Components ``sigma2`` (K factors, then the residual), the moment system ``C s = U`` and GLS results."""

    sigma2: np.ndarray
    truncated: np.ndarray
    C: np.ndarray
    U: np.ndarray
    beta: np.ndarray
    beta_cov: np.ndarray
    cg_iterations: int


class CrossedDesign:
    """Rows with K grouping factors (random intercepts) and fixed effects X, reduced to level sums.

    ``codes[k]`` gives each row's level of factor k (0 .. m_k - 1); ``X`` is n x p.
    """

    def __init__(self, X: np.ndarray, codes: list[np.ndarray], levels: list[int]):
        self.X = np.asarray(X, dtype=float)
        self.n, self.p = self.X.shape
        self.codes = [np.asarray(c, dtype=np.int64) for c in codes]
        self.levels = list(levels)
        self.K = len(codes)
        self.counts = [np.bincount(c, minlength=m).astype(float) for c, m in zip(self.codes, self.levels)]
        self.G = np.linalg.inv(self.X.T @ self.X)  # p x p, p small: the OLS normal equations
        self._cells: dict[tuple[int, int], sp.csr_matrix] = {}
        self.S = [self._level_sums(self.X, k) for k in range(self.K)]  # m_k x p
        self.C = self._coefficients()

    # ------------------------------------------------------------------ operators
    def _level_sums(self, values: np.ndarray, k: int) -> np.ndarray:
        """Sums of ``values`` (n or n x q) over the rows of each level of factor k."""
        codes, m = self.codes[k], self.levels[k]
        if values.ndim == 1:
            return np.bincount(codes, weights=values, minlength=m)
        return np.column_stack([np.bincount(codes, weights=values[:, j], minlength=m) for j in range(values.shape[1])])

    def residualise(self, v: np.ndarray) -> np.ndarray:
        """``R v = v - X G X'v`` (OLS residuals of v on X)."""
        return v - self.X @ (self.G @ (self.X.T @ v))

    def quadratic(self, k: int, r: np.ndarray) -> float:
        """``U_k = r' A_k r`` in one pass of level sums."""
        if k == self.K:
            return float(self.n * (r @ r) - r.sum() ** 2)
        sums = self._level_sums(r, k)
        return float(self._level_sums(r * r, k) @ self.counts[k] - sums @ sums)

    # ------------------------------------------------------------------ the moment system
    def cells(self, k: int, l_: int) -> sp.csr_matrix:
        """``Z_k' Z_l``: the m_k x m_l counts of the cross-classification (sorted once per pair, kept)."""
        if (k, l_) not in self._cells:
            key = self.codes[k] * self.levels[l_] + self.codes[l_]
            unique, counts = np.unique(key, return_counts=True)
            del key
            shape = (self.levels[k], self.levels[l_])
            rows, cols = np.divmod(unique, self.levels[l_])
            self._cells[(k, l_)] = sp.csr_matrix((counts.astype(float), (rows, cols)), shape=shape)
        return self._cells[(k, l_)]

    def _cell_squares(self, k: int, l_: int) -> float:
        """``sum_cells n_kl^2`` over the cells of the k x l cross-classification (k = l: sum N_k^2)."""
        if k == l_:
            return float(self.counts[k] @ self.counts[k])
        cells = self.cells(min(k, l_), max(k, l_)).data
        return float(cells @ cells)

    def _trace_ZAZ(self, k: int, l_: int) -> float:
        """``tr(Z_l' A_k Z_l)`` from counts alone (Z_e = I; A_e = n I - 1 1')."""
        K, n = self.K, float(self.n)
        squares_l = float(self.counts[l_] @ self.counts[l_]) if l_ < K else n
        if k == K:
            return n * n - squares_l if l_ < K else n * n - n
        squares_k = float(self.counts[k] @ self.counts[k])
        return squares_k - (self._cell_squares(k, l_) if l_ < K else n)

    def _AX_products(self, k: int, column_sums: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """``X' A_k X`` (p x p) and ``Z_l' A_k X`` (m_l x p) for every factor l, in chunks of rows
        (``A_k X`` is never held whole: O(chunk p) memory)."""
        p = self.p
        W = np.zeros((p, p))
        ZAX = [np.zeros((m, p)) for m in self.levels]
        for start in range(0, self.n, CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            X = self.X[rows]
            if k == self.K:
                AX = self.n * X - column_sums  # A_e X = n X - 1 1'X
            else:
                codes = self.codes[k][rows]
                AX = self.counts[k][codes][:, None] * X - self.S[k][codes]
            W += X.T @ AX
            for l_ in range(self.K):
                codes_l = self.codes[l_][rows]
                for j in range(p):
                    ZAX[l_][:, j] += np.bincount(codes_l, weights=AX[:, j], minlength=self.levels[l_])
        return W, ZAX

    def _coefficients(self) -> np.ndarray:
        """``C[k, l] = tr(A_k R Z_l Z_l' R)``, k, l over the K factors and the residual (exact, O(n p))."""
        K, G = self.K, self.G
        column_sums = self.X.sum(axis=0)
        XtX = self.X.T @ self.X
        C = np.zeros((K + 1, K + 1))
        for k in range(K + 1):
            W, ZAX = self._AX_products(k, column_sums)  # X' A_k X, Z_l' A_k X
            for l_ in range(K + 1):
                if l_ < K:
                    S = self.S[l_].T  # X' Z_l, p x m_l
                    cross, Q = np.trace(G @ (S @ ZAX[l_])), S @ S.T
                else:  # Z_e = I: X' A_k X and X'X
                    cross, Q = np.trace(G @ W), XtX
                C[k, l_] = self._trace_ZAZ(k, l_) - 2.0 * cross + np.trace(G @ W @ G @ Q)
        return C

    def moments(self, y: np.ndarray) -> np.ndarray:
        """``(U_1, ..., U_K, U_e)`` of the OLS residuals of y."""
        r = self.residualise(np.asarray(y, dtype=float))
        return np.array([self.quadratic(k, r) for k in range(self.K + 1)])

    def components(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Solve ``C s = U``; a negative component is set to zero and the others re-solved without its unknown
        (least squares over all K + 1 equations).  Returns (s, truncated flags)."""
        truncated = np.zeros(self.K + 1, dtype=bool)
        sigma2 = np.linalg.solve(self.C, U)
        while np.any(sigma2[: self.K] < 0):
            truncated[: self.K] |= sigma2[: self.K] < 0
            free = ~truncated
            fit, *_ = np.linalg.lstsq(self.C[:, free], U, rcond=None)
            sigma2 = np.zeros(self.K + 1)
            sigma2[free] = fit
        return sigma2, truncated

    # ------------------------------------------------------------------ GLS
    def _system(self, keep: list[int], sigma2: np.ndarray) -> spla.LinearOperator:
        """``K = Z'Z + s_e^2 D^{-1}`` over the kept factors' stacked levels, applied without forming Z:
        diagonal blocks ``diag(N_k) + s_e^2 / s_k^2``, off-diagonal blocks the cell counts ``Z_k'Z_l``."""
        offsets = np.cumsum([0] + [self.levels[k] for k in keep])
        diagonal = np.concatenate([self.counts[k] + sigma2[-1] / sigma2[k] for k in keep])
        pairs = [(i, j, self.cells(keep[i], keep[j])) for i in range(len(keep)) for j in range(i + 1, len(keep))]

        def matvec(w: np.ndarray) -> np.ndarray:
            w = np.ravel(w)
            out = diagonal * w
            for i, j, N in pairs:
                out[offsets[i] : offsets[i + 1]] += N @ w[offsets[j] : offsets[j + 1]]
                out[offsets[j] : offsets[j + 1]] += N.T @ w[offsets[i] : offsets[i + 1]]
            return out

        size = int(offsets[-1])
        return spla.LinearOperator((size, size), matvec=matvec, dtype=float), diagonal, offsets

    def gls(self, y: np.ndarray, sigma2: np.ndarray, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, int]:
        """``(beta, Cov(beta), CG iterations)``: GLS with ``V = s_e^2 I + sum_k s_k^2 Z_k Z_k'``.

        ``X'V^{-1}[X y] = (X'[X y] - sum_k S_k' w_k) / s_e^2`` with ``K w = Z'[X y]`` (level sums):
        after the level sums no n-vector is needed.
        """
        s_e2 = float(sigma2[-1])
        keep = [k for k in range(self.K) if sigma2[k] > 0]
        XtXY = np.column_stack([self.X.T @ self.X, self.X.T @ y])  # p x (p + 1)
        iterations = 0
        if keep:
            system, diagonal, offsets = self._system(keep, sigma2)
            precond = spla.LinearOperator(system.shape, matvec=lambda v: np.ravel(v) / diagonal, dtype=float)
            ZtXY = np.vstack([np.column_stack([self.S[k], self._level_sums(y, k)]) for k in keep])  # Q x (p + 1)
            W = np.empty_like(ZtXY)
            for j in range(ZtXY.shape[1]):
                count = [0]

                def step(_x: np.ndarray, count: list = count) -> None:
                    count[0] += 1

                W[:, j], info = spla.cg(
                    system, ZtXY[:, j], rtol=tol, atol=0.0, M=precond, maxiter=10_000, callback=step
                )
                if info != 0:
                    raise np.linalg.LinAlgError(f"conjugate gradients did not converge in {count[0]} iterations")
                iterations = max(iterations, count[0])
            for i, k in enumerate(keep):
                XtXY -= self.S[k].T @ W[offsets[i] : offsets[i + 1]]
        XtViX, XtViy = XtXY[:, : self.p] / s_e2, XtXY[:, self.p] / s_e2
        cov = np.linalg.inv(XtViX)
        return cov @ XtViy, 0.5 * (cov + cov.T), iterations

    def estimate(self, y: np.ndarray) -> MomentEstimates:
        """Components from the moments of y's OLS residuals, then GLS fixed effects."""
        y = np.asarray(y, dtype=float)
        U = self.moments(y)
        sigma2, truncated = self.components(U)
        if sigma2[-1] <= 0:
            raise np.linalg.LinAlgError("the residual variance's moment estimate is not positive")
        beta, cov, iterations = self.gls(y, sigma2)
        return MomentEstimates(sigma2, truncated, self.C, U, beta, cov, iterations)

    def bootstrap_components(self, sigma2: np.ndarray, replicates: int, seed: int) -> np.ndarray:
        """Parametric-bootstrap replicates (replicates x (K+1)) of the components at ``sigma2``.

        Each replicate draws ``sum_k Z_k u_k + e`` (beta does not matter: U uses residuals on X)
        and solves the moment system again.
        """
        rng = np.random.default_rng(seed)
        out = np.empty((replicates, self.K + 1))
        for b in range(replicates):
            y = rng.normal(scale=np.sqrt(sigma2[-1]), size=self.n)
            for k in range(self.K):
                if sigma2[k] > 0:
                    y += rng.normal(scale=np.sqrt(sigma2[k]), size=self.levels[k])[self.codes[k]]
            out[b] = self.components(self.moments(y))[0]
        return out
