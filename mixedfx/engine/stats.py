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

from .batched import kron_apply


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


#: Rows per slice when a column's spread is summed, and (whole clusters) per chunk of the
#: first factor's reduction: a chunk's [X y] is a few MB, so it stays in cache.
CHUNK_ROWS = 65_536


def _shift_and_scale(values: np.ndarray, centre: bool) -> tuple[float, float]:
    """Shift (the mean, if ``centre``) and scale (the RMS after the shift; 1 for a zero column).

    Sums are taken of the values divided by their largest magnitude, slice by slice (no
    n-sized temporary), so that values near 1e300 do not overflow and values near 1e-300 do
    not underflow when squared.
    """
    n = values.size
    largest = max(abs(float(values.max())), abs(float(values.min()))) if n else 0.0
    if not largest > 0 or not np.isfinite(largest):
        return 0.0, 1.0
    mean_unit = sum(float(values[s : s + CHUNK_ROWS].sum() / largest) for s in range(0, n, CHUNK_ROWS)) / n
    shift_unit = mean_unit if centre else 0.0
    total = 0.0
    for start in range(0, n, CHUNK_ROWS):
        centred = values[start : start + CHUNK_ROWS] / largest - shift_unit
        total += float(np.dot(centred, centred))
    scale = float(np.sqrt(total / n)) * largest
    return shift_unit * largest, (scale if scale > 0 and np.isfinite(scale) else 1.0)


def column_moments(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and (population) SDs of an n x q matrix, from ``Z'1`` and ``Z'Z`` (two BLAS passes).

    The variance ``E[z^2] - mean^2`` is recomputed from centred values for a column whose
    mean dwarfs its spread (where that difference would cancel), and column by column from
    values divided by their largest magnitude for columns near 1e300 or 1e-300.  A column of
    ones gets exactly mean 1 and SD 0.
    """
    n = Z.shape[0]
    scales = column_scales(Z)
    if not np.all((scales > 1e-100) & (scales < 1e100)):
        pairs = [_shift_and_scale(Z[:, k], True) for k in range(Z.shape[1])]
        return np.array([m for m, _ in pairs]), np.array([0.0 if s == 1.0 and m == 1.0 else s for m, s in pairs])
    mean = Z.sum(axis=0) / n if Z.flags.f_contiguous else (Z.T @ np.ones(n)) / n
    second = np.einsum("ij,ij->j", Z, Z) / n
    var = second - mean**2
    for k in np.flatnonzero(var <= 1e-6 * second):
        centred = Z[:, k] - mean[k]
        var[k] = float(centred @ centred) / n
    return mean, np.sqrt(np.maximum(var, 0.0))


def column_scales(X: np.ndarray) -> np.ndarray:
    """The largest magnitude of each column of ``X`` (1 for a zero column): two passes, no temporary."""
    if X.shape[0] == 0:
        return np.ones(X.shape[1])
    scales = np.maximum(np.abs(X.max(axis=0)), np.abs(X.min(axis=0)))
    return np.where((scales > 0) & np.isfinite(scales), scales, 1.0)


def scaled_gram(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(D^{-1} X'X D^{-1}, D)`` with ``D`` the columns' largest magnitudes (:func:`column_scales`).

    The product is formed directly when every scale is between 1e-100 and 1e100, and from
    scaled slices of X otherwise, so that columns near 1e300 or 1e-300 neither overflow nor
    underflow.
    """
    scales = column_scales(X)
    if np.all((scales > 1e-100) & (scales < 1e100)):
        return (X.T @ X) / np.outer(scales, scales), scales
    gram = np.zeros((X.shape[1], X.shape[1]))
    for start in range(0, X.shape[0], CHUNK_ROWS):
        part = X[start : start + CHUNK_ROWS] / scales
        gram += part.T @ part
    return gram, scales


#: A column's moments are taken from ``X'X`` unless its squared mean exceeds this many times
#: its variance (``E[x^2] - mean^2`` would then lose more than six of sixteen digits).
GRAM_MOMENT_LIMIT = 1e6


def _moments_from_gram(gram: np.ndarray, j: int, intercept: int | None, value: float, n: int):
    """``(shift, scale)`` of column j from ``X'X`` (columns in any units); None where the variance would cancel."""
    if intercept is None:  # no centring: the RMS is sqrt(x'x / n), no cancellation
        scale = float(np.sqrt(gram[j, j] / n))
        return 0.0, scale
    mean = float(gram[intercept, j] / (value * n))
    variance = float(gram[j, j] / n - mean * mean)
    if not variance * GRAM_MOMENT_LIMIT > mean * mean:
        return None
    return mean, float(np.sqrt(variance))


def standardisation(
    X: np.ndarray, y: np.ndarray, gram: np.ndarray | None = None, gram_scales: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, Scaling]:
    """Shifts and inverse scales of the columns of ``[X y]``, and the :class:`Scaling` they define.

    With an intercept column every other column is centred on its mean; every column but
    the intercept is divided by its root mean square (after centring).  The standardised
    column is ``(x - shift) * inv_scale`` (shift 0 and inv_scale 1 for the intercept).
    ``gram`` (``D^{-1} X'X D^{-1}`` for the columns' scales ``gram_scales = D``, when known: see
    :func:`scaled_gram`) gives the columns' moments without a pass over them, except for a
    column whose mean dwarfs its spread (recomputed from centred values).
    Any shift and scale give the same fit, since :class:`Scaling` records them exactly; the
    moments only need to be accurate enough to condition the problem.
    """
    n, p = X.shape
    T = np.eye(p)
    intercept, value = _constant_column(X)
    shift, inv_scale = np.zeros(p + 1), np.ones(p + 1)
    for j in range(p + 1):
        if j == intercept:
            continue
        moments = None
        if gram is not None and j < p:
            d = np.ones(p) if gram_scales is None else gram_scales
            unit = None if intercept is None else value / d[intercept]
            moments = _moments_from_gram(gram, j, intercept, unit, n)
            moments = None if moments is None else (moments[0] * d[j], moments[1] * d[j])
        if moments is None:
            moments = _shift_and_scale(X[:, j] if j < p else y, intercept is not None)
        col_shift, scale = moments[0], (moments[1] if moments[1] > 0 and np.isfinite(moments[1]) else 1.0)
        shift[j], inv_scale[j] = col_shift, 1.0 / scale
        if j < p:
            T[j, j] = 1.0 / scale
            if intercept is not None:
                T[intercept, j] = -col_shift / (scale * value)
    return shift, inv_scale, Scaling(T, shift[p], 1.0 / inv_scale[p], intercept, value)


def apply_standardisation(
    X: np.ndarray, y: np.ndarray, shift: np.ndarray, inv_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(x - shift) * inv_scale`` column by column, as views of one n x (p+1) array ``[X~ y~]``."""
    n, p = X.shape
    W = np.empty((n, p + 1))
    work = np.empty(n)
    for j in range(p + 1):
        np.subtract(X[:, j] if j < p else y, shift[j], out=work)
        np.multiply(work, inv_scale[j], out=W[:, j])
    return W[:, :p], W[:, p]


def standardise(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, Scaling]:
    """Centre and scale the columns of ``X`` and ``y`` (see :func:`standardisation`).

    The results are views of one n x (p+1) array ``[X~ y~]`` (see :func:`stacked_xy`), so
    the reduction needs no further copy.
    """
    shift, inv_scale, scaling = standardisation(X, y)
    Xs, ys = apply_standardisation(X, y, shift, inv_scale)
    return Xs, ys, scaling


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
    rest_ZtZ: sp.csr_matrix | None = None  # sparse: a dense m x m copy would double the crossed fits' memory
    rest_ZtX: np.ndarray | None = None
    rest_Zty: np.ndarray | None = None
    first_ZtW: np.ndarray | None = None  # (q, p+1, m) with first_ZtX and first_Zty as views, when built so
    column_transforms: list[np.ndarray] | None = None  # T_k already applied (statistics of Z T_k); None: none

    @property
    def n_first_levels(self) -> int:
        """Number of levels of the first grouping factor."""
        return self.first_Zty.shape[1]


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


def grouping_order(codes: np.ndarray, m: int) -> np.ndarray | None:
    """A stable row order that groups the rows by level, or None when they already are.

    scipy's COO-to-CSR conversion is a linear-time counting sort (3x faster than a stable
    argsort at 10^6 rows): the column indices of the indicator, row by row, are that order.
    """
    n = codes.size
    if n == 0 or bool(np.all(codes[1:] >= codes[:-1])):
        return None
    return sp.csr_matrix((np.ones(n, dtype=np.int8), (codes, np.arange(n))), shape=(m, n)).indices


def _chunk_bounds(indptr: np.ndarray, n: int) -> np.ndarray:
    """Level indices where chunks of about :data:`CHUNK_ROWS` rows start (whole levels), and the end."""
    starts = np.searchsorted(indptr, np.arange(0, n, CHUNK_ROWS), side="right") - 1
    return np.unique(np.append(np.maximum(starts, 0), indptr.size - 1))


def per_level_crossproducts(
    codes: np.ndarray,
    m: int,
    Z: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    transform: np.ndarray | None = None,
    shift: np.ndarray | None = None,
    inv_scale: np.ndarray | None = None,
    root_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stacks ``Z_j'Z_j`` (q, q, m), ``Z_j'W_j`` (q, p+1, m) by level ``codes``, and the total ``W'W``.

    ``W = [X y]`` is standardised on the way as ``(w - shift) * inv_scale`` (when ``shift`` is
    given), ``Z`` becomes ``Z T`` (when ``transform`` is given), and both rows are multiplied
    by ``root_weights`` (sqrt of the weights).  The rows are visited level by level (through
    a counting sort when they are not grouped), in chunks of whole levels of about
    :data:`CHUNK_ROWS` rows: each chunk is standardised into a small buffer and reduced by one
    sparse indicator-times-dense product per random-effect column, so no n-sized temporary
    is made (fresh memory is slow to touch and the chunks stay in cache).
    """
    n, q = Z.shape
    k = X.shape[1] + 1
    counts = np.bincount(codes, minlength=m)
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    order = grouping_order(codes, m)
    bounds = _chunk_bounds(indptr, n)
    rows_per_chunk = np.diff(indptr[bounds])
    capacity = int(rows_per_chunk.max()) if rows_per_chunk.size else 0
    w_buffer = np.empty((capacity, k))
    z_buffer = np.empty((q, capacity))
    positions = np.arange(capacity)
    ZtZ = np.empty((q, q, m))
    ZtW = np.empty((q, k, m))
    WtW = np.zeros((k, k))
    for c0, c1 in zip(bounds[:-1], bounds[1:]):
        r0, r1 = int(indptr[c0]), int(indptr[c1])
        rows = slice(r0, r1) if order is None else order[r0:r1]
        w, z = w_buffer[: r1 - r0], z_buffer[:, : r1 - r0]
        w[:, :-1] = X[rows]
        w[:, -1] = y[rows]
        if shift is not None:
            w -= shift
            w *= inv_scale
        if transform is None:
            z[...] = Z[rows].T
        else:
            np.matmul(transform.T, Z[rows].T, out=z)
        if root_weights is not None:
            root = root_weights[rows]
            w *= root[:, None]
            z *= root
        WtW += w.T @ w
        local = (indptr[c0 : c1 + 1] - r0, positions[: r1 - r0])
        for a in range(q):
            Ga = sp.csr_matrix((z[a], local[1], local[0]), shape=(c1 - c0, r1 - r0))
            ZtW[a][:, c0:c1] = (Ga @ w).T
            for b in range(a, q):
                ZtZ[a, b, c0:c1] = Ga @ z[b]
                ZtZ[b, a, c0:c1] = ZtZ[a, b, c0:c1]
    return ZtZ, ZtW, WtW


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
    transforms: list[np.ndarray] | None = None,
    shift: np.ndarray | None = None,
    inv_scale: np.ndarray | None = None,
) -> SufficientStats:
    """Reduce the rows to :class:`SufficientStats`.

    ``X`` and ``y`` are standardised here as ``(w - shift) * inv_scale`` when ``shift`` is given
    (see :func:`standardisation`; else they are used as they are), each block's ``Z`` becomes
    ``Z T_k`` when ``transforms`` are given, and weights multiply every row by ``sqrt(w)``.
    The first factor is reduced chunk by chunk (:func:`per_level_crossproducts`); only
    models with further factors materialise the standardised columns.
    """
    root = None
    sum_log_w = 0.0
    if weights is not None:
        root = np.sqrt(weights)
        sum_log_w = float(np.log(weights).sum())
    first_T = transforms[0] if transforms is not None else None
    ZtZ, ZtW, WtW = per_level_crossproducts(
        blocks_codes[0], blocks_levels[0], blocks_Z[0], X, y, first_T, shift, inv_scale, root
    )
    stats = SufficientStats(
        n=len(y),
        p=X.shape[1],
        XtX=WtW[:-1, :-1],
        Xty=WtW[:-1, -1],
        yty=float(WtW[-1, -1]),
        sum_log_weights=sum_log_w,
        first_q=blocks_Z[0].shape[1],
        first_ZtZ=ZtZ,
        first_ZtX=ZtW[:, :-1, :],
        first_Zty=ZtW[:, -1, :],
        first_ZtW=ZtW,
        rest_sizes=[(Z.shape[1], m) for Z, m in zip(blocks_Z[1:], blocks_levels[1:])],
    )
    if len(blocks_Z) > 1:
        if shift is not None:
            X, y = apply_standardisation(X, y, shift, inv_scale)
        Zs = list(blocks_Z) if transforms is None else [Z @ T for Z, T in zip(blocks_Z, transforms)]
        if root is not None:
            X, y = X * root[:, None], y * root
            Zs = [Z * root[:, None] for Z in Zs]
        _add_rest_stats(stats, blocks_codes, Zs, blocks_levels, X, y)
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
    stats.rest_ZtZ = sp.csr_matrix(sp.bmat(rows))
    W = stacked_xy(X, y)
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
        stats.rest_ZtZ = sp.csr_matrix(K2.T @ stats.rest_ZtZ @ K2)
        stats.rest_ZtX = K2.T @ stats.rest_ZtX
        stats.rest_Zty = K2.T @ stats.rest_Zty
    stats.column_transforms = [np.array(T, dtype=float) for T in transforms]
