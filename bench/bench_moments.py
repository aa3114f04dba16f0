"""Benchmark the method-of-moments engine on crossed random intercepts at scale.

    python bench/bench_moments.py [--cases exact-check movielens huge] [--replicates 20] [--engine memory|duckdb]

Cases (``y = 1 + 0.5 x + u_a + v_b + e``, variances 0.64, 0.25 and 1; level sizes skewed: a's
and b's levels drawn from Zipf-like laws, as users and movies in ratings data):

- ``exact-check``: 10^6 rows, 10^5 x 2,000 levels: moments against mixedfx's exact ML fit;
- ``movielens``: 2.5 * 10^7 rows, 1.6 * 10^5 users x 6 * 10^4 movies (MovieLens 25M's size);
- ``huge``: 10^7 rows, 10^6 x 10^5 levels.

Each case runs in a fresh process; the table gives the fit's wall time (design, moments and GLS;
the bootstrap of the components' SEs timed apart), the process's peak RSS, and each component
with its bootstrap SE against the truth (and the exact fit where there is one).  With
``--engine duckdb`` another process first writes the rows to Parquet (not timed); the fit's
process reads the files with DuckDB, which reduces them to cells, and never holds the rows.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from summary import machine_line, run_in_child  # noqa: E402

TRUTH = {"a": 0.64, "b": 0.25, "Residual": 1.0}
CASES = {
    "exact-check": (1_000_000, 100_000, 2_000),
    "movielens": (25_000_000, 160_000, 60_000),
    "huge": (10_000_000, 1_000_000, 100_000),
}


def skewed_levels(rng: np.random.Generator, n: int, m: int, exponent: float) -> np.ndarray:
    """n draws of m levels with probabilities proportional to rank^-exponent (every level kept by a first pass)."""
    weights = np.arange(1, m + 1, dtype=float) ** -exponent
    codes = rng.choice(m, size=n - m, p=weights / weights.sum())
    return rng.permutation(np.concatenate([np.arange(m), codes]))


def make_data(n: int, m_a: int, m_b: int, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = skewed_levels(rng, n, m_a, 0.6), skewed_levels(rng, n, m_b, 0.9)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + 0.8 * rng.normal(size=m_a)[a] + 0.5 * rng.normal(size=m_b)[b] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "a": a.astype(np.int32), "b": b.astype(np.int32)})


def _write_parquet(case: str, folder: str, queue) -> None:
    """The case's rows as four Parquet files (in a process of its own: its memory is not the fit's)."""
    data = make_data(*CASES[case])
    bounds = np.linspace(0, len(data), 5).astype(int)
    for i in range(4):
        data.iloc[bounds[i] : bounds[i + 1]].to_parquet(Path(folder) / f"part{i}.parquet", index=False)
    queue.put(True)


def _child(case: str, replicates: int, folder: str | None, queue) -> None:
    import mixedfx

    data = make_data(*CASES[case]) if folder is None else f"{folder}/*.parquet"
    data_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    engine = "memory" if folder is None else "duckdb"
    fit = mixedfx.fit("y ~ x + (1 | a) + (1 | b)", data, method="moments", engine=engine)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    table = fit.re_table(replicates=replicates)
    boot = time.perf_counter() - start
    exact = None
    if case == "exact-check":
        ml = mixedfx.fit("y ~ x + (1 | a) + (1 | b)", make_data(*CASES[case]), method="ml")
        exact = dict(zip(ml.varcorr["group"], ml.varcorr["vcov"]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((seconds, boot, peak, data_peak, table.to_dict(orient="records"), fit.fixef.to_dict(), exact))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--engine", choices=["memory", "duckdb"], default="memory")
    args = parser.parse_args()
    print(machine_line(False))
    for case in args.cases:
        n, m_a, m_b = CASES[case]
        with tempfile.TemporaryDirectory(prefix="bench-moments-") as folder:
            if args.engine == "duckdb":
                run_in_child(_write_parquet, (case, folder), args.timeout)
            out = run_in_child(
                _child, (case, args.replicates, folder if args.engine == "duckdb" else None), args.timeout
            )
        if isinstance(out, str):
            print(f"{case}: {out}")
            continue
        seconds, boot, peak, data_peak, table, fixef, exact = out
        print(
            f"\n{case} ({args.engine}): {n:,} rows, {m_a:,} x {m_b:,} levels: fit {seconds:.1f} s, bootstrap of "
            f"{args.replicates} replicates {boot:.1f} s, peak RSS {peak:,.0f} MB ({data_peak:,.0f} MB after "
            "making the data)"
        )
        print(f"  beta: {', '.join(f'{k} {v:.5f}' for k, v in fixef.items())} (truth 1, 0.5)")
        for row in table:
            group, estimate, se = row["group"], row["estimate"], row["se"]
            z = (estimate - TRUTH[group]) / se
            line = f"  var({group}) {estimate:.5f} (SE {se:.5f}): truth {TRUTH[group]}, z {z:+.2f}"
            if exact:
                line += f"; exact ML {exact[group]:.5f}, z {(estimate - exact[group]) / se:+.2f}"
            print(line)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
