"""Reading data sets from files (CSV, Stata .dta, Parquet) into pandas."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pandas as pd

from ..errors import DataError

SUPPORTED = (".csv", ".tsv", ".txt", ".dta", ".parquet", ".pq")

#: Read as missing in text files besides pandas' defaults (NA, NaN, N/A, null, empty): Stata's ".".
STATA_MISSING = ["."]


def _sniff_delimiter(path: Path) -> str:
    """Guess the delimiter of a text table from its first lines (comma, semicolon, tab, pipe)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        sample = handle.read(64 * 1024)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


#: Text files larger than this are read in chunks with a progress line on stderr.
PROGRESS_BYTES = 64 * 1024 * 1024


def _read_in_chunks(path: Path, delimiter: str, encoding: str) -> pd.DataFrame:
    """Read a large text table chunk by chunk, reporting the share of the file read."""
    total = path.stat().st_size
    chunks = []
    with open(path, "rb") as handle:
        reader = pd.read_csv(handle, sep=delimiter, encoding=encoding, chunksize=500_000, na_values=STATA_MISSING)
        for chunk in reader:
            chunks.append(chunk)
            print(f"\rreading {path.name}: {min(handle.tell() / total, 1.0):6.1%}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return pd.concat(chunks, ignore_index=True)


def _read_text_table(path: Path, progress: bool) -> pd.DataFrame:
    """Read a delimited text file, detecting the delimiter and falling back to Latin-1."""
    delimiter = _sniff_delimiter(path)
    big = progress and path.stat().st_size > PROGRESS_BYTES
    for encoding in ("utf-8", "latin-1"):
        try:
            if big:
                return _read_in_chunks(path, delimiter, encoding)
            return pd.read_csv(path, sep=delimiter, encoding=encoding, na_values=STATA_MISSING)
        except UnicodeDecodeError:
            continue
    raise DataError(f"Cannot decode {str(path)!r} as UTF-8 or Latin-1 text; re-save it as UTF-8.")


def read_data(source: str | Path | pd.DataFrame, progress: bool = False) -> pd.DataFrame:
    """Return ``source`` as a DataFrame: a DataFrame as it is, or a file read by its extension.

    Supported files: ``.csv``/``.tsv``/``.txt`` (delimiter detected; UTF-8, else Latin-1),
    ``.dta`` (Stata), ``.parquet``.  With ``progress``, text files over 64 MiB report how much
    has been read.  Raises :class:`DataError` naming the file when it cannot be read.
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
        return _read_text_table(path, progress)
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"Cannot read {str(path)!r} as {suffix} data: {first_line}") from exc


def check_output_path(path: str | Path, inputs: tuple[str | Path, ...] = ()) -> Path:
    """``path`` as a file that may be written: not a directory, not one of ``inputs``, writable.

    Checked before any work is done, so that a long fit does not end in a failed write, and
    a report can never overwrite the data it was made from.
    """
    target = Path(path)
    if target.is_dir():
        raise DataError(f"Output {str(target)!r} is a directory; give a file name such as report.html.")
    resolved = target.resolve()
    for source in inputs:
        if Path(source).exists() and Path(source).resolve() == resolved:
            raise DataError(f"Output {str(target)!r} is the input data file; choose another output name.")
    folder = resolved.parent
    if not folder.is_dir():
        raise DataError(f"Cannot write {str(target)!r}: the folder {str(folder)!r} does not exist.")
    if (target.exists() and not os.access(target, os.W_OK)) or not os.access(folder, os.W_OK):
        raise DataError(f"Cannot write {str(target)!r}: permission denied.")
    return target
