"""The moment engine against dense matrices, the balanced-design ANOVA estimators and simulation."""

import numpy as np
import pytest

from mixedfx.engine.moments import CellSums, CrossedDesign, ResponseSums


def _design(seed: int, nested: bool = False, n: int = 240):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 16, n)
    b = a * 3 + rng.integers(0, 3, n) if nested else rng.integers(0, 11, n)
    b = np.unique(b, return_inverse=True)[1]
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    return rng, X, [a, b], [int(a.max()) + 1, int(b.max()) + 1]


def _dense(X, codes, levels):
    n = X.shape[0]
    R = np.eye(n) - X @ np.linalg.solve(X.T @ X, X.T)
    Z = [np.eye(m)[c] for c, m in zip(codes, levels)] + [np.eye(n)]
    A = [np.diag((Zk @ Zk.T).sum(axis=1)) - Zk @ Zk.T for Zk in Z[:-1]] + [n * np.eye(n) - np.ones((n, n))]
    C = np.array([[np.trace(Ak @ R @ Zl @ Zl.T @ R) for Zl in Z] for Ak in A])
    return R, Z, A, C


@pytest.mark.parametrize("nested", [False, True])
def test_moment_system_equals_dense_traces(nested):
    rng, X, codes, levels = _design(3, nested)
    design = CrossedDesign(X, codes, levels)
    R, Z, A, C = _dense(X, codes, levels)
    np.testing.assert_allclose(design.C, C, rtol=1e-10, atol=1e-8 * np.abs(C).max())
    y = X @ [1.0, 0.5, -0.3] + rng.normal(size=levels[0])[codes[0]] + rng.normal(size=levels[1])[codes[1]]
    y += rng.normal(size=y.size)
    r = R @ y
    np.testing.assert_allclose(design.moments(y), [r @ Ak @ r for Ak in A], rtol=1e-10)


def test_gls_equals_the_dense_computation():
    rng, X, codes, levels = _design(5)
    design = CrossedDesign(X, codes, levels)
    y = X @ [1.0, 0.5, -0.3] + 0.8 * rng.normal(size=levels[0])[codes[0]] + rng.normal(size=X.shape[0])
    sigma2 = np.array([0.7, 0.2, 1.1])
    beta, cov, iterations = design.gls(y, sigma2)
    _, Z, _, _ = _dense(X, codes, levels)
    V = sigma2[0] * Z[0] @ Z[0].T + sigma2[1] * Z[1] @ Z[1].T + sigma2[2] * np.eye(X.shape[0])
    ViX = np.linalg.solve(V, X)
    dense_cov = np.linalg.inv(X.T @ ViX)
    np.testing.assert_allclose(beta, dense_cov @ ViX.T @ y, rtol=1e-8)
    np.testing.assert_allclose(cov, dense_cov, rtol=1e-8)
    assert 0 < iterations < 100
    # a zero component drops out of V
    beta0, cov0, _ = design.gls(y, np.array([0.7, 0.0, 1.1]))
    V0 = sigma2[0] * Z[0] @ Z[0].T + 1.1 * np.eye(X.shape[0])
    np.testing.assert_allclose(cov0, np.linalg.inv(X.T @ np.linalg.solve(V0, X)), rtol=1e-8)


def test_balanced_crossed_design_gives_the_anova_estimators():
    rng = np.random.default_rng(8)
    rows, cols = 12, 9
    a, b = np.repeat(np.arange(rows), cols), np.tile(np.arange(cols), rows)
    y = 5 + 1.3 * rng.normal(size=rows)[a] + 0.6 * rng.normal(size=cols)[b] + rng.normal(size=a.size)
    design = CrossedDesign(np.ones((a.size, 1)), [a, b], [rows, cols])
    sigma2, truncated = design.components(design.moments(y))
    table = y.reshape(rows, cols)
    grand, row_means, col_means = table.mean(), table.mean(axis=1), table.mean(axis=0)
    ms_a = cols * np.sum((row_means - grand) ** 2) / (rows - 1)
    ms_b = rows * np.sum((col_means - grand) ** 2) / (cols - 1)
    resid = table - row_means[:, None] - col_means[None, :] + grand
    ms_e = np.sum(resid**2) / ((rows - 1) * (cols - 1))
    np.testing.assert_allclose(sigma2, [(ms_a - ms_e) / cols, (ms_b - ms_e) / rows, ms_e], rtol=1e-10)
    assert not truncated.any()


def test_the_estimator_is_unbiased_with_covariates():
    rng, X, codes, levels = _design(11, n=300)
    design = CrossedDesign(X, codes, levels)
    truth = np.array([1.5, 0.4, 1.0])
    draws = []
    for _ in range(600):
        y = X @ [1.0, 2.0, -1.0] + np.sqrt(truth[2]) * rng.normal(size=X.shape[0])
        for k in range(2):
            y += np.sqrt(truth[k]) * rng.normal(size=levels[k])[codes[k]]
        draws.append(np.linalg.solve(design.C, design.moments(y)))  # untruncated: unbiased
    draws = np.array(draws)
    error = (draws.mean(axis=0) - truth) / (draws.std(axis=0) / np.sqrt(len(draws)))
    assert np.all(np.abs(error) < 4), error


def test_negative_estimates_are_truncated_and_the_rest_refitted():
    rng = np.random.default_rng(2)
    n = 400
    a, b = rng.integers(0, 30, n), rng.integers(0, 20, n)
    design = CrossedDesign(np.ones((n, 1)), [a, b], [30, 20])
    for seed in range(20):  # no b effect: its estimate is negative for some seeds
        y = np.random.default_rng(seed).normal(size=30)[a] + np.random.default_rng(seed + 99).normal(size=n)
        raw = np.linalg.solve(design.C, design.moments(y))
        if raw[1] < 0:
            sigma2, truncated = design.components(design.moments(y))
            assert truncated[1] and sigma2[1] == 0 and sigma2[0] > 0 and sigma2[2] > 0
            return
    pytest.fail("no seed gave a negative estimate")


def test_bootstrap_is_seeded():
    rng, X, codes, levels = _design(4)
    design = CrossedDesign(X, codes, levels)
    one = design.bootstrap_components(np.array([1.0, 0.5, 1.0]), 5, seed=3)
    two = design.bootstrap_components(np.array([1.0, 0.5, 1.0]), 5, seed=3)
    np.testing.assert_array_equal(one, two)
    assert one.shape == (5, 3) and np.all(one[:, 2] > 0)


def test_chunked_products_equal_one_pass(monkeypatch):
    import mixedfx.engine.moments as moments

    _, X, codes, levels = _design(6, nested=False)
    whole = CrossedDesign(X, codes, levels).C
    monkeypatch.setattr(moments, "CHUNK_ROWS", 17)
    np.testing.assert_allclose(CrossedDesign(X, codes, levels).C, whole, rtol=1e-12)


def _as_cells(X, codes, levels, y):
    """The rows grouped into cells (units sharing every level): the cell design and its response sums."""
    key = np.ravel_multi_index(codes, levels)
    unique, inverse = np.unique(key, return_inverse=True)
    p, m = X.shape[1], unique.size
    n = np.bincount(inverse, minlength=m).astype(float)
    sx = np.column_stack([np.bincount(inverse, X[:, j], m) for j in range(p)])
    i, j = np.triu_indices(p)
    xx = np.column_stack([np.bincount(inverse, X[:, a] * X[:, b], m) for a, b in zip(i, j)])
    sy, syy = np.bincount(inverse, y, m), np.bincount(inverse, y * y, m)
    sxy = np.column_stack([np.bincount(inverse, X[:, j] * y, m) for j in range(p)])
    cell_codes = list(np.unravel_index(unique, levels))
    multi = np.flatnonzero(n > 1)
    cells = CellSums(multi, n[multi], xx[multi])
    return CrossedDesign(sx, cell_codes, levels, cells), ResponseSums(sy, syy[multi], sxy[multi])


@pytest.mark.parametrize("nested", [False, True])
def test_cells_give_the_rows_moments_and_gls(nested):
    rng, X, codes, levels = _design(7, nested, n=60 if nested else 250)  # some cells of one row
    y = X @ [1.0, 0.5, -0.3] + rng.normal(size=levels[0])[codes[0]] + rng.normal(size=levels[1])[codes[1]]
    y += rng.normal(size=y.size)
    rows = CrossedDesign(X, codes, levels)
    cells, sums = _as_cells(X, codes, levels, y)
    assert cells.n_units < rows.n_units and cells.multi is not None and (cells.unit_n == 1).any()
    assert cells.n == rows.n
    np.testing.assert_allclose(cells.C, rows.C, rtol=1e-10)
    np.testing.assert_allclose(cells.moments(sums), rows.moments(y), rtol=1e-10)
    sigma2 = np.array([0.9, 0.4, 1.1])
    for one, two in zip(cells.gls(sums, sigma2)[:2], rows.gls(y, sigma2)[:2]):
        np.testing.assert_allclose(one, two, rtol=1e-9)
    with pytest.raises(ValueError, match="ResponseSums"):
        cells.moments(y)
    single = CellSums(np.array([0]), np.array([1.0]), np.zeros((1, 6)))
    with pytest.raises(ValueError, match="several rows only"):
        CrossedDesign(X, codes, levels, single)


def test_cell_bootstrap_draws_the_rows_distribution():
    """Cells' error sums drawn from their Gram factors: the moments' mean is C s (exact) and their
    spread that of the row-by-row bootstrap."""
    rng, X, codes, levels = _design(9, n=900)
    X = X[:, :2]
    rows = CrossedDesign(X, codes, levels)
    cells, _ = _as_cells(X, codes, levels, np.zeros(X.shape[0]))
    sigma2 = np.array([0.8, 0.5, 1.2])
    draws = {}
    for name, design in (("rows", rows), ("cells", cells)):
        gen = np.random.default_rng(5)
        draws[name] = np.array([design.moments(design.simulate_response(sigma2, gen)) for _ in range(3000)])
    expected = rows.C @ sigma2
    for name, U in draws.items():
        error = (U.mean(axis=0) - expected) / (U.std(axis=0) / np.sqrt(len(U)))
        assert np.all(np.abs(error) < 4), (name, error)
    np.testing.assert_allclose(draws["cells"].std(axis=0), draws["rows"].std(axis=0), rtol=0.08)
