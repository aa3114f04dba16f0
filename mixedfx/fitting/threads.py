"""BLAS threading during a fit.

The engine's BLAS calls are either memory-bound (``X'X`` of an n x p design, sparse-times-dense
reductions) or small (p x p products summed over chunks of 20,000 clusters).  A second BLAS
thread speeds up neither; it adds synchronisation and a core that spins between calls, which
on a two-core machine slows the main thread (10^6-row random-slope fit: 0.24-0.49 s with
OpenBLAS's default threads, 0.19-0.24 s with one).  Fits on many rows therefore run BLAS on one
thread, restored afterwards; smaller fits leave it alone: finding and limiting the libraries costs
~8 ms in a fresh process, more than a second thread costs a fit of 10^5 rows.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from ..engine.blas import configured_threads, controller

#: Fits on at least this many rows run BLAS on one thread.
SINGLE_THREAD_ROWS = 200_000


def single_threaded_blas(n_rows: int) -> AbstractContextManager:
    """A context in which BLAS uses one thread, for fits of at least :data:`SINGLE_THREAD_ROWS` rows."""
    if n_rows < SINGLE_THREAD_ROWS:
        return nullcontext()
    configured_threads()  # read before the limit: dense factorisations restore it
    return controller().limit(limits=1, user_api="blas")


def one_blas_thread() -> AbstractContextManager:
    """A context in which BLAS uses one thread, whatever the size.

    GLMM fits alternate small numpy and scipy BLAS calls (two OpenBLAS copies in one process):
    with two threads each, the copies' spinning threads fight over the cores (a 181 x 181
    Schur complement and its Cholesky: 15 ms a pair on two cores, 1 ms with one thread).
    """
    configured_threads()
    return controller().limit(limits=1, user_api="blas")
