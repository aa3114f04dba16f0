"""Batched small-matrix kernels against numpy's per-matrix routines."""

import numpy as np

from mixedfx.engine import batched


def _random_spd(q, m, seed=0):
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(m, q, q))
    A = B @ B.transpose(0, 2, 1) + q * np.eye(q)
    return A, np.ascontiguousarray(A.transpose(1, 2, 0))


def test_cholesky_matches_numpy():
    A, A_em = _random_spd(4, 50)
    L = batched.cholesky(A_em)
    np.testing.assert_allclose(L.transpose(2, 0, 1), np.linalg.cholesky(A), rtol=1e-12, atol=1e-12)


def test_triangular_solves():
    A, A_em = _random_spd(3, 20, seed=1)
    L = batched.cholesky(A_em)
    B = np.random.default_rng(2).normal(size=(3, 5, 20))
    X = batched.solve_lower(L, B)
    Lm = L.transpose(2, 0, 1)
    np.testing.assert_allclose(Lm @ X.transpose(2, 0, 1), B.transpose(2, 0, 1), atol=1e-12)
    Y = batched.solve_upper_from_lower(L, B)
    np.testing.assert_allclose(Lm.transpose(0, 2, 1) @ Y.transpose(2, 0, 1), B.transpose(2, 0, 1), atol=1e-12)
    v = B[:, 0, :]
    np.testing.assert_allclose(batched.solve_lower(L, v), X[:, 0, :], atol=1e-12)


def test_inverse_and_congruence():
    A, A_em = _random_spd(3, 10, seed=3)
    inv = batched.inverse_from_cholesky(batched.cholesky(A_em))
    np.testing.assert_allclose(inv.transpose(2, 0, 1), np.linalg.inv(A), atol=1e-12)
    lam = np.tril(np.random.default_rng(4).normal(size=(3, 3)))
    C = batched.congruence(lam, A_em)
    np.testing.assert_allclose(C.transpose(2, 0, 1), lam.T @ A @ lam, atol=1e-10)
