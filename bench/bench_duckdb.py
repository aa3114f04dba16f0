"""Out-of-core benchmark: fit 10^8 rows from Parquet with the DuckDB engine.

    python bench/bench_duckdb.py [--rows 100000000] [--dir bench/out/parquet] [--memory-rows 10000000]

Generates the two-level random-slope data of ``synthetic.growth_data`` (10 rows per
cluster) as Parquet files of 10^7 rows, fits ``y ~ t + x1 + x2 + x3 + (1 + t | g)`` with
``engine="duckdb"`` in a fresh process, and reports wall time and the child's peak resident
memory.  For comparison it fits the in-memory engine on the first ``--memory-rows`` rows
(the largest size that fits comfortably) and on the same rows through DuckDB.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

FILE_ROWS = 10_000_000


def generate(folder: Path, rows: int) -> list[Path]:
    """Write ``rows`` rows in files of 10^7 rows (cluster ids continue across files)."""
    from synthetic import growth_data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, rows, FILE_ROWS)):
        path = folder / f"part{i:03d}.parquet"
        n = min(FILE_ROWS, rows - start)
        if not path.exists():
            frame = growth_data(n, seed=i)
            frame["g"] += start // 10
            frame.to_parquet(path, index=False)
        paths.append(path)
    return paths


def _child(kind: str, paths: list[str], queue: mp.Queue) -> None:
    import duckdb
    import pandas as pd

    import mixedfx
    from mixedfx.reduce import fit_reduced, reduce_duckdb
    from synthetic import FORMULA

    start = time.perf_counter()
    if kind == "duckdb":
        import tempfile

        spill = tempfile.mkdtemp(prefix="mixedfx-duckdb-")
        con = duckdb.connect(config={"memory_limit": "1GB", "threads": 2, "temp_directory": spill})
        fit = fit_reduced(reduce_duckdb(FORMULA, paths, connection=con))
    else:
        data = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
        start = time.perf_counter()
        fit = mixedfx.fit(FORMULA, data)
    elapsed = time.perf_counter() - start
    queue.put((elapsed, fit.loglik, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def run(kind: str, paths: list[Path]) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(kind, [str(p) for p in paths], queue))
    proc.start()
    proc.join()
    if queue.empty():
        raise RuntimeError(f"{kind} fit failed (exit code {proc.exitcode})")
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000_000)
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "out" / "parquet")
    parser.add_argument("--memory-rows", type=int, default=10_000_000)
    args = parser.parse_args()
    t0 = time.perf_counter()
    paths = generate(args.dir, args.rows)
    print(f"data: {args.rows:,} rows in {len(paths)} Parquet files ({time.perf_counter() - t0:.0f} s to generate)")
    print(f"{'engine':>8} {'rows':>12} {'wall s':>8} {'peak MB':>8} {'loglik':>18}")
    files_small = paths[: max(1, args.memory_rows // FILE_ROWS)]
    rows_small = min(args.rows, len(files_small) * FILE_ROWS)
    for kind, files, rows in [
        ("memory", files_small, rows_small),
        ("duckdb", files_small, rows_small),
        ("duckdb", paths, args.rows),
    ]:
        if kind == "duckdb" and rows == args.rows and files is files_small and len(paths) == len(files_small):
            continue
        seconds, loglik, peak = run(kind, files)
        print(f"{kind:>8} {rows:>12,} {seconds:>8.1f} {peak:>8.0f} {loglik:>18.4f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
