"""The pseudo-likelihood evaluator against a dense computation, cluster by cluster.

For two levels the Gaussian integral of ``prod_i f(y_i | u_j)^{a_i}`` over ``u_j`` is, with
``Vt_j = A_j^{-1} + Z_j Lambda Lambda' Z_j'`` (Woodbury),

    -2 l_j = log|Vt_j| + sum_i log a_i + N_j log(2 pi sigma^2) + r_j' Vt_j^{-1} r_j / sigma^2,

and ``-2 log PL = sum_j w_j (-2 l_j)``; the fixed-effects sandwich has bread
``sum_j w_j X_j' Vt_j^{-1} X_j`` and scores ``w_j X_j' Vt_j^{-1} r_j``.  These are computed here
with explicit matrices on small seeded data and compared with the engine's recursive evaluator.
"""

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar

from mixedfx.data.design import build_design
from mixedfx.engine.pseudo import NestedWeights, PseudoLikelihoodDeviance, cluster_crossproducts
from mixedfx.engine.stats import compute_stats
from mixedfx.spec.formula import parse_formula


def _two_level(seed: int = 3, groups: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 9, groups)
    g = np.repeat(np.arange(groups), sizes)
    x = rng.normal(size=g.size)
    u0, u1 = rng.normal(size=groups), 0.5 * rng.normal(size=groups)
    y = 1 + 0.5 * x + u0[g] + u1[g] * x + rng.normal(size=g.size)
    return pd.DataFrame(
        {"y": y, "x": x, "g": g.astype(str), "a": rng.uniform(0.5, 3, g.size), "w": rng.uniform(1, 4, groups)[g]}
    )


def _evaluator(data: pd.DataFrame, formula: str):
    design = build_design(parse_formula(formula), data)
    block = design.blocks[0]
    wj = np.zeros(block.n_levels)
    wj[block.codes] = data["w"].to_numpy()
    weights = NestedWeights(data["a"].to_numpy(), [wj], [0], [], [block.codes])
    stats = compute_stats([block.codes], [block.Z], [block.n_levels], design.X, design.y, None)
    return design, PseudoLikelihoodDeviance(stats, [block.layout], design.X, design.y, [block.Z], weights), wj


def _dense(design, deviance, wj, theta, a):
    """(-2 log PL profiled over beta and sigma^2, beta, sandwich covariance of beta) by explicit matrices."""
    block = design.blocks[0]
    lam = deviance.lambdas(theta)[0]
    X, y = design.X, design.y
    parts = []
    for j in range(block.n_levels):
        rows = np.flatnonzero(block.codes == j)
        ZL = block.Z[rows] @ lam
        Vt = np.diag(1 / a[rows]) + ZL @ ZL.T
        parts.append((rows, Vt))
    XVX = sum(wj[j] * X[r].T @ np.linalg.solve(V, X[r]) for j, (r, V) in enumerate(parts))
    XVy = sum(wj[j] * X[r].T @ np.linalg.solve(V, y[r]) for j, (r, V) in enumerate(parts))
    beta = np.linalg.solve(XVX, XVy)
    quad = sum(wj[j] * (y[r] - X[r] @ beta) @ np.linalg.solve(V, y[r] - X[r] @ beta) for j, (r, V) in enumerate(parts))
    count = sum(wj[j] * a[r].sum() for j, (r, _) in enumerate(parts))
    sigma2 = quad / count
    logdets = sum(wj[j] * (np.linalg.slogdet(V)[1] + np.log(a[r]).sum()) for j, (r, V) in enumerate(parts))
    dev = logdets + count * np.log(2 * np.pi * sigma2) + quad / sigma2
    scores = np.array([wj[j] * X[r].T @ np.linalg.solve(V, y[r] - X[r] @ beta) for j, (r, V) in enumerate(parts)])
    bread = np.linalg.inv(XVX)
    m = len(parts)
    return dev, beta, m / (m - 1) * bread @ scores.T @ scores @ bread


@pytest.mark.parametrize("formula", ["y ~ x + (1 | g)", "y ~ x + (1 + x | g)"])
def test_deviance_beta_and_sandwich_equal_the_dense_computation(formula):
    data = _two_level()
    design, deviance, wj = _evaluator(data, formula)
    a = data["a"].to_numpy()
    for theta in ([0.7], [1.3]) if deviance.n_theta == 1 else ([0.8, 0.2, 0.4], [1.1, -0.3, 0.6]):
        theta = np.array(theta)
        dev, beta, sandwich = _dense(design, deviance, wj, theta, a)
        sol = deviance.solve(theta)
        # the engine divides the top level's weights by their mean: its deviance times that is the data's
        assert deviance.likelihood_scale == pytest.approx(wj.mean())
        assert deviance.likelihood_scale * sol.deviance == pytest.approx(dev, rel=1e-10)
        np.testing.assert_allclose(sol.beta, beta, rtol=1e-9)
        np.testing.assert_allclose(deviance.robust_beta_covariance(theta), sandwich, rtol=1e-8)


def test_cluster_terms_sum_to_the_log_pseudo_likelihood():
    data = _two_level(seed=5)
    _, deviance, _ = _evaluator(data, "y ~ x + (1 | g)")
    theta = np.array([0.9])
    sol = deviance.solve(theta)
    terms = deviance.cluster_loglik(theta, sol.beta, sol.sigma2)
    assert terms.size == deviance.n_top_clusters == 12
    assert -2 * terms.sum() == pytest.approx(sol.deviance, rel=1e-12)
    assert deviance.n_likelihood == pytest.approx(sol.count)
    # the profiled sigma^2 maximises the sum: a step either way lowers it
    lower = deviance.cluster_loglik(theta, sol.beta, 1.01 * sol.sigma2).sum()
    assert lower < terms.sum() and deviance.cluster_loglik(theta, sol.beta, 0.99 * sol.sigma2).sum() < terms.sum()


def test_deviance_at_a_given_sigma_is_minimised_at_the_profiled_one():
    data = _two_level(seed=8)
    _, deviance, _ = _evaluator(data, "y ~ x + (1 | g)")
    theta = np.array([0.6])
    sol = deviance.solve(theta)
    best = minimize_scalar(lambda s2: deviance.deviance_at(theta, s2), bounds=(0.1, 10), method="bounded")
    assert best.x == pytest.approx(sol.sigma2, rel=1e-4)
    assert deviance.deviance_at(theta, sol.sigma2) == pytest.approx(sol.deviance, rel=1e-12)


def test_cluster_crossproducts_equal_the_weighted_sums():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(30, 4))
    weights = rng.uniform(0.1, 2, 30)
    codes = rng.integers(0, 5, 30)
    got = cluster_crossproducts(W, weights, codes, 6)
    for c in range(6):
        rows = codes == c
        np.testing.assert_allclose(got[c], (W[rows] * weights[rows, None]).T @ W[rows], atol=1e-12)
    assert np.all(got[5] == 0)  # a level without rows contributes nothing
