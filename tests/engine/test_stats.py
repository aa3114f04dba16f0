"""Sufficient statistics: the sparse-indicator reduction, standardisation and in-place transforms."""

import numpy as np
import pytest

from mixedfx.engine.stats import (
    compute_stats,
    per_level_crossproducts,
    set_column_transforms,
    stacked_xy,
    standardise,
)


def _rows(n=200, m=17, q=2, p=3, seed=0, shuffle=False):
    rng = np.random.default_rng(seed)
    codes = np.sort(rng.integers(0, m, n))
    codes[:m] = np.arange(m)  # every level present
    codes.sort()
    if shuffle:
        codes = rng.permutation(codes)
    Z = np.column_stack([np.ones(n)] + [rng.normal(size=n) for _ in range(q - 1)])
    X = np.column_stack([np.ones(n)] + [rng.normal(size=n) for _ in range(p - 1)])
    return codes, m, np.asfortranarray(Z), X, rng.normal(size=n)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("chunk_rows", [16, 65_536])
def test_crossproducts_equal_explicit_sums(shuffle, chunk_rows, monkeypatch):
    """Chunked reduction (several chunks, a level larger than a chunk) equals per-level sums."""
    import mixedfx.engine.stats as stats_module

    monkeypatch.setattr(stats_module, "CHUNK_ROWS", chunk_rows)
    codes, m, Z, X, y = _rows(shuffle=shuffle)
    codes = np.where(codes == 3, 4, codes)  # level 3 empty, level 4 larger than a 16-row chunk
    ZtZ, ZtW, WtW = per_level_crossproducts(codes, m, Z, X, y)
    W = np.column_stack([X, y])
    np.testing.assert_allclose(WtW, W.T @ W, rtol=1e-12)
    for j in (0, 3, 4, 5, m - 1):
        rows = codes == j
        np.testing.assert_allclose(ZtZ[:, :, j], Z[rows].T @ Z[rows], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ZtW[:, :, j], Z[rows].T @ W[rows], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shuffle", [False, True])
def test_crossproducts_standardise_transform_and_weight_on_the_way(shuffle, monkeypatch):
    """The chunks' standardisation, Z T and sqrt(w) give the statistics of the transformed rows."""
    import mixedfx.engine.stats as stats_module

    monkeypatch.setattr(stats_module, "CHUNK_ROWS", 24)
    codes, m, Z, X, y = _rows(shuffle=shuffle)
    X[:, 1] = X[:, 1] * 1e3 + 2e6
    rng = np.random.default_rng(5)
    T = np.array([[1.0, -0.3], [0.0, 2.0]])
    w = rng.uniform(0.5, 2.0, y.size)
    shift, inv_scale, _ = stats_module.standardisation(X, y)
    ZtZ, ZtW, WtW = per_level_crossproducts(codes, m, Z, X, y, T, shift, inv_scale, np.sqrt(w))
    Xs, ys = stats_module.apply_standardisation(X, y, shift, inv_scale)
    W = np.column_stack([Xs, ys]) * np.sqrt(w)[:, None]
    Zt = (Z @ T) * np.sqrt(w)[:, None]
    np.testing.assert_allclose(WtW, W.T @ W, rtol=1e-10, atol=1e-8)
    for j in range(m):
        rows = codes == j
        np.testing.assert_allclose(ZtZ[:, :, j], Zt[rows].T @ Zt[rows], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(ZtW[:, :, j], Zt[rows].T @ W[rows], rtol=1e-10, atol=1e-10)


def test_standardise_writes_one_buffer_the_reduction_reuses():
    _, _, _, X, y = _rows()
    X[:, 1] = X[:, 1] * 1e3 + 2e6  # calendar-year-like column
    Xs, ys, scaling = standardise(X, y)
    W = stacked_xy(Xs, ys)
    assert Xs.base is W and ys.base is W  # no copy
    np.testing.assert_allclose(Xs, X @ scaling.T, atol=1e-9)
    np.testing.assert_allclose(Xs[:, 1:].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.sqrt((Xs[:, 1:] ** 2).mean(axis=0)), 1.0)
    assert stacked_xy(X, y) is not X  # unrelated arrays are stacked into a new buffer


def test_in_place_transforms_equal_statistics_of_transformed_columns():
    codes, m, Z, X, y = _rows(q=3)
    stats = compute_stats([codes], [Z], [m], X, y, None)
    rng = np.random.default_rng(2)
    T1 = np.triu(rng.normal(size=(3, 3))) + 3 * np.eye(3)
    T2 = np.triu(rng.normal(size=(3, 3))) + 3 * np.eye(3)
    for T in (T1, T2, np.eye(3)):  # from raw to T1, then relative moves
        set_column_transforms(stats, [T])
        direct = compute_stats([codes], [np.asfortranarray(Z @ T)], [m], X, y, None)
        np.testing.assert_allclose(stats.first_ZtZ, direct.first_ZtZ, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(stats.first_ZtX, direct.first_ZtX, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(stats.first_Zty, direct.first_Zty, rtol=1e-10, atol=1e-10)


def test_grouping_order_is_a_stable_sort_by_level():
    from mixedfx.engine.stats import grouping_order

    codes = np.array([2, 0, 1, 0, 2, 2, 1])
    np.testing.assert_array_equal(grouping_order(codes, 3), np.argsort(codes, kind="stable"))
    assert grouping_order(np.array([0, 0, 1, 3]), 4) is None  # already grouped: no permutation


def test_standardisation_from_the_gram_matches_the_column_passes():
    """Moments from X'X agree with the column passes; a column whose mean dwarfs its spread
    (where E[x^2] - mean^2 cancels) is recomputed from centred values, exactly as without X'X."""
    from mixedfx.engine.stats import standardisation

    _, _, _, X, y = _rows(p=4)
    X[:, 2] = X[:, 2] * 1e-3 + 2e3  # mean^2 / variance = 4e12: beyond the gram's reach
    shift, inv, scaling = standardisation(X, y)
    shift_g, inv_g, scaling_g = standardisation(X, y, X.T @ X)
    np.testing.assert_allclose(shift_g, shift, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(inv_g, inv, rtol=1e-9)
    assert shift_g[2] == shift[2] and inv_g[2] == inv[2]  # the recomputed column: identical
    np.testing.assert_allclose(scaling_g.T, scaling.T, rtol=1e-9, atol=1e-12)
    no_intercept = X[:, 1:]
    _, inv_n, _ = standardisation(no_intercept, y)
    _, inv_ng, _ = standardisation(no_intercept, y, no_intercept.T @ no_intercept)
    np.testing.assert_allclose(inv_ng, inv_n, rtol=1e-12)
