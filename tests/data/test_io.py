"""The same model from a DataFrame, a CSV, a Stata .dta and a Parquet file gives identical results."""

import pytest

import mixedfx
from mixedfx.data.io import read_data
from mixedfx.errors import DataError

FORMULA = "Reaction ~ Days + (Days | Subject)"


def test_dataframe_csv_dta_parquet_identical(sleepstudy, tmp_path):
    frame = mixedfx.fit(FORMULA, sleepstudy)
    sleepstudy.to_csv(tmp_path / "s.csv", index=False)
    sleepstudy.to_stata(tmp_path / "s.dta", write_index=False)
    sleepstudy.to_parquet(tmp_path / "s.parquet")
    semicolon = tmp_path / "s_semicolon.csv"
    sleepstudy.to_csv(semicolon, index=False, sep=";")
    for path in ["s.csv", "s.dta", "s.parquet", "s_semicolon.csv"]:
        fit = mixedfx.fit(FORMULA, tmp_path / path)
        assert fit.loglik == frame.loglik, path
        assert (fit.fixef == frame.fixef).all(), path
        assert (fit.theta == frame.theta).all(), path


def test_unreadable_files_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_data(tmp_path / "missing.csv")
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown file type '.xlsx'"):
        read_data(tmp_path / "data.xlsx")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="Cannot read"):
        read_data(tmp_path / "broken.parquet")
    with pytest.raises(DataError, match="directory"):
        read_data(tmp_path)


def test_large_text_files_show_progress(tmp_path, capsys, monkeypatch, sleepstudy):
    import mixedfx.data.io as io_module

    path = tmp_path / "big.csv"
    sleepstudy.to_csv(path, index=False)
    monkeypatch.setattr(io_module, "PROGRESS_BYTES", 100)
    frame = read_data(path, progress=True)
    assert "reading big.csv: 100.0%" in capsys.readouterr().err
    assert frame.shape == sleepstudy.shape
