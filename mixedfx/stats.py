"""Sufficient statistics: the data reduced once, before optimisation, to cross-products.

The profiled likelihood depends on the rows only through cross-products of ``[Z X y]``.
For the first (largest) grouping factor these are kept per level, as stacks
``Z_j'Z_j`` (q, q, m), ``Z_j'X_j`` (q, p, m) and ``Z_j'y_j`` (q, m); the remaining factors
(crossed or nested ones with fewer levels) keep their cross-products with the first
factor as a sparse matrix and among themselves as a dense one.  After this reduction one
likelihood evaluation never touches the n rows.

Numerical conditioning: ``X`` and ``y`` are centred (when the model has an intercept) and
scaled before the cross-products are formed, so that covariates like calendar years or
incomes in millions do not lose digits to cancellation.  :class:`Scaling` records the
transformation so results can be mapped back exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class Scaling:
    """Affine standardisation ``X~ = X T``, ``y~ = (y - y_shift) / y_scale``.

    ``intercept`` is the index of a constant column of ``X`` (None if there is none),
    ``intercept_value`` that column's constant value.
    """

    T: np.ndarray
    y_shift: float
    y_scale: float
    intercept: int | None
    intercept_value: float

    @property
    def log_det_T(self) -> float:
        """``log |det T|``, which shifts the REML criterion by ``2 log|det T|``."""
        return float(np.linalg.slogdet(self.T)[1])

    def beta(self, beta_tilde: np.ndarray) -> np.ndarray:
        """Fixed effects on the original scale from those of the standardised problem."""
        beta = self.y_scale * (self.T @ beta_tilde)
        if self.intercept is not None:
            beta[self.intercept] += self.y_shift / self.intercept_value
        return beta

    def beta_cov(self, cov_tilde: np.ndarray) -> np.ndarray:
        """Covariance of the original-scale fixed effects."""
        return self.y_scale**2 * (self.T @ cov_tilde @ self.T.T)

    @classmethod
    def identity(cls, p: int) -> Scaling:
        """A scaling that changes nothing."""
        return cls(np.eye(p), 0.0, 1.0, None, 1.0)


def _constant_column(X: np.ndarray) -> tuple[int | None, float]:
    """Index and value of the first non-zero constant column of ``X`` (the intercept), or (None, 1.0)."""
    for j in range(X.shape[1]):
        col = X[:, j]
        if col[0] != 0 and col.min() == col[0] and col.max() == col[0]:
            return j, float(col[0])
    return None, 1.0


def _centre_and_scale(values: np.ndarray, out: np.ndarray, centre: bool, work: np.ndarray) -> tuple[float, float]:
    """Write ``(values - shift) / scale`` into ``out``; shift is the mean (if ``centre``), scale the RMS after it.

    The arithmetic runs on the contiguous ``work`` buffer; ``out`` (a strided column of the
    row-major ``[X y]``) is written once.
    """
    shift = float(values.mean()) if centre else 0.0
    np.subtract(values, shift, out=work)
    scale = float(np.sqrt(np.dot(work, work) / max(work.size, 1)))
    scale = scale if scale > 0 and np.isfinite(scale) else 1.0
    np.multiply(work, 1.0 / scale, out=out)
    return shift, scale


def standardise(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, Scaling]:
    """Centre and scale the columns of ``X`` and ``y`` (see :class:`Scaling`).

    With an intercept column every other column is centred on its mean; every column but
    the intercept is divided by its root mean square (after centring).  The results are
    views of one n x (p+1) array ``[X~ y~]`` (see :func:`stacked_xy`), so the reduction
    needs no further copy.
    """
    n, p = X.shape
    T = np.eye(p)
    intercept, value = _constant_column(X)
    W = np.empty((n, p + 1))
    work = np.empty(n)
    for j in range(p):
        if j == intercept:
            W[:, j] = X[:, j]
            continue
        shift, scale = _centre_and_scale(X[:, j], W[:, j], intercept is not None, work)
        T[j, j] = 1.0 / scale
        if intercept is not None:
            T[intercept, j] = -shift / (scale * value)
    y_shift, y_scale = _centre_and_scale(y, W[:, p], intercept is not None, work)
    return W[:, :p], W[:, p], Scaling(T, y_shift, y_scale, intercept, value)


@dataclass
class SufficientStats:
    """Cross-products of the (weighted, standardised) model, as used by the likelihood.

    ``first_*`` are per-level stacks for the first grouping factor; ``rest_*`` are the
    cross-products involving the other factors' columns (level-major within each factor).
    """

    n: int
    p: int
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    sum_log_weights: float
    first_q: int
    first_ZtZ: np.ndarray
    first_ZtX: np.ndarray
    first_Zty: np.ndarray
    rest_sizes: list[tuple[int, int]]
    rest_Z1: sp.csr_matrix | None = None
    rest_ZtZ: np.ndarray | None = None
    rest_ZtX: np.ndarray | None = None
    rest_Zty: np.ndarray | None = None
    first_ZtW: np.ndarray | None = None  # (q, p+1, m) with first_ZtX and first_Zty as views, when built so
    column_transforms: list[np.ndarray] | None = None  # T_k already applied (statistics of Z T_k); None: none

    @property
    def n_first_levels(self) -> int:
        """Number of levels of the first grouping factor."""
        return self.first_Zty.shape[1]

    @property
    def rest_dim(self) -> int:
        """Total number of random effects outside the first factor."""
        return sum(q * m for q, m in self.rest_sizes)


def level_indicator(codes: np.ndarray, m: int) -> tuple[sp.csr_matrix, bool]:
    """The m x n indicator matrix of the levels (row j has a 1 in the columns of level j's rows).

    Rows already grouped by level (the common case, returned flag True) give the CSR arrays
    directly; otherwise scipy's COO-to-CSR conversion groups them with a linear-time
    counting sort.
    """
    n = codes.size
    if n == 0 or bool(np.all(codes[1:] >= codes[:-1])):
        indptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.bincount(codes, minlength=m), out=indptr[1:])
        return sp.csr_matrix((np.ones(n), np.arange(n), indptr), shape=(m, n)), True
    return sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(m, n)), False


def _weighted_indicator(G: sp.csr_matrix, values: np.ndarray, rows_in_order: bool) -> sp.csr_matrix:
    """``G`` with each row's 1 replaced by ``values`` of that row (``G diag(values)``)."""
    if np.all(values == 1.0):
        return G
    data = np.ascontiguousarray(values) if rows_in_order else values[G.indices]  # sorted rows: no gather
    return sp.csr_matrix((data, G.indices, G.indptr), shape=G.shape)


def stacked_xy(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``[X y]`` as one C-ordered n x (p+1) array: the buffer itself when X and y are views of one."""
    base = X.base
    n, p = X.shape
    if (
        isinstance(base, np.ndarray)
        and y.base is base
        and base.shape == (n, p + 1)
        and base.flags.c_contiguous
        and X.__array_interface__["data"][0] == base.__array_interface__["data"][0]
        and y.__array_interface__["data"][0] == base.__array_interface__["data"][0] + p * base.itemsize
    ):
        return base
    W = np.empty((n, p + 1))
    W[:, :p] = X
    W[:, p] = y
    return W


def per_level_crossproducts(
    codes: np.ndarray, m: int, Z: np.ndarray, X: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Stacks ``Z_j'Z_j`` (q, q, m) and ``Z_j'[X_j y_j]`` (q, p+1, m) by level ``codes``.

    Each random-effects column ``z_a`` becomes a sparse m x n matrix ``G diag(z_a)``; one
    sparse-times-dense product per column then sums every cross-product in one pass over
    the rows, with no n-sized temporaries.
    """
    q = Z.shape[1]
    W = stacked_xy(X, y)
    G, in_order = level_indicator(codes, m)
    ZtZ = np.empty((q, q, m))
    ZtW = np.empty((q, W.shape[1], m))
    for a in range(q):
        Ga = _weighted_indicator(G, Z[:, a], in_order)
        ZtW[a] = (Ga @ W).T
        for b in range(a, q):
            ZtZ[a, b] = Ga @ np.ascontiguousarray(Z[:, b])
            ZtZ[b, a] = ZtZ[a, b]
    return ZtZ, ZtW


def _sparse_cross(
    codes_a: np.ndarray, Za: np.ndarray, dim_a: int, codes_b: np.ndarray, Zb: np.ndarray, dim_b: int
) -> sp.csr_matrix:
    """Sparse ``Z_a' Z_b`` for two factors' level-major indicator-times-value matrices."""
    qa, qb = Za.shape[1], Zb.shape[1]
    rows, cols, vals = [], [], []
    for a in range(qa):
        for b in range(qb):
            rows.append(codes_a * qa + a)
            cols.append(codes_b * qb + b)
            vals.append(Za[:, a] * Zb[:, b])
    mat = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(dim_a, dim_b))
    return mat.tocsr()


def _level_major_sums(codes: np.ndarray, Z: np.ndarray, m: int, W: np.ndarray) -> np.ndarray:
    """``Z'W`` for a factor's level-major random-effects matrix: (q*m, k)."""
    q = Z.shape[1]
    G, in_order = level_indicator(codes, m)
    out = np.empty((m * q, W.shape[1]))
    for a in range(q):
        out[a::q] = _weighted_indicator(G, Z[:, a], in_order) @ W
    return out


def compute_stats(
    blocks_codes: list[np.ndarray],
    blocks_Z: list[np.ndarray],
    blocks_levels: list[int],
    X: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray | None,
) -> SufficientStats:
    """Reduce the rows to :class:`SufficientStats` (X and y already standardised)."""
    sum_log_w = 0.0
    if weights is not None:
        root = np.sqrt(weights)
        X = X * root[:, None]
        y = y * root
        blocks_Z = [Z * root[:, None] for Z in blocks_Z]
        sum_log_w = float(np.log(weights).sum())
    ZtZ, ZtW = per_level_crossproducts(blocks_codes[0], blocks_levels[0], blocks_Z[0], X, y)
    W = stacked_xy(X, y)
    ZtW_total = W.T @ W
    stats = SufficientStats(
        n=len(y),
        p=X.shape[1],
        XtX=ZtW_total[:-1, :-1],
        Xty=ZtW_total[:-1, -1],
        yty=float(ZtW_total[-1, -1]),
        sum_log_weights=sum_log_w,
        first_q=blocks_Z[0].shape[1],
        first_ZtZ=ZtZ,
        first_ZtX=ZtW[:, :-1, :],
        first_Zty=ZtW[:, -1, :],
        first_ZtW=ZtW,
        rest_sizes=[(Z.shape[1], m) for Z, m in zip(blocks_Z[1:], blocks_levels[1:])],
    )
    if len(blocks_Z) > 1:
        _add_rest_stats(stats, blocks_codes, blocks_Z, blocks_levels, X, y)
    return stats


def _add_rest_stats(
    stats: SufficientStats,
    codes: list[np.ndarray],
    Zs: list[np.ndarray],
    levels: list[int],
    X: np.ndarray,
    y: np.ndarray,
) -> None:
    """Cross-products of the factors after the first (see :class:`SufficientStats`)."""
    dims = [Z.shape[1] * m for Z, m in zip(Zs, levels)]
    dim1 = dims[0]
    rest_to_first = [_sparse_cross(codes[k], Zs[k], dims[k], codes[0], Zs[0], dim1) for k in range(1, len(Zs))]
    stats.rest_Z1 = sp.vstack(rest_to_first).tocsr()
    rows = []
    for k in range(1, len(Zs)):
        rows.append([_sparse_cross(codes[k], Zs[k], dims[k], codes[j], Zs[j], dims[j]) for j in range(1, len(Zs))])
    stats.rest_ZtZ = sp.bmat(rows).toarray()
    W = np.column_stack([X, y])
    sums = np.vstack([_level_major_sums(codes[k], Zs[k], levels[k], W) for k in range(1, len(Zs))])
    stats.rest_ZtX = sums[:, :-1]
    stats.rest_Zty = sums[:, -1]


#: Levels per chunk when transforming the per-level stacks in place (bounds the temporaries).
TRANSFORM_CHUNK = 500_000


def set_column_transforms(stats: SufficientStats, transforms: list[np.ndarray]) -> None:
    """Change ``stats`` in place to those of the random-effect columns ``Z T_k``.

    The statistics may already be those of ``Z C_k`` (``stats.column_transforms``); the
    relative transform ``R_k = C_k^{-1} T_k`` is applied: ``S_j -> R' S_j R`` and
    ``Z_j'W_j -> R' Z_j'W_j`` for the first factor, level chunk by level chunk so that no
    second copy of the (possibly 10^7-level) stacks is made; the smaller outer-factor parts
    are recomputed.
    """
    from .batched import kron_apply

    current = stats.column_transforms or [np.eye(T.shape[0]) for T in transforms]
    if all(np.array_equal(C, T) for C, T in zip(current, transforms)):
        stats.column_transforms = [np.array(T, dtype=float) for T in transforms]
        return
    relative = [np.linalg.solve(C, T) for C, T in zip(current, transforms)]
    R1 = relative[0]
    m = stats.n_first_levels
    for start in range(0, m, TRANSFORM_CHUNK):
        sl = slice(start, min(start + TRANSFORM_CHUNK, m))
        stats.first_ZtZ[:, :, sl] = kron_apply(R1.T, R1, stats.first_ZtZ[:, :, sl])
        if stats.first_ZtW is not None:  # first_ZtX and first_Zty are views of it
            stats.first_ZtW[:, :, sl] = np.tensordot(R1.T, stats.first_ZtW[:, :, sl], axes=(1, 0))
        else:
            stats.first_ZtX[:, :, sl] = np.tensordot(R1.T, stats.first_ZtX[:, :, sl], axes=(1, 0))
            stats.first_Zty[:, sl] = R1.T @ stats.first_Zty[:, sl]
    if stats.rest_Z1 is not None:
        K1 = sp.kron(sp.identity(m), sp.csr_matrix(R1), format="csr")
        K2 = sp.block_diag(
            [sp.kron(sp.identity(mk), sp.csr_matrix(R)) for R, (_, mk) in zip(relative[1:], stats.rest_sizes)],
            format="csr",
        )
        stats.rest_Z1 = (K2.T @ stats.rest_Z1 @ K1).tocsr()
        stats.rest_ZtZ = (K2.T @ sp.csr_matrix(stats.rest_ZtZ) @ K2).toarray()
        stats.rest_ZtX = K2.T @ stats.rest_ZtX
        stats.rest_Zty = K2.T @ stats.rest_Zty
    stats.column_transforms = [np.array(T, dtype=float) for T in transforms]
