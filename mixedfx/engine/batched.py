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


def kron_apply(left: np.ndarray, right: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``left S_j right`` for every matrix of a stack S (q, q, m), as one matrix product.

    With ``S`` flattened to (q*q, m) (row-major pairs), ``vec(left S right)`` is
    ``kron(left, right') vec(S)``: a (q^2 x q^2) times (q^2 x m) product, far faster for
    small q than an einsum over the stack.
    """
    q, r, m = S.shape
    flat = np.ascontiguousarray(S).reshape(q * r, m)
    return (np.kron(left, right.T) @ flat).reshape(left.shape[0], right.shape[1], m)


def congruence(lam: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``Lambda' S_j Lambda`` for every matrix ``S_j`` of a stack S (q, q, m)."""
    return kron_apply(lam.T, lam, S)


def left_multiply_transpose(lam: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``Lambda' B_j`` for a stack B of shape (q, k, m) or (q, m)."""
    return np.tensordot(lam.T, B, axes=(1, 0))


def lower_inverse(L: np.ndarray) -> np.ndarray:
    """``L_j^{-1}`` for each lower-triangular factor of a stack ``L`` (q, q, m) (lower triangular too)."""
    q = L.shape[0]
    inv = np.zeros_like(L)
    for i in range(q):
        inv[i, i] = 1.0 / L[i, i]
        for j in range(i):
            acc = L[i, j] * inv[j, j]
            for k in range(j + 1, i):
                acc += L[i, k] * inv[k, j]
            inv[i, j] = -acc * inv[i, i]
    return inv


def inverse_from_cholesky(L: np.ndarray) -> np.ndarray:
    """``(L L')^{-1} = L^{-T} L^{-1}`` for each lower factor of a stack ``L`` (q, q, m)."""
    q = L.shape[0]
    Linv = lower_inverse(L)
    P = np.empty_like(L)
    for a in range(q):
        for b in range(a + 1):
            acc = Linv[a, a] * Linv[a, b]  # sum over k >= a of Linv[k, a] Linv[k, b]
            for k in range(a + 1, q):
                acc = acc + Linv[k, a] * Linv[k, b]
            P[a, b] = acc
            if b != a:
                P[b, a] = acc
    return P


def sum_of_products(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``sum_j A_j B_j`` over a pair of stacks (q, r, m) and (r, s, m): q*r*s dot products, no temporaries."""
    q, r, _ = A.shape
    s = B.shape[1]
    out = np.empty((q, s))
    for i in range(q):
        for j in range(s):
            out[i, j] = sum(float(np.dot(A[i, k], B[k, j])) for k in range(r))
    return out
