"""Several grouping factors (crossed or nested): the first factor's levels are eliminated in
batch, the remaining factors' random effects form a Schur complement.

For the first factor ``L1`` is block diagonal (one q1 x q1 block per level); the outer factors'
block is ``A2 = Lambda2' Z2'Z2 Lambda2 + I - L21 L21'`` with ``L21 = Lambda2' Z2'Z1 Lambda1 L1^{-T}``.
When one outer factor nests the first, ``A2`` is block diagonal and factorised in batch;
otherwise (crossed factors) it is factorised densely, as MixedModels.jl does.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp

from . import batched
from .blas import dense_factorisation_threads
from .deviance import ProfiledDeviance, Solution


def _lower_cholesky_in_place(S: np.ndarray) -> np.ndarray:
    """The lower Cholesky factor of ``S`` (C-ordered; its lower triangle is read), in S's memory.

    LAPACK works on Fortran-ordered arrays: a C-ordered S would be copied (m^2 doubles, 0.8 GB at
    m = 10^4).  ``S.T`` is the same memory in Fortran order, and its upper triangle is S's lower
    one, so factorising it as ``U'U`` in place gives ``L = U'`` without the copy.
    """
    with dense_factorisation_threads(S.shape[0]):
        if not S.flags.c_contiguous:
            return la.cholesky(S, lower=True, overwrite_a=True, check_finite=False)
        U = la.cholesky(S.T, lower=False, overwrite_a=True, check_finite=False)
    return U.T


class DenseBlockTooLargeError(MemoryError):
    """The crossed factors' dense Schur complement would not fit in this machine's memory."""

    def __init__(self, size: int, needed: float, available: float):
        super().__init__(f"a dense {size} x {size} block needs {needed / 1e9:.1f} GB of {available / 1e9:.1f} GB")
        self.size, self.needed, self.available = size, needed, available


def physical_memory() -> float | None:
    """This machine's memory in bytes (None where the system does not say)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


#: The dense block and the work beside it must fit in this share of the machine's memory.
DENSE_MEMORY_SHARE = 0.8


def check_dense_block_fits(size: int) -> None:
    """Raise :class:`DenseBlockTooLargeError` when an m x m block (8 m^2 bytes, factorised in place) and
    about half as much again beside it exceed :data:`DENSE_MEMORY_SHARE` of the memory."""
    available = physical_memory()
    needed = 1.5 * 8.0 * size * size
    if available is not None and needed > DENSE_MEMORY_SHARE * available:
        raise DenseBlockTooLargeError(size, needed, available)


#: Dense Schur complements from this size on make an evaluation costly (0.05 s at 1,000 rows,
#: 4 s at 10,000 on two cores): the optimiser then starts with Newton steps.
COSTLY_SCHUR_SIZE = 1000


class BlockedDeviance(ProfiledDeviance):
    """The profiled deviance of a model with crossed or nested grouping factors (module docstring)."""

    def __init__(self, stats, layouts, reml, column_transforms=None):
        super().__init__(stats, layouts, reml, column_transforms)
        s = self.stats
        q1 = s.first_q
        self._nested = self._detect_nesting()
        if not self._nested:
            check_dense_block_fits(s.rest_ZtZ.shape[0])
        # With scalar random effects everywhere, L21 is Z2'Z1 with scaled rows and columns.
        self._all_scalar = q1 == 1 and all(q == 1 for q, _ in s.rest_sizes)
        if self._all_scalar:
            self._Z21_rows = np.repeat(np.arange(s.rest_Z1.shape[0]), np.diff(s.rest_Z1.indptr))
            if not self._nested:
                self._prepare_fill_pairs()
                lower = sp.tril(s.rest_ZtZ).tocoo()  # the dense block's lower triangle is all it needs
                self._rest_rows, self._rest_cols, self._rest_values = lower.row, lower.col, lower.data
                self._rest_flat = lower.row.astype(np.int64) * lower.shape[0] + lower.col

    @property
    def costly_evaluations(self) -> bool:
        """Crossed factors whose dense Schur complement has 1,000 or more rows (m^3 / 3 flops each)."""
        return not self._nested and self.stats.rest_ZtZ.shape[0] >= COSTLY_SCHUR_SIZE

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
        # Sorting the pairs' positions, not a table over all R^2 (two R^2 integer arrays were 1.6 GB
        # beside the 0.8 GB block at R = 10^4).
        self._pair_flat, pair = np.unique(flat, return_inverse=True)
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
        ZtZ = s.rest_ZtZ.tocoo()
        level = ZtZ.row // q2
        if np.any(level != ZtZ.col // q2):
            return False  # outer levels meet one another: not one factor's blocks
        blocks = np.zeros((q2, q2, m2))
        blocks[ZtZ.row % q2, ZtZ.col % q2, level] = ZtZ.data  # no duplicates in a CSR's triplets
        self._outer_ZtZ = blocks
        self._outer_index = (np.arange(m2) * q2)[:, None] + np.arange(q2)[None, :]
        return True

    def _rest_lambda(self, lams: list[np.ndarray]) -> sp.csr_matrix:
        """Sparse block-diagonal Lambda of the factors after the first (level-major)."""
        parts = [
            sp.kron(sp.identity(m, format="csr"), sp.csr_matrix(lam))
            for lam, (_, m) in zip(lams[1:], self.stats.rest_sizes)
        ]
        return sp.block_diag(parts, format="csr")

    def _eliminate_outer(
        self, lams: list[np.ndarray], sol: Solution, M: np.ndarray, rhs: np.ndarray, r2: float, dense: bool = True
    ) -> tuple[float, np.ndarray, np.ndarray, float]:
        """Eliminate the first factor from the outer factors' block and factorise that (batched when nested)."""
        s = self.stats
        q1, m1 = s.first_q, s.n_first_levels
        L21 = self._lower_left_block(lams, sol)
        if self._nested:
            lam2 = self._rest_lambda(lams)
            return self._solve_nested_rest(lams[1], lam2, L21, sol, M, rhs, r2, dense)
        if self._all_scalar:  # only the lower triangle is formed: the Cholesky reads no more
            row_scale = self._scalar_rest_scale(lams)
            S = np.zeros(s.rest_ZtZ.shape)
            rows, cols = self._rest_rows, self._rest_cols
            S.reshape(-1)[self._rest_flat] = self._rest_values * row_scale[rows] * row_scale[cols]
            col_scale = lams[0][0, 0] / sol.L1[0, 0]
            fill = self._pair_matrix @ (col_scale * col_scale)
            S.reshape(-1)[self._pair_flat] -= fill * row_scale[self._pair_rows] * row_scale[self._pair_cols]
        else:  # Lambda2 is block diagonal: apply it block by block from both sides
            lam2 = self._rest_lambda(lams)
            S = (lam2.T @ s.rest_ZtZ @ lam2).toarray()
            S -= (L21 @ L21.T).toarray()
        S[np.diag_indices_from(S)] += 1.0
        L2 = _lower_cholesky_in_place(S)
        flat_c1X = sol.c1X[0].T if q1 == 1 else sol.c1X.transpose(2, 0, 1).reshape(m1 * q1, -1)
        flat_c1y = sol.c1y[0] if q1 == 1 else sol.c1y.T.reshape(-1)
        c2X = la.solve_triangular(L2, self._rest_lambda_T(lams, s.rest_ZtX) - L21 @ flat_c1X, lower=True)
        c2y = la.solve_triangular(L2, self._rest_lambda_T(lams, s.rest_Zty) - L21 @ flat_c1y, lower=True)
        sol.L21, sol.L2, sol.c2X, sol.c2y = L21, L2, c2X, c2y
        logdet = 2.0 * float(np.log(np.diag(L2)).sum())
        return logdet, M - c2X.T @ c2X, rhs - c2X.T @ c2y, r2 - float(c2y @ c2y)

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
        Z21 = self.stats.rest_Z1
        if self._all_scalar:  # diagonal Lambdas and L1: scale the rows and columns of Z2'Z1
            col_scale = lams[0][0, 0] / sol.L1[0, 0]
            row_scale = self._scalar_rest_scale(lams)
            data = Z21.data * row_scale[self._Z21_rows] * col_scale[Z21.indices]
            return sp.csr_matrix((data, Z21.indices, Z21.indptr), shape=Z21.shape)
        # Right factor per level: Lambda1 L1_j^{-T}.
        L1inv = batched.lower_inverse(sol.L1)
        right = np.einsum("ab,cbm->acm", lams[0], L1inv)  # [a, c] = sum_b lam[a,b] Linv[c,b]
        return (self._rest_lambda(lams).T @ Z21 @ self.first_block_diagonal(right)).tocsr()
