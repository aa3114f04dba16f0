"""Out-of-memory engines (DuckDB SQL, Dask map-reduce) equal the in-memory fit to 1e-8."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mixedfx
from mixedfx.cli import main
from mixedfx.errors import DataError, FormulaError, OptionError
from mixedfx.reduce import fit_reduced, load_reduced, reduce_duckdb, reduce_frame

EXAM = "gcse ~ lrt_groupc * sex + schgend + (1 + lrt_groupc | school)"
REL = 1e-8


def _same(a, b, rel=REL):
    assert a.nobs == b.nobs and a.ngroups == b.ngroups
    assert a.loglik == pytest.approx(b.loglik, rel=rel)
    np.testing.assert_allclose(a.fixef.to_numpy(), b.fixef.to_numpy(), rtol=rel * 100, atol=1e-9)
    np.testing.assert_allclose(a.se.to_numpy(), b.se.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-6, atol=1e-9)
    assert a.sigma == pytest.approx(b.sigma, rel=1e-7)


@pytest.fixture(scope="module")
def exam_files(tmp_path_factory):
    exam = mixedfx.datasets.load_exam()[["gcse", "lrt_groupc", "sex", "schgend", "school"]].copy()
    exam["school"] = exam["school"].astype(str)
    folder = tmp_path_factory.mktemp("exam")
    shuffled = exam.sample(frac=1.0, random_state=0)  # schools split across files
    for i, start in enumerate(range(0, len(shuffled), 1100)):
        part = shuffled.iloc[start : start + 1100]
        part.to_parquet(folder / f"part{i}.parquet")
        part.to_csv(folder / f"part{i}.csv", index=False)
    return exam, folder


def test_duckdb_parquet_glob_equals_memory(exam_files):
    exam, folder = exam_files
    memory = mixedfx.fit(EXAM, exam)
    duck = mixedfx.fit(EXAM, str(folder / "*.parquet"), engine="duckdb")
    _same(duck, memory)
    assert list(duck.fixef.index) == list(memory.fixef.index)
    blups = duck.ranef()["school"].sort_index()
    np.testing.assert_allclose(blups.to_numpy(), memory.ranef()["school"].sort_index().to_numpy(), rtol=1e-6)


def test_duckdb_many_clusters_go_through_a_parquet_file(exam_files, monkeypatch):
    import mixedfx.data.reduce.sqlscan as reduce_module

    exam, folder = exam_files
    monkeypatch.setattr(reduce_module, "SPILL_CLUSTERS", 10)  # the exam data's 65 schools count as many
    fit = mixedfx.fit(EXAM, str(folder / "*.parquet"), engine="duckdb")
    _same(fit, mixedfx.fit(EXAM, exam))
    np.testing.assert_allclose(fit.ranef()["school"].to_numpy(), mixedfx.fit(EXAM, exam).ranef()["school"].to_numpy())
    nested = reduce_module.reduce_duckdb("gcse ~ lrt_groupc + (1 | schgend/school)", str(folder / "*.parquet"))
    assert nested.blocks()[0].n_levels == 65


def test_duckdb_csv_files_and_directory(exam_files):
    exam, folder = exam_files
    memory = mixedfx.fit("gcse ~ lrt_groupc + (1 | school)", exam, method="ml")
    csv = mixedfx.fit("gcse ~ lrt_groupc + (1 | school)", sorted(folder.glob("*.csv")), engine="duckdb", method="ml")
    _same(csv, memory)
    directory = mixedfx.fit("gcse ~ lrt_groupc + (1 | school)", folder, engine="duckdb", method="ml")
    _same(directory, memory)


def test_duckdb_nested_transformations_and_missing_values(tmp_path):
    rng = np.random.default_rng(4)
    n = 3000
    d = pd.DataFrame({"school": rng.integers(0, 40, n), "x": rng.uniform(1, 5, n)})
    d["klass"] = d["school"].astype(str) + "-" + rng.integers(0, 4, n).astype(str)
    klass_effect = pd.Series(rng.normal(0, 0.7, d["klass"].nunique()), index=sorted(d["klass"].unique()))
    d["y"] = np.log(d["x"]) + rng.normal(size=40)[d["school"]] + klass_effect[d["klass"]].to_numpy()
    d["y"] += rng.normal(size=n)
    d.loc[rng.choice(n, 25, replace=False), "x"] = np.nan
    d.to_parquet(tmp_path / "nested.parquet")
    formula = "y ~ np.log(x) + I(x**2) + (1 | school/klass)"
    memory = mixedfx.fit(formula, d)
    duck = mixedfx.fit(formula, tmp_path / "nested.parquet", engine="duckdb")
    _same(duck, memory)
    assert duck.n_missing == memory.n_missing == 25


def test_weights_in_sql(exam_files, tmp_path):
    exam, _ = exam_files
    exam = exam.assign(w=np.random.default_rng(0).uniform(0.5, 2.0, len(exam)))
    exam.to_parquet(tmp_path / "w.parquet")
    memory = mixedfx.fit("gcse ~ lrt_groupc + (1 + lrt_groupc | school)", exam, weights="w")
    duck = mixedfx.fit(
        "gcse ~ lrt_groupc + (1 + lrt_groupc | school)", tmp_path / "w.parquet", weights="w", engine="duckdb"
    )
    _same(duck, memory)


def test_dask_local_cluster_equals_memory(exam_files):
    dd = pytest.importorskip("dask.dataframe")
    distributed = pytest.importorskip("dask.distributed")
    exam, _ = exam_files
    shuffled = exam.sample(frac=1.0, random_state=1).reset_index(drop=True)
    frame = dd.from_pandas(shuffled, npartitions=5)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster):
            dask_fit = mixedfx.fit(EXAM, frame)
    _same(dask_fit, mixedfx.fit(EXAM, exam))


def test_reduction_saves_and_refits_without_rows(exam_files, tmp_path):
    exam, _ = exam_files
    reduced = reduce_frame("gcse ~ lrt_groupc + (1 + lrt_groupc | school)", exam, chunk_rows=1000)
    path = reduced.save(tmp_path / "exam.reduced")
    again = load_reduced(path)
    for method in ("reml", "ml"):
        for structure in ("unstructured", "independent", "exchangeable"):
            memory = mixedfx.fit(
                "gcse ~ lrt_groupc + (1 + lrt_groupc | school)", exam, method=method, covariance={"school": structure}
            )
            _same(fit_reduced(again, method=method, covariance={"school": structure}), memory, rel=1e-7)


def test_refits_sharing_one_reduction_stay_independent(exam_files):
    """Fits on one ReducedData transform its statistics in place; each restores its own before use."""
    exam, _ = exam_files
    exam = exam.assign(lrt20=exam["lrt_groupc"] + 20.0)  # far from 0: the two structures' transforms differ
    formula = "gcse ~ lrt20 + (1 + lrt20 | school)"
    reduced = reduce_frame(formula, exam, chunk_rows=1000)
    first = fit_reduced(reduced, covariance={"school": "unstructured"})
    second = fit_reduced(reduced, covariance={"school": "independent"})
    # The first fit's lazy results are computed after the second changed the shared statistics.
    memory = mixedfx.fit(formula, exam, covariance={"school": "unstructured"})
    np.testing.assert_allclose(first.ranef()["school"].to_numpy(), memory.ranef()["school"].to_numpy(), atol=1e-7)
    _same(first, memory, rel=1e-7)
    _same(second, mixedfx.fit(formula, exam, covariance={"school": "independent"}), rel=1e-7)
    assert first.loglik > second.loglik  # unstructured nests independent


def test_crossed_factors_are_refused_with_advice(tmp_path, monkeypatch):
    import mixedfx.data.reduce.sqlscan as reduce_module

    pen = mixedfx.datasets.load_penicillin()
    pen.to_parquet(tmp_path / "pen.parquet")
    with pytest.raises(OptionError, match="crossed.*engine='memory'"):
        mixedfx.fit("diameter ~ 1 + (1 | plate) + (1 | sample)", tmp_path / "pen.parquet", engine="duckdb")
    monkeypatch.setattr(reduce_module, "SPILL_CLUSTERS", 5)  # the same check on the Parquet-spill path
    with pytest.raises(OptionError, match="crossed.*engine='memory'"):
        mixedfx.fit("diameter ~ 1 + (1 | plate) + (1 | sample)", tmp_path / "pen.parquet", engine="duckdb")
    with pytest.raises(OptionError, match="crossed"):
        reduce_frame("diameter ~ 1 + (1 | plate) + (1 | sample)", pen)


def test_row_based_features_say_what_to_do(exam_files):
    exam, folder = exam_files
    duck = mixedfx.fit("gcse ~ lrt_groupc + (1 | school)", str(folder / "*.parquet"), engine="duckdb")
    with pytest.raises(OptionError, match="reduced data"):
        duck.fitted()
    with pytest.raises(OptionError, match="reduced data"):
        duck.robust_vcov()
    assert duck.predict(exam.head(3))["prediction"].notna().all()  # new data still work
    assert "Mixed-effects REML regression" in duck.summary()


def test_cli_engine_duckdb(exam_files, capsys):
    _, folder = exam_files
    code = main(["fit", str(folder / "*.parquet"), "gcse ~ lrt_groupc + (1 | school)", "--engine", "duckdb", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nobs"] == 4059 and out["ngroups"] == {"school": 65}
    assert reduce_duckdb  # the SQL reducer is importable on its own


def test_unknown_variables_named_by_every_engine(exam_files):
    from mixedfx.errors import DataError

    exam, folder = exam_files
    with pytest.raises(DataError, match="Unknown variable 'lrt_grupc'.*Did you mean 'lrt_groupc'"):
        mixedfx.fit("gcse ~ lrt_grupc + (1 | school)", str(folder / "*.parquet"), engine="duckdb")
    with pytest.raises(DataError, match="Unknown variable 'schol'"):
        reduce_frame("gcse ~ lrt_groupc + (1 | schol)", exam)


def test_duckdb_one_pass_moments_keep_precision_with_offsets_and_odd_columns(tmp_path):
    """The global cross-products come from columns centred on a sample's means: a year-like
    offset, a model without intercept and a column constant in the sample must all match."""
    rng = np.random.default_rng(8)
    n = 6000
    g = np.repeat(np.arange(300), 20)
    year = 2.0e6 + rng.normal(size=n)  # offset a million times the spread
    late = np.where(np.arange(n) < 3000, 0.0, rng.normal(size=n))  # constant (0) in the sampled first rows
    y = 1 + 0.3 * (year - 2.0e6) + 0.5 * late + rng.normal(size=300)[g] + rng.normal(size=n)
    data = pd.DataFrame({"y": y, "year": year, "late": late, "g": g})
    data.to_parquet(tmp_path / "d.parquet")
    for formula in ("y ~ year + late + (1 | g)", "y ~ 0 + year + late + (1 | g)", "y ~ late + year + (1 + late | g)"):
        _same(mixedfx.fit(formula, str(tmp_path / "d.parquet"), engine="duckdb"), mixedfx.fit(formula, data), rel=1e-7)


def test_saved_reductions_print_the_same_tables(exam_files, tmp_path):
    exam, files = exam_files
    for formula in ("gcse ~ lrt_groupc + (1 + lrt_groupc | school)", "gcse ~ lrt_groupc + (1 | schgend/school)"):
        reduced = reduce_duckdb(formula, files)
        fresh = fit_reduced(reduced)
        again = fit_reduced(load_reduced(reduced.save(tmp_path / "r.npz")))
        assert str(again.summary()) == str(fresh.summary())
        pd.testing.assert_frame_equal(again.re_table(), fresh.re_table())


def test_loading_a_reduction_runs_nothing(tmp_path):
    """A saved reduction is plain arrays and JSON: a pickle (which could run code) is refused unread."""
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.reduced"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(DataError, match="is not a saved mixedfx reduction"):
        load_reduced(path)
    assert not marker.exists()


def test_saved_reductions_keep_the_expanded_dot_and_check_it(tmp_path):
    data = mixedfx.datasets.load_sleepstudy()
    reduced = reduce_frame("Reaction ~ . + offset(Days / 2) + (1 | Subject)", data.assign(z=np.arange(180) % 5))
    path = reduced.save(tmp_path / "r.npz")
    again = fit_reduced(load_reduced(path))
    assert list(again.fixef.index) == ["(Intercept)", "z"]  # Days is the offset's
    assert again.loglik == pytest.approx(fit_reduced(reduced).loglik, abs=1e-10)
    with np.load(path, allow_pickle=False) as archive:  # a tampered expansion is checked like any formula
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(str(arrays["meta"]))
    meta["fixed"] = "I(__import__('os'))"
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "evil.npz", **arrays)
    with pytest.raises(FormulaError, match="__import__"):
        load_reduced(tmp_path / "evil.npz")


def test_reductions_saved_with_a_dense_outer_block_still_load(exam_files, tmp_path):
    """Files written before the outer factors' block was kept sparse hold it dense as ``rest_ZtZ``."""
    exam, _ = exam_files
    formula = "gcse ~ lrt_groupc + (1 | schgend/school)"
    path = reduce_frame(formula, exam).save(tmp_path / "new.npz")
    with np.load(path, allow_pickle=False) as saved:
        arrays = {k: saved[k] for k in saved.files}
    shape = tuple(arrays.pop("rest_ZtZ_shape"))
    parts = (arrays.pop("rest_ZtZ_data"), arrays.pop("rest_ZtZ_indices"), arrays.pop("rest_ZtZ_indptr"))
    arrays["rest_ZtZ"] = sp.csr_matrix(parts, shape=shape).toarray()
    old = tmp_path / "old.npz"
    with open(old, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    _same(fit_reduced(load_reduced(old)), fit_reduced(load_reduced(path)), rel=1e-12)
