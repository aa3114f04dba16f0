"""Residual autocorrelation by occasion and by lag."""

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx.errors import DataError


def test_matrix_and_acf_on_known_ar1_residuals():
    rng = np.random.default_rng(0)
    n, t, rho = 3000, 4, 0.6
    e = np.zeros((n, t))
    e[:, 0] = rng.normal(size=n)
    for k in range(1, t):
        e[:, k] = rho * e[:, k - 1] + np.sqrt(1 - rho**2) * rng.normal(size=n)
    frame = pd.DataFrame({"r": e.ravel(), "time": np.tile(np.arange(1, t + 1), n), "id": np.repeat(np.arange(n), t)})
    ac = mixedfx.autocorrelation(frame["r"], frame["time"], frame["id"])
    assert list(ac.matrix.index) == ["time1", "time2", "time3", "time4"]
    assert ac.matrix.loc["time1", "time2"] == pytest.approx(rho, abs=0.04)
    assert ac.matrix.loc["time1", "time4"] == pytest.approx(rho**3, abs=0.04)
    np.testing.assert_allclose(ac.acf["acf"], [rho, rho**2, rho**3], atol=0.04)
    assert list(ac.acf["pairs"]) == [3 * n, 2 * n, n]


def test_unbalanced_clusters_use_pairwise_occasions():
    asian = mixedfx.datasets.load_asian()
    fit = mixedfx.fit("weight ~ age_c + age_sp + girl + age_c_girl + age_sp_girl + (1 | id)", asian, method="ml")
    ac = mixedfx.autocorrelation(fit.residuals(level="population"), fit.design.data["occ"], fit.design.data["id"])
    assert ac.matrix.shape == (5, 5)
    np.testing.assert_allclose(np.diag(ac.matrix), 1.0)
    assert (ac.matrix.loc["time1", "time2":"time4"] > 0).all()  # marginal residuals share the child effect
    wide = fit.design.data.pivot_table(index="id", columns="occ", values="weight", aggfunc="first").notna()
    assert ac.acf["pairs"].iloc[0] == int((wide.to_numpy()[:, :-1] & wide.to_numpy()[:, 1:]).sum())


def test_the_last_lag_is_its_single_pair_of_occasions():
    """As the lecture's autocor: its last lag (.2059693) is the matrix entry of time1 and time4 (.2060)."""
    rng = np.random.default_rng(4)
    n = 60
    e = rng.multivariate_normal(np.zeros(4), 0.5 * np.eye(4) + 0.5, size=n)
    keep = rng.random((n, 4)) < 0.8  # unbalanced: some visits missing
    ids, times = np.nonzero(keep)
    ac = mixedfx.autocorrelation(e[ids, times], times + 1, ids)
    assert ac.acf["acf"].iloc[-1] == pytest.approx(ac.matrix.loc["time1", "time4"], abs=1e-12)
    a, b = e[:, :-1][keep[:, :-1] & keep[:, 1:]], e[:, 1:][keep[:, :-1] & keep[:, 1:]]
    assert ac.acf["acf"].iloc[0] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)


def test_needs_two_occasions():
    with pytest.raises(DataError, match="two distinct occasions"):
        mixedfx.autocorrelation([1.0, 2.0], [1, 1], [1, 2])
