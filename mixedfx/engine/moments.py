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

The units of the computation are *cells*: rows, or groups of rows that share every factor's
level (an out-of-core reduction, :mod:`mixedfx.data.reduce.cells`).  Everything above is a sum over
cells of ``n_c``, ``sum x``, ``sum x x'``, ``sum y``, ``sum y^2`` and ``sum x y``; a cell of one row
needs only its ``x`` and ``y``.  The bootstrap draws a cell's error sums exactly: with
``W_c = [1 X_c]`` (its rows), ``z = W_c'e ~ N(0, s_e^2 W_c'W_c)`` and
``e'e = z'(W_c'W_c)^+ z + s_e^2 chi2(n_c - rank W_c)``, the two independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

#: Rows per chunk where an n x p product would otherwise be held whole.
CHUNK_ROWS = 1 << 20


class NoResidualVariation(np.linalg.LinAlgError):
    """The OLS residuals are zero: the response is constant or an exact function of X."""


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


@dataclass
class CellSums:
    """Cells of several rows: their row counts ``n`` and sums ``sum x x'`` (packed upper triangle,
    ``cells x p(p+1)/2``), in the order of the design's units where ``n > 1`` (``index``)."""

    index: np.ndarray
    n: np.ndarray
    xx: np.ndarray


@dataclass
class ResponseSums:
    """The response per unit: ``y`` (a row's value, a cell's sum) and, for the cells of several rows
    (:class:`CellSums`' order), ``sum y^2`` and ``sum x y`` (cells x p)."""

    y: np.ndarray
    yy: np.ndarray
    xy: np.ndarray


def _packed_pairs(p: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(p)


def unpack_symmetric(packed: np.ndarray, p: int) -> np.ndarray:
    """The p x p symmetric matrix whose upper triangle (row-major) is ``packed``."""
    out = np.zeros((p, p))
    out[_packed_pairs(p)] = packed
    return out + np.triu(out, 1).T


def packed_quadratic(packed: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """``gamma' M_c gamma`` for each packed symmetric ``M_c`` (rows of ``packed``)."""
    i, j = _packed_pairs(gamma.size)
    weights = np.where(i == j, 1.0, 2.0) * gamma[i] * gamma[j]
    return packed @ weights


class CrossedDesign:
    """Units (rows, or cells of rows sharing all levels) with K grouping factors (random intercepts)
    and fixed effects, reduced to level sums.

    ``codes[k]`` gives each unit's level of factor k (0 .. m_k - 1); ``X`` is units x p (a cell's
    ``sum x``); ``cells`` describes the units of more than one row (None: every unit is a row).
    """

    def __init__(self, X: np.ndarray, codes: list[np.ndarray], levels: list[int], cells: CellSums | None = None):
        self.X = np.asarray(X, dtype=float)
        self.n_units, self.p = self.X.shape
        self.codes = [np.asarray(c, dtype=np.int64) for c in codes]
        self.levels = list(levels)
        self.K = len(codes)
        self.multi = cells if cells is not None and cells.index.size else None
        if self.multi is not None and np.any(self.multi.n <= 1):
            raise ValueError("CellSums lists the cells of several rows only (a row's cell needs no sums)")
        self.unit_n = None  # rows per unit; None when every unit is one row
        if self.multi is not None:
            self.unit_n = np.ones(self.n_units)
            self.unit_n[self.multi.index] = self.multi.n
        self.n = self.n_units if self.unit_n is None else int(round(self.unit_n.sum()))
        weights = self.unit_n  # rows per unit (None: every unit a row)
        self.counts = [np.bincount(c, weights=weights, minlength=m).astype(float) for c, m in zip(self.codes, levels)]
        self.XtX = self.weighted_gram(np.ones(self.n_units))
        self.G = np.linalg.inv(self.XtX)  # p x p, p small: the OLS normal equations
        self._cells: dict[tuple[int, int], sp.csr_matrix] = {}
        self._gram_factors: tuple[np.ndarray, np.ndarray] | None = None
        self.S = [self._level_sums(self.X, k) for k in range(self.K)]  # m_k x p
        self.C = self._coefficients()

    # ------------------------------------------------------------------ operators
    def _level_sums(self, values: np.ndarray, k: int) -> np.ndarray:
        """Sums of ``values`` (units or units x q) over the units of each level of factor k."""
        codes, m = self.codes[k], self.levels[k]
        if values.ndim == 1:
            return np.bincount(codes, weights=values, minlength=m)
        return np.column_stack([np.bincount(codes, weights=values[:, j], minlength=m) for j in range(values.shape[1])])

    def weighted_gram(self, v: np.ndarray) -> np.ndarray:
        """``sum_units v_c (sum x x')_c`` (p x p), in chunks of rows."""
        p = self.p
        out = np.zeros((p, p))
        single = v if self.multi is None else np.where(self.unit_n == 1, v, 0.0)
        for start in range(0, self.n_units, CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            X = self.X[rows]
            out += X.T @ (single[rows, None] * X)
        if self.multi is not None:
            out += unpack_symmetric(v[self.multi.index] @ self.multi.xx, p)
        return out

    def response(self, y: np.ndarray) -> ResponseSums:
        """:class:`ResponseSums` of a response given row by row (every unit a row)."""
        if self.multi is not None:
            raise ValueError("this design's units are cells: give the response as ResponseSums")
        y = np.asarray(y, dtype=float)
        return ResponseSums(y, np.zeros(0), np.zeros((0, self.p)))

    def _as_response(self, y) -> ResponseSums:
        return y if isinstance(y, ResponseSums) else self.response(y)

    def cross_products(self, y) -> np.ndarray:
        """``X'y`` (p)."""
        y = self._as_response(y)
        if self.multi is None:
            return self.X.T @ y.y
        single = np.where(self.unit_n == 1, y.y, 0.0)
        return self.X.T @ single + y.xy.sum(axis=0)

    def residual_sums(self, y) -> tuple[np.ndarray, np.ndarray]:
        """Per unit, the sums of the OLS residuals ``r = y - X G X'y`` and of their squares."""
        y = self._as_response(y)
        gamma = self.G @ self.cross_products(y)
        r = y.y - self.X @ gamma
        r2 = r * r
        if self.multi is not None:  # sum r^2 = sum y^2 - 2 gamma' sum x y + gamma' (sum x x') gamma
            idx = self.multi.index
            r2[idx] = y.yy - 2.0 * (y.xy @ gamma) + packed_quadratic(self.multi.xx, gamma)
        return r, r2

    def quadratic(self, k: int, r: np.ndarray, r2: np.ndarray) -> float:
        """``U_k = r' A_k r`` from the units' residual sums ``r`` and sums of squares ``r2``."""
        if k == self.K:
            return float(self.n * r2.sum() - r.sum() ** 2)
        sums = self._level_sums(r, k)
        return float(self._level_sums(r2, k) @ self.counts[k] - sums @ sums)

    # ------------------------------------------------------------------ the moment system
    def cells(self, k: int, l_: int) -> sp.csr_matrix:
        """``Z_k' Z_l``: the m_k x m_l counts of the cross-classification (sorted once per pair, kept)."""
        if (k, l_) not in self._cells:
            key = self.codes[k] * self.levels[l_] + self.codes[l_]
            if self.unit_n is None:
                unique, counts = np.unique(key, return_counts=True)
            else:
                unique, inverse = np.unique(key, return_inverse=True)
                counts = np.bincount(inverse, weights=self.unit_n)
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
        """``X' A_k X`` (p x p) and ``Z_l' A_k X`` (m_l x p) for every factor l, in chunks of units.

        Per unit c (rows ``i``), ``sum_i (A_k X)_i = N_k(c) sum x - n_c S_k[c]`` (``A_e``:
        ``n sum x - n_c 1'X``), and ``X' A_k X = sum_c N_k(c) (sum x x')_c - S_k'S_k``.
        """
        p = self.p
        if k == self.K:
            W = self.n * self.XtX - np.outer(column_sums, column_sums)
        else:
            W = self.weighted_gram(self.counts[k][self.codes[k]]) - self.S[k].T @ self.S[k]
        ZAX = [np.zeros((m, p)) for m in self.levels]
        for start in range(0, self.n_units, CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            X = self.X[rows]
            n_c = 1.0 if self.unit_n is None else self.unit_n[rows, None]  # rows per unit
            if k == self.K:
                AX = self.n * X - n_c * column_sums
            else:
                codes = self.codes[k][rows]
                AX = self.counts[k][codes][:, None] * X - n_c * self.S[k][codes]
            for l_ in range(self.K):
                codes_l = self.codes[l_][rows]
                for j in range(p):
                    ZAX[l_][:, j] += np.bincount(codes_l, weights=AX[:, j], minlength=self.levels[l_])
        return W, ZAX

    def _coefficients(self) -> np.ndarray:
        """``C[k, l] = tr(A_k R Z_l Z_l' R)``, k, l over the K factors and the residual (exact, O(n p))."""
        K, G = self.K, self.G
        column_sums = self.X.sum(axis=0)
        C = np.zeros((K + 1, K + 1))
        for k in range(K + 1):
            W, ZAX = self._AX_products(k, column_sums)  # X' A_k X, Z_l' A_k X
            for l_ in range(K + 1):
                if l_ < K:
                    S = self.S[l_].T  # X' Z_l, p x m_l
                    cross, Q = np.trace(G @ (S @ ZAX[l_])), S @ S.T
                else:  # Z_e = I: X' A_k X and X'X
                    cross, Q = np.trace(G @ W), self.XtX
                C[k, l_] = self._trace_ZAZ(k, l_) - 2.0 * cross + np.trace(G @ W @ G @ Q)
        return C

    def moments(self, y) -> np.ndarray:
        """``(U_1, ..., U_K, U_e)`` of the OLS residuals of y (a row vector or :class:`ResponseSums`)."""
        r, r2 = self.residual_sums(y)
        return np.array([self.quadratic(k, r, r2) for k in range(self.K + 1)])

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

    def gls(self, y, sigma2: np.ndarray, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, int]:
        """``(beta, Cov(beta), CG iterations)``: GLS with ``V = s_e^2 I + sum_k s_k^2 Z_k Z_k'``.

        ``X'V^{-1}[X y] = (X'[X y] - sum_k S_k' w_k) / s_e^2`` with ``K w = Z'[X y]`` (level sums):
        after the level sums no n-vector is needed.
        """
        y = self._as_response(y)
        s_e2 = float(sigma2[-1])
        keep = [k for k in range(self.K) if sigma2[k] > 0]
        XtXY = np.column_stack([self.XtX, self.cross_products(y)])  # p x (p + 1)
        iterations = 0
        if keep:
            system, diagonal, offsets = self._system(keep, sigma2)
            precond = spla.LinearOperator(system.shape, matvec=lambda v: np.ravel(v) / diagonal, dtype=float)
            ZtXY = np.vstack([np.column_stack([self.S[k], self._level_sums(y.y, k)]) for k in keep])  # Q x (p + 1)
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

    def estimate(self, y) -> MomentEstimates:
        """Components from the moments of y's OLS residuals, then GLS fixed effects."""
        y = self._as_response(y)
        U = self.moments(y)
        if U[-1] <= 1e-20 * float(self.n) ** 2:  # U_e = n r'r - (1'r)^2 of residuals of a unit-scale y
            raise NoResidualVariation("the OLS residuals are zero")
        sigma2, truncated = self.components(U)
        if sigma2[-1] <= 0:
            raise np.linalg.LinAlgError("the residual variance's moment estimate is not positive")
        beta, cov, iterations = self.gls(y, sigma2)
        return MomentEstimates(sigma2, truncated, self.C, U, beta, cov, iterations)

    # ------------------------------------------------------------------ parametric bootstrap
    def _cell_error_factors(self) -> tuple[np.ndarray, np.ndarray]:
        """For the cells of several rows: ``F_c`` ((p+1) x (p+1), ``F_c F_c' = W_c'W_c`` with
        ``W_c = [1 X_c]``; columns beyond the rank zero) and the rank (computed once)."""
        if self._gram_factors is None:
            cells, p = self.multi, self.p
            gram = np.empty((cells.index.size, p + 1, p + 1))
            gram[:, 0, 0] = cells.n
            gram[:, 0, 1:] = gram[:, 1:, 0] = self.X[cells.index]
            i, j = _packed_pairs(p)
            gram[:, 1 + i, 1 + j] = gram[:, 1 + j, 1 + i] = cells.xx
            values, vectors = np.linalg.eigh(gram)  # ascending
            values, vectors = values[:, ::-1], vectors[:, :, ::-1]
            positive = values > 1e-12 * values[:, :1]
            factor = vectors * np.sqrt(np.where(positive, values, 0.0))[:, None, :]
            self._gram_factors = (factor, positive.sum(axis=1))
        return self._gram_factors

    def simulate_response(self, sigma2: np.ndarray, rng: np.random.Generator) -> ResponseSums:
        """One draw of ``sum_k Z_k u_k + e`` as :class:`ResponseSums` (beta does not matter: U uses
        residuals on X).  A cell's error sums ``(sum e, sum x e)`` are ``s_e F_c xi`` and
        ``sum e^2 = s_e^2 (|xi_rank|^2 + chi2(n_c - rank))`` (module docstring)."""
        s_e = np.sqrt(sigma2[-1])
        mean = np.zeros(self.n_units)
        for k in range(self.K):
            if sigma2[k] > 0:
                mean += rng.normal(scale=np.sqrt(sigma2[k]), size=self.levels[k])[self.codes[k]]
        if self.multi is None:
            return self.response(mean + rng.normal(scale=s_e, size=self.n_units))
        cells = self.multi
        factor, rank = self._cell_error_factors()
        xi = rng.normal(size=(cells.index.size, self.p + 1))
        z = s_e * np.einsum("cab,cb->ca", factor, xi)
        used = np.arange(self.p + 1)[None, :] < rank[:, None]
        ee = (xi * xi * used).sum(axis=1)
        extra = cells.n - rank  # the errors' part orthogonal to the cell's columns
        more = extra > 0
        ee[more] += rng.chisquare(extra[more])
        ee *= sigma2[-1]
        single = self.unit_n == 1
        y = mean * self.unit_n
        y[single] += rng.normal(scale=s_e, size=int(single.sum()))
        mu = mean[cells.index]
        y[cells.index] += z[:, 0]
        yy = cells.n * mu * mu + 2.0 * mu * z[:, 0] + ee
        xy = self.X[cells.index] * mu[:, None] + z[:, 1:]
        return ResponseSums(y, yy, xy)

    def bootstrap_components(self, sigma2: np.ndarray, replicates: int, seed: int) -> np.ndarray:
        """Parametric-bootstrap replicates (replicates x (K+1)) of the components at ``sigma2``:
        each replicate draws the response (:meth:`simulate_response`) and solves the moment system again."""
        rng = np.random.default_rng(seed)
        out = np.empty((replicates, self.K + 1))
        for b in range(replicates):
            out[b] = self.components(self.moments(self.simulate_response(sigma2, rng)))[0]
        return out
