"""Crossed factors' dense Schur complement: Newton steps first when evaluations are costly, BLAS threads
for the factorisation, and the outer block kept sparse."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mixedfx
import mixedfx.engine.blocked as blocked
from mixedfx.engine.blas import configured_threads, controller, dense_factorisation_threads
from mixedfx.fitting.threads import single_threaded_blas


def _crossed(seed: int, sd_b: float = 0.6, n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 300, n), rng.integers(0, 60, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=300)[a] + sd_b * rng.normal(size=60)[b] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "a": a, "b": b})


@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize("seed", [1, 2])
def test_newton_from_the_start_reaches_the_same_optimum_in_fewer_evaluations(method, seed, monkeypatch):
    data = _crossed(seed)
    usual = mixedfx.fit("y ~ x + (1 | a) + (1 | b)", data, method=method)
    monkeypatch.setattr(blocked, "COSTLY_SCHUR_SIZE", 10)  # the 60 levels of b count as costly
    costly = mixedfx.fit("y ~ x + (1 | a) + (1 | b)", data, method=method)
    assert costly.converged and costly.record.deviance.costly_evaluations
    assert costly.optimum.n_evaluations < usual.optimum.n_evaluations
    assert costly.loglik == pytest.approx(usual.loglik, abs=1e-8)
    np.testing.assert_allclose(costly.theta, usual.theta, rtol=1e-5)


def test_a_boundary_optimum_falls_back_to_the_usual_path(monkeypatch):
    data = _crossed(3, sd_b=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        usual = mixedfx.fit("y ~ x + (1 | a) + (1 | b)", data)
        monkeypatch.setattr(blocked, "COSTLY_SCHUR_SIZE", 10)
        costly = mixedfx.fit("y ~ x + (1 | a) + (1 | b)", data)
    assert costly.loglik >= usual.loglik - 1e-8
    np.testing.assert_allclose(costly.theta, usual.theta, atol=1e-6)


def test_the_dense_factorisation_gets_the_configured_threads_back():
    def blas_threads() -> int:
        return max(lib.num_threads for lib in controller().lib_controllers if lib.user_api == "blas")

    configured = configured_threads()
    with single_threaded_blas(10**6):
        assert blas_threads() == 1
        with dense_factorisation_threads(5000):
            assert blas_threads() == configured
        with dense_factorisation_threads(50):  # small: not worth a second thread
            assert blas_threads() == 1
        assert blas_threads() == 1


def test_the_outer_block_is_sparse_and_its_cholesky_equals_the_dense_one():
    fit = mixedfx.fit("y ~ x + (1 | a) + (1 | b)", _crossed(4))
    assert sp.issparse(fit.record.deviance.stats.rest_ZtZ)
    rng = np.random.default_rng(0)
    A = rng.normal(size=(40, 40))
    S = A @ A.T + 40 * np.eye(40)
    np.testing.assert_allclose(blocked._lower_cholesky_in_place(S.copy()), np.linalg.cholesky(S), atol=1e-12)


def test_a_dense_block_beyond_memory_is_refused_with_the_way_out(monkeypatch):
    monkeypatch.setattr(blocked, "physical_memory", lambda: 1e4)  # 10 kB: 60 x 60 doubles do not fit
    with pytest.raises(mixedfx.errors.OptionError, match=r"dense 60 x 60 matrix for 'b' \(60 levels\).*moments"):
        mixedfx.fit("y ~ x + (1 | a) + (1 | b)", _crossed(5))
    nested = _crossed(5).assign(b=lambda d: d["a"] // 10)  # nested: batched blocks, no dense block
    assert mixedfx.fit("y ~ x + (1 | a) + (1 | b)", nested).converged


def test_a_slow_exact_fit_says_so_at_its_first_evaluation(monkeypatch):
    import mixedfx.fitting.pipeline as pipeline
    from mixedfx.errors import SlowFitWarning

    data = _crossed(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowFitWarning)
        quick = mixedfx.fit("y ~ x + (1 | a) + (1 | b)", data)  # not costly: never timed
    monkeypatch.setattr(blocked, "COSTLY_SCHUR_SIZE", 10)
    monkeypatch.setattr(pipeline, "SLOW_FIT_SECONDS", 0.0)
    with pytest.warns(SlowFitWarning, match=r"dense 60 x 60 matrix.*method='moments'") as caught:
        slow = mixedfx.fit("y ~ x + (1 | a) + (1 | b)", data)
    slow_warnings = [w for w in caught if w.category is SlowFitWarning]
    assert len(slow_warnings) == 1 and slow_warnings[0].filename == __file__  # points at the caller
    assert slow.loglik == pytest.approx(quick.loglik, abs=1e-8)
