"""Extreme scales: the same estimates as on the natural scale, or a clear refusal; never a false
rank-deficiency drop, a false boundary warning or an internal error."""

import warnings

import numpy as np
import pytest

import mixedfx
from mixedfx.errors import DataError

FORMULA = "Reaction ~ Days + (Days | Subject)"


def _strict_fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no rank-deficiency, boundary or convergence warning
        return mixedfx.fit(*args, **kwargs)


@pytest.fixture(scope="module")
def base(sleepstudy):
    return _strict_fit(FORMULA, sleepstudy)


@pytest.mark.parametrize("c", [1e-10, 1e10, 1e15, 1e20])
def test_uniform_weights_of_any_size(sleepstudy, base, c):
    fit = _strict_fit(FORMULA, sleepstudy, weights=np.full(len(sleepstudy), c))
    np.testing.assert_allclose(fit.fixef, base.fixef, rtol=1e-8)
    np.testing.assert_allclose(fit.se, base.se, rtol=1e-6)
    np.testing.assert_allclose(fit.G["Subject"], base.G["Subject"], rtol=1e-6)
    assert fit.sigma == pytest.approx(base.sigma * np.sqrt(c), rel=1e-7)
    assert fit.loglik == pytest.approx(base.loglik, abs=1e-6)  # the deviance does not change
    assert not fit.singular


@pytest.mark.parametrize("c", [1e100, 1e-100])
def test_large_but_representable_scales(sleepstudy, base, c):
    y = _strict_fit(FORMULA, sleepstudy.assign(Reaction=sleepstudy["Reaction"] * c))
    np.testing.assert_allclose(y.fixef, base.fixef * c, rtol=1e-8)
    x = _strict_fit(FORMULA, sleepstudy.assign(Days=sleepstudy["Days"] * c))
    assert x.fixef["Days"] == pytest.approx(base.fixef["Days"] / c, rel=1e-8)
    assert x.loglik == pytest.approx(base.loglik - np.log(c), abs=1e-6)  # REML's log|X'X| / 2 moves


@pytest.mark.parametrize("column", ["Reaction", "Days"])
@pytest.mark.parametrize("c", [1e300, 1e-300])
def test_unrepresentable_scales_are_refused_clearly(sleepstudy, column, c):
    with pytest.raises(DataError, match="cannot be represented in double precision"):
        mixedfx.fit(FORMULA, sleepstudy.assign(**{column: sleepstudy[column] * c}))


def test_weights_of_any_size_in_reductions(sleepstudy, base, tmp_path):
    pytest.importorskip("duckdb")
    path = tmp_path / "w.parquet"
    sleepstudy.assign(w=1e20).to_parquet(path)
    fit = _strict_fit(FORMULA, str(path), engine="duckdb", weights="w")
    np.testing.assert_allclose(fit.fixef, base.fixef, rtol=1e-8)
    assert fit.sigma == pytest.approx(base.sigma * 1e10, rel=1e-7)
