"""BLAS threading during large fits (mixedfx.threads)."""

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_info

import mixedfx
import mixedfx.fitting.pipeline
import mixedfx.fitting.threads as threads


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_large_fits_run_blas_on_one_thread_and_restore_it():
    before = _blas_threads()
    with threads.single_threaded_blas(threads.SINGLE_THREAD_ROWS):
        assert _blas_threads() and all(n == 1 for n in _blas_threads())
    assert _blas_threads() == before


def test_small_fits_leave_blas_alone():
    before = _blas_threads()
    with threads.single_threaded_blas(threads.SINGLE_THREAD_ROWS - 1):
        assert _blas_threads() == before


def test_fit_limits_blas_and_restores_it(monkeypatch):
    """A fit above the threshold sees one BLAS thread; the caller's setting is back afterwards."""
    seen = []
    original = mixedfx.fitting.pipeline.deviance_stage

    def spy(*args, **kwargs):
        seen.append(_blas_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(mixedfx.fitting.pipeline, "deviance_stage", spy)
    monkeypatch.setattr(threads, "SINGLE_THREAD_ROWS", 100)
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(40), 5)
    data = pd.DataFrame({"y": rng.normal(size=200) + rng.normal(size=40)[g], "g": g})
    before = _blas_threads()
    fit = mixedfx.fit("y ~ 1 + (1 | g)", data)
    assert np.isfinite(fit.loglik)
    assert seen and all(n == 1 for n in seen[0])
    assert _blas_threads() == before
