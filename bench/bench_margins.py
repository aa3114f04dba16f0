"""Benchmark mixedfx's margins against R's emmeans on large data.

    python bench/bench_margins.py [--rows 100000 1000000] [--repeats 3] [--timeout 600]

The model ``y ~ x * f + (1 | g)`` (f a three-level factor, g 10^4 clusters) is fitted once per
tool, before the clock starts; the clock then times the estimated marginal means of ``f`` with
their Holm-adjusted pairwise comparisons (both tools), and separately (mixedfx) the predictive
margins of ``f`` and the average marginal effect of ``x`` by ``f``, which visit every row.  Peak memory is the
child's peak RSS for mixedfx and R's own heap high-water mark (``gc()``) after the margins for
emmeans (whose reference grid is small here; its documented failures at 10^5-10^6 rows come
with ``weights = "cells"``/``nuisance`` grids and ``regrid``).  Both tools' margins of ``f`` are
printed so their agreement can be read off.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from summary import has_lme4, machine_line, repeated, rscript_json, run_in_child  # noqa: E402

FORMULA = "y ~ x * f + (1 | g)"


def make_data(n_rows: int, seed: int = 7) -> pd.DataFrame:
    """``y = 1 + 0.5 x + 0.3 [f = b] - 0.2 x [f = c] + u_g + e``, u and e standard normal."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 10_000, n_rows)
    f = rng.choice(np.array(["a", "b", "c"]), n_rows)
    x = rng.normal(size=n_rows)
    y = 1 + 0.5 * x + 0.3 * (f == "b") - 0.2 * x * (f == "c") + rng.normal(size=10_000)[g] + rng.normal(size=n_rows)
    return pd.DataFrame({"y": y, "x": x, "f": f, "g": g.astype(str)})


def _mixedfx_child(n_rows: int, queue) -> None:
    import mixedfx

    fit = mixedfx.fit(FORMULA, make_data(n_rows))
    start = time.perf_counter()
    means = fit.emmeans("f")
    fit.contrast("pw.f", adjust="holm")
    grid_seconds = time.perf_counter() - start
    start = time.perf_counter()
    fit.margins("f")
    fit.margins(dydx="x", over="f")
    rows_seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((grid_seconds, peak, means.table["estimate"].tolist(), means.table["se"].tolist(), rows_seconds))


R_SCRIPT = r"""
suppressMessages({library(lme4); library(emmeans)}); args <- commandArgs(TRUE)
emm_options(lmer.df = "asymptotic")
d <- read.csv(args[1]); d$f <- factor(d$f); d$g <- factor(d$g)
m <- lmer(y ~ x * f + (1 | g), data = d)
invisible(gc(reset = TRUE)); t0 <- proc.time()[["elapsed"]]
e <- emmeans(m, ~ f); p <- summary(pairs(e, adjust = "holm"))
el <- proc.time()[["elapsed"]] - t0; s <- summary(e)
cat(sprintf('{"seconds": %.6f, "mb": %.1f, "estimate": [%s], "se": [%s]}\n', el, sum(gc()[, 6]),
            paste(s$emmean, collapse = ","), paste(s$SE, collapse = ",")))
"""


def _emmeans(n_rows: int, timeout: float):
    folder = Path(tempfile.mkdtemp())
    make_data(n_rows).to_csv(folder / "data.csv", index=False)
    (folder / "margins.R").write_text(R_SCRIPT)
    res = rscript_json(folder / "margins.R", [str(folder / "data.csv")], timeout)
    if isinstance(res, str):
        return res
    return res["seconds"], res["mb"], res["estimate"], res["se"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    has_r = has_lme4() and subprocess.run(["Rscript", "-e", "library(emmeans)"], capture_output=True).returncode == 0
    print(machine_line(has_r) + f"; emmeans: {'yes' if has_r else 'no'}")
    print("emmeans s: marginal means of f and their Holm pairs; row margins s: predictive margins of f and the")
    print("AME of x by f over every row (mixedfx only); peak MB: mixedfx's whole process (fit included), R's heap")
    print(
        f"{'rows':>9} {'tool':>8} {'emmeans s':>9} {'ratio':>7} {'row margins s':>13} {'peak MB':>8}  means of f (SE)"
    )
    for n_rows in args.rows:
        tools = [("mixedfx", partial(run_in_child, _mixedfx_child, (n_rows,), args.timeout))]
        if has_r:
            tools.append(("emmeans", partial(_emmeans, n_rows, args.timeout)))
        base = None
        for name, run in tools:
            runs = repeated(run, args.repeats)
            if isinstance(runs, str):
                print(f"{n_rows:>9} {name:>8} {runs:>9}")
                continue
            seconds = float(np.median([r[0] for r in runs]))
            peak = max(r[1] for r in runs)
            base = base or seconds
            cells = ", ".join(f"{e:.5f} ({s:.5f})" for e, s in zip(runs[0][2], runs[0][3]))
            rows = f"{np.median([r[4] for r in runs]):.3f}" if len(runs[0]) > 4 else "-"
            print(f"{n_rows:>9} {name:>8} {seconds:>9.3f} {seconds / base:>6.1f}x {rows:>13} {peak:>8.0f}  {cells}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
