"""Every engine (rows in memory, DuckDB, Dask) makes the same checks with the same messages."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx.errors import DataError, FormulaError, IdentifiabilityWarning

ENGINES = ["memory", "duckdb", "dask"]


def _data(seed: int = 0, n_groups: int = 20, size: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), size)
    x = rng.uniform(0.5, 2.0, g.size)
    y = 1 + x + rng.normal(size=n_groups)[g] + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": g, "w": rng.uniform(0.5, 2, g.size)})


def _fit(engine: str, formula: str, data: pd.DataFrame, tmp_path, **options):
    if engine == "duckdb":
        pytest.importorskip("duckdb")
        path = tmp_path / "data.parquet"
        data.to_parquet(path)
        return mixedfx.fit(formula, str(path), engine="duckdb", **options)
    if engine == "dask":
        dd = pytest.importorskip("dask.dataframe")
        return mixedfx.fit(formula, dd.from_pandas(data, npartitions=2), **options)
    return mixedfx.fit(formula, data, **options)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "change, formula, error, message",
    [
        (lambda d: d.assign(g=0), "y ~ x + (1 | g)", DataError, "has only 1 level"),
        (lambda d: d.assign(g=np.arange(len(d))), "y ~ x + (1 | g)", DataError, "every cluster has one observation"),
        (lambda d: d, "y ~ x + C(g) + (1 | g)", DataError, "confounded with the fixed effects"),
        (lambda d: d.assign(y=2.5), "y ~ x + (1 | g)", DataError, "does not vary"),
        (lambda d: d.assign(x=np.where(d.index == 7, np.inf, d["x"])), "y ~ x + (1 | g)", DataError, "infinite"),
        (lambda d: d.assign(x=np.where(d.index == 3, 0.0, d["x"])), "y ~ np.log(x) + (1 | g)", DataError, "not finite"),
    ],
)
def test_the_same_refusals(engine, change, formula, error, message, tmp_path):
    with pytest.raises(error, match=message):
        _fit(engine, formula, change(_data()), tmp_path)


@pytest.mark.parametrize("engine", ENGINES)
def test_negative_weights_are_refused(engine, tmp_path):
    data = _data().assign(w=lambda d: np.where(d.index == 5, -1.0, d["w"]))
    with pytest.raises(DataError, match="must be positive and finite"):
        _fit(engine, "y ~ x + (1 | g)", data, tmp_path, weights="w")


@pytest.mark.parametrize("engine", ENGINES)
def test_constant_slopes_warn_everywhere(engine, tmp_path):
    data = _data()
    data["x"] = data["g"] * 0.1 + 1.0  # constant within each cluster
    with pytest.warns(IdentifiabilityWarning, match="constant within every cluster"):
        fit = _fit(engine, "y ~ x + (1 + x | g)", data, tmp_path)
    assert any("constant within every cluster" in note for note in fit.record.notes)


@pytest.mark.parametrize("engine", ["duckdb", "dask"])
def test_missing_values_are_dropped_and_counted_as_in_memory(engine, tmp_path):
    data = _data()
    data.loc[[2, 9], "x"] = np.nan
    data.loc[[11], "y"] = np.nan
    reference = mixedfx.fit("y ~ x + (1 | g)", data)
    fit = _fit(engine, "y ~ x + (1 | g)", data, tmp_path)
    assert fit.nobs == reference.nobs == len(data) - 3
    assert fit.n_missing == 3
    np.testing.assert_allclose(fit.fixef.to_numpy(), reference.fixef.to_numpy(), rtol=1e-8)


@pytest.mark.parametrize("engine", ["duckdb", "dask"])
def test_stateful_transforms_are_refused_by_reductions(engine, tmp_path):
    with pytest.raises(FormulaError, match="needs statistics of the whole column"):
        _fit(engine, "y ~ poly(x, 2) + (1 | g)", _data(), tmp_path)


def test_sql_powers_follow_python_precedence(tmp_path):
    data = _data()
    formula = "y ~ I(x ** 3 ** 2) + I(-x ** 2) + I(2 ** -x) + (1 | g)"
    memory = mixedfx.fit(formula, data)
    duck = _fit("duckdb", formula, data, tmp_path)
    np.testing.assert_allclose(duck.fixef.to_numpy(), memory.fixef.to_numpy(), rtol=1e-7)


def test_sql_is_checked_against_numpy_on_every_row(tmp_path, monkeypatch):
    """A translation that agrees on the sample but not on all rows is caught by the full-row check."""
    import mixedfx.data.reduce.sqlscan as scan

    data = _data(n_groups=400)  # more rows than the 2,000-row sample
    original = scan.numeric_sql

    def wrong_beyond_sample(expr, columns):
        sql = original(expr, columns)
        return f"(CASE WHEN {scan.quote('x')} > 1.999 THEN 0 ELSE {sql} END)" if "log" in expr else sql

    monkeypatch.setattr(scan, "numeric_sql", wrong_beyond_sample)
    data.loc[data.index[-5:], "x"] = 1.9995  # only rows outside the sample reach the wrong branch
    with pytest.raises(FormulaError, match="differs from its evaluation in memory"):
        _fit("duckdb", "y ~ np.log(x) + (1 | g)", data, tmp_path)


def test_files_with_different_types_are_refused(tmp_path):
    pytest.importorskip("duckdb")
    data = _data()
    data.iloc[:60].to_parquet(tmp_path / "a.parquet")
    data.iloc[60:].assign(g=lambda d: d["g"].astype(str)).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(DataError, match="Column 'g' has type"):
        mixedfx.fit("y ~ x + (1 | g)", str(tmp_path), engine="duckdb")


@pytest.mark.parametrize("engine", ENGINES)
def test_interaction_factors_group_by_the_pair(engine, tmp_path):
    """("p:q", "r") and ("p", "q:r") are two levels of a:b, never one."""
    rng = np.random.default_rng(3)
    pairs = [("p:q", "r"), ("p", "q:r"), ("s", "t"), ("u", "v")] * 2
    a = np.repeat([p[0] for p in pairs], 10)
    b = np.repeat([f"{p[1]}{k // 4}" if k >= 4 else p[1] for k, p in enumerate(pairs)], 10)
    y = rng.normal(size=a.size)
    data = pd.DataFrame({"y": y, "a": a, "b": b})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = _fit(engine, "y ~ 1 + (1 | a:b)", data, tmp_path)
    assert fit.ngroups == {"a:b": 8}


@pytest.mark.parametrize("engine", ["duckdb", "dask"])
def test_category_levels_come_from_every_row(engine, tmp_path):
    """A numeric column coded with C() whose last level appears only after the 2,000-row sample."""
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(300), 10)
    k = np.where(np.arange(g.size) > 2500, 3, rng.integers(0, 3, g.size))
    data = pd.DataFrame({"y": rng.normal(size=g.size) + k, "k": k, "g": g})
    memory = mixedfx.fit("y ~ C(k) + (1 | g)", data)
    reduced = _fit(engine, "y ~ C(k) + (1 | g)", data, tmp_path)
    assert list(reduced.fixef.index) == list(memory.fixef.index)
    np.testing.assert_allclose(reduced.fixef.to_numpy(), memory.fixef.to_numpy(), rtol=1e-8)


def test_csv_missing_values_read_alike(tmp_path):
    """NA, empty fields and Stata's '.' are missing for the in-memory reader and for DuckDB."""
    pytest.importorskip("duckdb")
    data = _data()
    text = data.to_csv(index=False).splitlines()
    markers = {3: ".", 8: "NA", 15: ""}
    rows = [text[0]]
    for i, line in enumerate(text[1:]):
        fields = line.split(",")
        if i in markers:
            fields[1] = markers[i]  # the x column
        rows.append(",".join(fields))
    path = tmp_path / "missing.csv"
    path.write_text("\n".join(rows) + "\n")
    memory = mixedfx.fit("y ~ x + (1 | g)", str(path))
    duck = mixedfx.fit("y ~ x + (1 | g)", str(path), engine="duckdb")
    assert memory.n_missing == duck.n_missing == 3
    np.testing.assert_allclose(duck.fixef.to_numpy(), memory.fixef.to_numpy(), rtol=1e-8)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_random_effect_in_two_terms_is_refused(engine, tmp_path):
    with pytest.raises(FormulaError, match="appears in more than one term"):
        _fit(engine, "y ~ x + (1 | g) + (1 + x | g)", _data(), tmp_path)


@pytest.mark.parametrize("engine", ENGINES)
def test_dot_and_offsets_in_every_engine(engine, tmp_path):
    data = _data().assign(n=lambda d: 1 + d["g"] % 3)
    formula = "y ~ . + offset(log(n)) + (1 | g)"  # '.': x (not y, g, the weights w or the offset's n)
    memory = mixedfx.fit(formula, data, weights="w")
    fit = _fit(engine, formula, data, tmp_path, weights="w")
    assert list(fit.fixef.index) == ["(Intercept)", "x"]
    np.testing.assert_allclose(fit.fixef.to_numpy(), memory.fixef.to_numpy(), rtol=1e-8)
    assert fit.loglik == pytest.approx(memory.loglik, abs=1e-8)
    new = data.head(4)
    np.testing.assert_allclose(fit.predict(new)["prediction"], memory.predict(new)["prediction"], rtol=1e-8)
    shifted = mixedfx.fit("y ~ x + (1 | g)", data.assign(y=data["y"] - np.log(data["n"])), weights="w")
    np.testing.assert_allclose(fit.fixef.to_numpy(), shifted.fixef.to_numpy(), rtol=1e-8)


@pytest.mark.parametrize("engine", ["duckdb", "dask"])
def test_reductions_refuse_ns_and_stateful_offsets(engine, tmp_path):
    data = _data()
    for formula in ["y ~ ns(x, df = 3) + (1 | g)", "y ~ x + offset(scale(x)) + (1 | g)"]:
        with pytest.raises(FormulaError, match="whole column"):
            _fit(engine, formula, data, tmp_path)
