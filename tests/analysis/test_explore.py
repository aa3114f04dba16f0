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
    assert ac.acf["pairs"].iloc[0] == (asian.groupby("id").size() - 1).sum()


def test_needs_two_occasions():
    with pytest.raises(DataError, match="two distinct occasions"):
        mixedfx.autocorrelation([1.0, 2.0], [1, 1], [1, 2])
