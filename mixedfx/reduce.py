"""Data larger than memory: reduce with DuckDB, Dask or pandas chunks, save, and fit from the statistics.

Public namespace of :mod:`mixedfx.data.reduce` (the reductions) and :func:`mixedfx.api.fit_reduced`.
"""

from .api import fit_reduced
from .data.reduce.cells import ReducedCells, reduce_cells_dask, reduce_cells_duckdb
from .data.reduce.chunks import reduce_dask, reduce_frame
from .data.reduce.reduced import ReducedData, load_reduced
from .data.reduce.sqlscan import reduce_duckdb

__all__ = [
    "reduce_duckdb",
    "reduce_dask",
    "reduce_frame",
    "reduce_cells_duckdb",
    "reduce_cells_dask",
    "fit_reduced",
    "load_reduced",
    "ReducedData",
    "ReducedCells",
]
