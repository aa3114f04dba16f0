"""Reductions of a model's data to sufficient statistics (DuckDB, Dask, pandas chunks)."""
