"""Crossed random intercepts out of core: DuckDB and Dask reduce the rows to cells, and the method of
moments on the cells equals the in-memory fit on the rows."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx.cli import main
from mixedfx.data.reduce.cells import reduce_cells_duckdb
from mixedfx.errors import DataError, OptionError, RankDeficiencyWarning

FORMULA = "y ~ x + (1 | a) + (1 | b)"
ENGINES = ["duckdb", "dask"]


def _crossed(seed: int = 3, n: int = 6000, repeats: int = 1) -> pd.DataFrame:
    """Crossed a x b with ``repeats`` rows per drawn pair (1: most cells hold one row)."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 120, n), rng.integers(0, 45, n)
    a, b = np.repeat(a, repeats), np.repeat(b, repeats)
    x = rng.normal(size=a.size)
    y = 1 + 0.5 * x + 0.9 * rng.normal(size=120)[a] + 0.6 * rng.normal(size=45)[b] + rng.normal(size=a.size)
    return pd.DataFrame({"y": y, "x": x, "a": [f"L'{v}" for v in a], "b": b})


def _fit(engine: str, data: pd.DataFrame, tmp_path, formula: str = FORMULA, parts: int = 3):
    if engine == "duckdb":
        shuffled = data.sample(frac=1.0, random_state=1)  # cells split across the files
        bounds = np.linspace(0, len(shuffled), parts + 1).astype(int)
        for i in range(parts):
            shuffled.iloc[bounds[i] : bounds[i + 1]].to_parquet(tmp_path / f"part{i}.parquet")
        return mixedfx.fit(formula, str(tmp_path / "*.parquet"), method="moments", engine="duckdb")
    dd = pytest.importorskip("dask.dataframe")
    return mixedfx.fit(formula, dd.from_pandas(data, npartitions=parts), method="moments")


def _same(one, two):
    assert one.nobs == two.nobs and one.ngroups == two.ngroups
    np.testing.assert_allclose(one.components.to_numpy(), two.components.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(one.fixef.to_numpy(), two.fixef.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(one.se.to_numpy(), two.se.to_numpy(), rtol=1e-9)
    assert list(one.fixef.index) == list(two.fixef.index)
    assert list(one.components.index) == list(two.components.index)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("repeats", [1, 4])
def test_cells_equal_the_rows_in_memory(engine, repeats, tmp_path):
    data = _crossed(repeats=repeats)
    _same(_fit(engine, data, tmp_path), mixedfx.fit(FORMULA, data, method="moments"))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("formula", ["y ~ x + (1 | a)", "y ~ x + (1 | a/g)", "y ~ x + (1 | g) + (1 | a:g)"])
def test_one_and_nested_factors_equal_the_rows(engine, formula, tmp_path):
    data = _crossed(n=3000).assign(g=lambda d: d["b"] % 4)
    _same(_fit(engine, data, tmp_path, formula), mixedfx.fit(formula, data, method="moments"))


def test_repeated_rows_make_few_cells(tmp_path):
    data = _crossed(n=2000, repeats=5)
    data.to_parquet(tmp_path / "d.parquet")
    reduced = reduce_cells_duckdb(FORMULA, str(tmp_path / "d.parquet"))
    assert reduced.nobs == 10_000 and reduced.n_cells < 2000
    assert reduced.cells.index.size > 0 and reduced.response.yy.size == reduced.cells.index.size
    assert sorted(reduced.levels["a"])[0].startswith("L'")  # a quote in a label is data, not SQL


@pytest.mark.parametrize("engine", ENGINES)
def test_missing_values_are_dropped_and_counted(engine, tmp_path):
    data = _crossed(n=3000)
    data.loc[[5, 17], "x"] = np.nan
    data.loc[[40], "a"] = None
    fit = _fit(engine, data, tmp_path)
    memory = mixedfx.fit(FORMULA, data, method="moments")
    _same(fit, memory)
    assert fit.record.n_missing == memory.record.n_missing == 3


@pytest.mark.parametrize("engine", ENGINES)
def test_aliased_columns_are_dropped_as_in_memory(engine, tmp_path):
    data = _crossed(n=3000).assign(x2=lambda d: 2 * d["x"])
    formula = "y ~ x + x2 + (1 | a) + (1 | b)"
    with pytest.warns(RankDeficiencyWarning, match="x2"):
        fit = _fit(engine, data, tmp_path, formula)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        _same(fit, mixedfx.fit(formula, data, method="moments"))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "formula, change, error, message",
    [
        ("y ~ x + (1 + x | a) + (1 | b)", None, OptionError, "random intercepts only; the term on 'a' has"),
        (FORMULA, lambda d: d.assign(b=0), DataError, "has only 1 level"),
        (FORMULA, lambda d: d.assign(y=2.5), DataError, "does not vary"),
        (FORMULA, lambda d: d.assign(x=np.where(d.index == 7, np.inf, d["x"])), DataError, "infinite"),
    ],
)
def test_the_same_refusals_as_in_memory(engine, formula, change, error, message, tmp_path):
    data = _crossed(n=1500)
    data = change(data) if change else data
    with pytest.raises(error, match=message):
        mixedfx.fit(formula, data, method="moments")
    with pytest.raises(error, match=message):
        _fit(engine, data, tmp_path, formula)


def test_the_cell_bootstrap_is_seeded_and_agrees_with_the_rows(tmp_path):
    data = _crossed(n=4000, repeats=3)
    duck = _fit("duckdb", data, tmp_path)
    memory = mixedfx.fit(FORMULA, data, method="moments")
    one, two = duck.re_table(replicates=200), duck.re_table(replicates=200)
    pd.testing.assert_frame_equal(one, two)
    rows = memory.re_table(replicates=200)
    # SEs from 200 replicates each scatter by ~5%: the two bootstraps draw the same distribution
    np.testing.assert_allclose(one["se"], rows["se"], rtol=0.2)


def test_cli_fits_files_by_moments_in_duckdb(tmp_path, capsys):
    data = _crossed(n=2000)
    data.to_parquet(tmp_path / "d.parquet")
    code = main(["fit", str(tmp_path / "d.parquet"), FORMULA, "--engine", "duckdb", "--method", "moments", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    assert '"method": "moments"' in out and '"nobs": 2000' in out


def test_a_cell_reduction_on_your_own_connection_is_fitted_by_moments(tmp_path):
    import duckdb

    from mixedfx.reduce import fit_reduced

    data = _crossed(n=3000, repeats=2)
    data.to_parquet(tmp_path / "d.parquet")
    connection = duckdb.connect(config={"memory_limit": "256MB"})
    cells = reduce_cells_duckdb(FORMULA, str(tmp_path / "d.parquet"), connection=connection)
    _same(fit_reduced(cells), mixedfx.fit(FORMULA, data, method="moments"))
    with pytest.raises(OptionError, match="fitted by method='moments'"):
        fit_reduced(cells, method="ml")


def test_the_rank_check_sums_in_chunks(tmp_path, monkeypatch):
    import mixedfx.data.reduce.cells as cells_module

    data = _crossed(n=2000, repeats=1).assign(x2=lambda d: 3 * d["x"] - 1)
    data.to_parquet(tmp_path / "d.parquet")
    formula = "y ~ x + x2 + (1 | a) + (1 | b)"
    monkeypatch.setattr(cells_module, "GRAM_CHUNK", 7)  # many chunks
    with pytest.warns(RankDeficiencyWarning, match="x2"):
        chunked = reduce_cells_duckdb(formula, str(tmp_path / "d.parquet"))
    assert chunked.plan.fixed_names == ["(Intercept)", "x"] and chunked.X.shape[1] == 2
