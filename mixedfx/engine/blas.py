"""BLAS threads: one controller for the libraries loaded (numpy's and scipy's OpenBLAS), and a
context that gives a compute-bound dense factorisation the threads that a fit took away.

Fits on many rows run BLAS on one thread (:mod:`mixedfx.fitting.threads`: their calls are
memory-bound or small).  The dense Cholesky of a crossed factor's Schur complement is neither:
m^3 / 3 flops on m^2 doubles, 0.85 s at m = 5,000 on one core and 0.45 s on two.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache

from threadpoolctl import ThreadpoolController


@lru_cache(maxsize=1)
def controller():
    """threadpoolctl's view of the BLAS libraries loaded now, built once (before any limit is set)."""
    return ThreadpoolController()


@lru_cache(maxsize=1)
def configured_threads() -> int:
    """The BLAS threads the process started with (the user's OPENBLAS_NUM_THREADS, or the cores)."""
    counts = [lib.num_threads for lib in controller().lib_controllers if lib.user_api == "blas"]
    return max(counts, default=1)


def dense_factorisation_threads(size: int) -> AbstractContextManager:
    """The configured BLAS threads for a dense factorisation of a ``size`` x ``size`` matrix
    (from 1,000 rows on, where a second thread pays for its synchronisation)."""
    if size < 1000 or configured_threads() <= 1:
        return nullcontext()
    return controller().limit(limits=configured_threads(), user_api="blas")
