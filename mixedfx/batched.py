"""Batched linear algebra on many small matrices at once.

Stacks of small matrices are stored *element-major*: an array of shape ``(q, k, m)``
holds ``m`` matrices of size q x k, and ``A[i, j]`` is a contiguous vector over the
``m`` matrices.  The kernels below loop over the (few) matrix elements in Python and do
every arithmetic operation on whole length-``m`` vectors, so one Cholesky factorization
of 10^5 2x2 matrices costs a handful of vector operations instead of 10^5 LAPACK calls.
"""

from __future__ import annotations

import numpy as np


def cholesky(A: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors ``L`` with ``L L' = A`` of a stack ``A`` of shape (q, q, m).

    The matrices must be symmetric positive definite (only the lower triangle is read).
    """
    q = A.shape[0]
    L = np.zeros_like(A)
    for j in range(q):
        diag = A[j, j] - np.einsum("km,km->m", L[j, :j], L[j, :j]) if j else A[j, j].copy()
        L[j, j] = np.sqrt(diag)
        for i in range(j + 1, q):
            off = A[i, j] - np.einsum("km,km->m", L[i, :j], L[j, :j]) if j else A[i, j]
            L[i, j] = off / L[j, j]
    return L


def solve_lower(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve ``L X = B`` for lower-triangular stacks ``L`` (q, q, m) and ``B`` (q, k, m) or (q, m)."""
    q = L.shape[0]
    X = np.empty_like(B)
    for i in range(q):
        acc = B[i].copy()
        for j in range(i):
            acc -= L[i, j] * X[j]
        X[i] = acc / L[i, i]
    return X


def solve_lower_inplace(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve ``L X = B`` like :func:`solve_lower`, overwriting and returning ``B`` (no copy of B)."""
    q = L.shape[0]
    for i in range(q):
        for j in range(i):
            B[i] -= L[i, j] * B[j]
        B[i] /= L[i, i]
    return B


def solve_upper_from_lower(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve ``L' X = B`` for lower-triangular stacks ``L`` (q, q, m) and ``B`` (q, k, m) or (q, m)."""
    q = L.shape[0]
    X = np.empty_like(B)
    for i in reversed(range(q)):
        acc = B[i].copy()
        for j in range(i + 1, q):
            acc -= L[j, i] * X[j]
        X[i] = acc / L[i, i]
    return X


def congruence(lam: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``Lambda' S_j Lambda`` for every matrix ``S_j`` of a stack S (q, q, m)."""
    return np.einsum("ai,abm,bj->ijm", lam, S, lam, optimize=True)


def left_multiply_transpose(lam: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``Lambda' B_j`` for a stack B of shape (q, k, m) or (q, m)."""
    return np.tensordot(lam.T, B, axes=(1, 0))


def inverse_from_cholesky(L: np.ndarray) -> np.ndarray:
    """``(L L')^{-1}`` for each lower factor of a stack ``L`` (q, q, m)."""
    q, _, m = L.shape
    eye = np.broadcast_to(np.eye(q)[:, :, None], (q, q, m))
    Linv = solve_lower(L, np.ascontiguousarray(eye))
    return np.einsum("kim,kjm->ijm", Linv, Linv)
