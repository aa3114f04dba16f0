"""The profiled deviance against a dense computation of the marginal likelihood.

For random theta the engine's ML and REML deviances at the profiled beta and sigma must
equal ``log|V| + r'V^{-1}r + n log(2 pi)`` (REML: ``n - p`` in place of ``n`` and
``+ log|X'V^{-1}X|``), computed here the textbook way, on small data with nested, crossed and
weighted designs.
"""

import numpy as np
import pandas as pd
import pytest

from mixedfx.data.design import build_design
from mixedfx.fitting.pipeline import deviance_stage
from mixedfx.spec.formula import parse_formula


def _dense_deviance(design, theta, deviance, reml):
    """-2 log-likelihood from V = sigma^2 (Z Lambda Lambda' Z' + W^{-1}) with beta, sigma profiled."""
    n = design.nobs
    lams = deviance.original_lambdas(theta)
    Zs = []
    for block, lam in zip(design.blocks, lams):
        J = np.zeros((n, block.n_levels * block.q))
        for a in range(block.q):
            J[np.arange(n), block.codes * block.q + a] = block.Z[:, a]
        Zs.append(J @ np.kron(np.eye(block.n_levels), lam))
    ZL = np.hstack(Zs)
    w = design.weights if design.weights is not None else np.ones(n)
    Vr = ZL @ ZL.T + np.diag(1 / w)  # V / sigma^2
    X, y = design.X, design.y
    Vi_X = np.linalg.solve(Vr, X)
    beta = np.linalg.solve(X.T @ Vi_X, Vi_X.T @ y)
    r = y - X @ beta
    quad = r @ np.linalg.solve(Vr, r)
    p = X.shape[1]
    dof = n - p if reml else n
    sigma2 = quad / dof
    dev = np.linalg.slogdet(Vr)[1] + dof * np.log(sigma2) + quad / sigma2 + dof * np.log(2 * np.pi)
    if reml:
        dev += np.linalg.slogdet(X.T @ Vi_X)[1]
    return dev


def _data(seed=0):
    rng = np.random.default_rng(seed)
    n = 90
    d = pd.DataFrame(
        {
            "a": rng.integers(0, 6, n),
            "b": rng.integers(0, 3, n),
            "c": rng.integers(0, 4, n),
            "x": rng.normal(size=n),
            "t": 2000 + rng.integers(0, 20, n),
        }
    )
    d["y"] = 3 + d.x + rng.normal(size=6)[d.a] + rng.normal(size=4)[d.c] + rng.normal(size=n)
    d["w"] = rng.uniform(0.5, 2.0, n)
    d["klass"] = d["b"] * 10 + d["a"]  # nested in b
    return d


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize(
    "formula, weights",
    [
        ("y ~ x + (1 + x | a)", None),
        ("y ~ x + t + (1 | a) + (0 + x | a)", None),
        ("y ~ x + (1 | a) + (1 + x | c)", None),
        ("y ~ x + (1 | a) + (1 | c)", None),  # scalar crossed factors: the precomputed fill pattern
        ("y ~ x + (1 | a) + (1 | c) + (1 | b)", "w"),  # two factors beyond the first
        ("y ~ x + (1 | a/b)", None),
        ("y ~ x + (1 + x | b) + (1 | klass)", None),  # outer factor with a random slope nesting klass
        ("y ~ x + (x || a) + (1 | c)", "w"),
    ],
)
def test_deviance_equals_dense_marginal_likelihood(formula, weights, reml):
    data = _data()
    data["w"] /= np.exp(np.log(data["w"]).mean())  # the engine's weights (theta is relative to their sigma)
    design = build_design(parse_formula(formula), data, weights=weights)
    deviance, scaling = deviance_stage(design, reml)
    rng = np.random.default_rng(1)
    from mixedfx.fitting.pipeline import parameter_bounds

    _, lower, _ = parameter_bounds(deviance)
    for _ in range(3):
        theta = rng.uniform(0.1, 1.5, size=lower.size) * np.where(np.isfinite(lower), 1.0, rng.choice([-1, 1]))
        sol = deviance.solve(theta)
        n, p = design.nobs, design.X.shape[1]
        ours = sol.deviance + (n - p if reml else n) * 2 * np.log(scaling.y_scale)
        if reml:
            ours -= 2 * scaling.log_det_T
        expected = _dense_deviance(design, theta, deviance, reml)
        assert ours == pytest.approx(expected, rel=1e-9, abs=1e-8)
        beta = scaling.beta(sol.beta)
        assert np.all(np.isfinite(beta))


def test_chunked_single_factor_evaluation_equals_one_pass(monkeypatch):
    """Processing clusters in chunks (bounded memory) gives the same deviance and gradient."""
    import mixedfx.engine.single as lik

    data = _data(3)
    for reml in (True, False):
        design = build_design(parse_formula("y ~ x + t + (1 + x | a)"), data)
        deviance, _ = deviance_stage(design, reml)
        theta = np.array([0.7, -0.2, 0.4])
        whole = deviance.deviance_and_gradient(theta)
        monkeypatch.setattr(lik, "CHUNK_CLUSTERS", 4)  # 6 clusters -> chunks of 4 and 2
        chunked = deviance.deviance_and_gradient(theta)  # factors kept for the gradient pass
        monkeypatch.setattr(lik, "KEEP_FACTORS_BYTES", 0)
        recomputed = deviance.deviance_and_gradient(theta)  # factors recomputed chunk by chunk
        monkeypatch.setattr(lik, "CHUNK_CLUSTERS", 500_000)
        monkeypatch.setattr(lik, "KEEP_FACTORS_BYTES", 32 * 2**20)
        for result in (chunked, recomputed):
            assert result[0] == pytest.approx(whole[0], rel=1e-13)
            np.testing.assert_allclose(result[1], whole[1], rtol=1e-10)
        np.testing.assert_array_equal(recomputed[1], chunked[1])


def test_light_solution_reuses_the_last_pass_at_the_same_theta(monkeypatch):
    """The results' pass at the optimum reuses the optimiser's last evaluation there, and only there."""
    data = _data(3)
    design = build_design(parse_formula("y ~ x + t + (1 + x | a)"), data)
    deviance, _ = deviance_stage(design, True)
    theta = np.array([0.7, -0.2, 0.4])
    passes = []
    original = deviance._cluster_factors
    monkeypatch.setattr(deviance, "_cluster_factors", lambda *a: passes.append(1) or original(*a))
    value, _ = deviance.deviance_and_gradient(theta)
    before = len(passes)
    sol = deviance.light_solution(theta.copy())
    assert len(passes) == before and sol.deviance == value
    deviance.light_solution(theta + 0.1)  # another theta: a new pass
    assert len(passes) == before + 1
    deviance.offset = 2.0  # another offset (R-side models): a new pass with it
    assert deviance.light_solution(theta).deviance == pytest.approx(value + 2.0, rel=1e-14)
    assert len(passes) == before + 2


@pytest.mark.parametrize("reml", [True, False])
def test_expected_information_approximates_the_hessian(reml):
    """With many clusters the expected information is close to the finite-difference Hessian of
    the profiled deviance near the optimum (it drives Fisher scoring); value and gradient are the
    plain ones.  (Far from the optimum expected and observed information differ: scoring then
    still descends, only more slowly.)"""
    import mixedfx

    rng = np.random.default_rng(8)
    m = 3000
    g = np.repeat(np.arange(m), 5)
    t = np.tile(np.arange(5.0), m) + rng.normal(size=g.size) * 0.1
    b = rng.multivariate_normal([0, 0], [[1.0, 0.2], [0.2, 0.25]], m)
    data = pd.DataFrame({"y": 1 + t + b[g, 0] + b[g, 1] * t + rng.normal(size=g.size), "t": t, "g": g})
    design = build_design(parse_formula("y ~ t + (1 + t | g)"), data)
    deviance, _ = deviance_stage(design, reml)
    theta = mixedfx.fit("y ~ t + (1 + t | g)", data, method="reml" if reml else "ml").theta_engine
    value, gradient, information = deviance.deviance_gradient_information(theta)
    plain = deviance.deviance_and_gradient(theta)
    assert value == plain[0]
    np.testing.assert_allclose(gradient, plain[1], rtol=1e-12)
    eps = 1e-5
    hessian = np.array(
        [
            (deviance.deviance_and_gradient(theta + eps * e)[1] - deviance.deviance_and_gradient(theta - eps * e)[1])
            / (2 * eps)
            for e in np.eye(3)
        ]
    )
    np.testing.assert_allclose(information, information.T)
    assert np.abs(information - hessian).max() < 0.01 * np.abs(hessian).max()
    assert np.all(np.linalg.eigvalsh(information) > 0)
