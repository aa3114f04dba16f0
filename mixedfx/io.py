"""Reading data sets from files (CSV, Stata .dta, Parquet) into pandas."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from .errors import DataError

SUPPORTED = (".csv", ".tsv", ".txt", ".dta", ".parquet", ".pq")


def _sniff_delimiter(path: Path) -> str:
    """Guess the delimiter of a text table from its first lines (comma, semicolon, tab, pipe)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        sample = handle.read(64 * 1024)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _read_text_table(path: Path) -> pd.DataFrame:
    """Read a delimited text file, detecting the delimiter and falling back to Latin-1."""
    delimiter = _sniff_delimiter(path)
    try:
        return pd.read_csv(path, sep=delimiter)
    except UnicodeDecodeError:
        return pd.read_csv(path, sep=delimiter, encoding="latin-1")


def read_data(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Return ``source`` as a DataFrame: a DataFrame as it is, or a file read by its extension.

    Supported files: ``.csv``/``.tsv``/``.txt`` (delimiter detected), ``.dta`` (Stata),
    ``.parquet``.  Raises :class:`DataError` naming the file when it cannot be read.
    """
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.exists():
        raise DataError(f"Data file not found: {str(path)!r}.")
    if path.is_dir():
        raise DataError(f"{str(path)!r} is a directory; give a .csv, .dta or .parquet file.")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise DataError(
            f"Cannot read {str(path)!r}: unknown file type {suffix or '(none)'!r}; "
            "use a .csv, .tsv, .dta or .parquet file."
        )
    try:
        if suffix == ".dta":
            return pd.read_stata(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return _read_text_table(path)
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"Cannot read {str(path)!r} as {suffix} data: {first_line}") from exc
