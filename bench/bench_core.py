"""Time mixedfx against statsmodels' MixedLM on synthetic two-level random-slope data.

    python bench/bench_core.py [--sizes 10000 100000 1000000] [--repeats 3] [--timeout 900]

Model: ``y ~ t + x1 + x2 + x3 + (1 + t | g)``, REML, 10 rows per group.  Each fit runs in a
fresh child process (so peak memory is the child's own), the data are generated there
before the clock starts, and the median wall time of ``--repeats`` runs is reported with
the ratio peer / mixedfx and the difference in REML log-likelihood.  A peer that exceeds
``--timeout`` seconds is reported as such.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from summary import run_in_child, summarise  # noqa: E402


def _fit_mixedfx(n_rows: int) -> float:
    import mixedfx
    from synthetic import FORMULA, growth_data

    data = growth_data(n_rows)
    start = time.perf_counter()
    fit = mixedfx.fit(FORMULA, data, method="reml")
    elapsed = time.perf_counter() - start
    return elapsed, fit.loglik


def _fit_statsmodels(n_rows: int) -> float:
    import warnings

    import statsmodels.formula.api as smf

    from synthetic import growth_data

    data = growth_data(n_rows)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = smf.mixedlm("y ~ t + x1 + x2 + x3", data, groups=data["g"], re_formula="~t")
        fit = model.fit(reml=True)
    elapsed = time.perf_counter() - start
    return elapsed, float(fit.llf)


TOOLS = {"mixedfx": _fit_mixedfx, "statsmodels": _fit_statsmodels}


def _child(tool: str, n_rows: int, queue: mp.Queue) -> None:
    elapsed, loglik = TOOLS[tool](n_rows)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((elapsed, loglik, peak_mb))


def run_once(tool: str, n_rows: int, timeout: float) -> tuple[float, float, float] | None:
    """(seconds, loglik, peak MB) of one fit in a fresh process, or None on timeout."""
    out = run_in_child(_child, (tool, n_rows), timeout)
    return None if isinstance(out, str) else out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per peer fit")
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS))
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'rows':>10} {'tool':>12} {'median s':>10} {'peak MB':>9} {'ratio':>8} {'dloglik':>10}")
    for n_rows in args.sizes:
        base = None
        for tool in args.tools:
            runs = []
            for _ in range(args.repeats):
                out = run_once(tool, n_rows, args.timeout)
                if out is None:
                    break
                runs.append(out)
            if not runs:
                print(f"{n_rows:>10} {tool:>12} {'> ' + str(int(args.timeout)) + ' s':>10}")
                continue
            seconds, _, peak, ratio, dloglik, base = summarise(runs, base)
            print(f"{n_rows:>10} {tool:>12} {seconds:>10.3f} {peak:>9.0f} {ratio:>7.1f}x {dloglik:>10.2e}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
