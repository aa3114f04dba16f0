"""Benchmark mixedfx against the peers that are installed, on the same models and data.

    python bench/run.py [--cases schools children growth small-clusters insteval crossed nested crossed-5k crossed-10k]
                        [--sizes 10000 100000 1000000] [--repeats 3] [--timeout 600]
                        [--statsmodels-max 100000]

Peers: statsmodels ``MixedLM`` (two-level models only), the PyPI package ``mixedlm`` (lme4
ported to Python with a Rust core) and R's lme4 through ``Rscript`` when R and lme4 are
installed.  Every fit runs in a fresh process with the data generated (or read) before the
clock starts; the table shows the median wall time of ``--repeats`` runs, the peak memory
(the child's peak RSS; for R, the peak of R's own heap from ``gc()``), the ratio to mixedfx
and the difference in log-likelihood from mixedfx's (positive: the peer found a better optimum).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from summary import has_lme4, machine_line, repeated, rscript_json, run_in_child, summarise  # noqa: E402


# ---------------------------------------------------------------------------- cases
def _growth(n_rows: int) -> pd.DataFrame:
    from synthetic import growth_data

    return growth_data(n_rows)


def _small_clusters(n_clusters: int = 1_000_000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 6, n_clusters)
    g = np.repeat(np.arange(n_clusters), sizes)
    x = rng.normal(size=g.size)
    y = 1 + 0.5 * x + rng.normal(size=n_clusters)[g] + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def _crossed(n_rows: int = 1_000_000, seed: int = 0, levels_b: int = 1_000) -> pd.DataFrame:
    """10^6 rows, a with 10^5 levels crossed with b (1,000 levels; issue 19's cases: 5,000 and 10,000)."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 100_000, n_rows), rng.integers(0, levels_b, n_rows)
    x = rng.normal(size=n_rows)
    y = 1 + 0.5 * x + rng.normal(size=100_000)[a] + 0.5 * rng.normal(size=levels_b)[b] + rng.normal(size=n_rows)
    return pd.DataFrame({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str)})


def _nested(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    school = np.repeat(np.arange(1_000), 100)
    klass = np.repeat(np.arange(10_000), 10)
    x = rng.normal(size=school.size)
    y = 1 + 0.5 * x + rng.normal(size=1_000)[school] + 0.7 * rng.normal(size=10_000)[klass] + rng.normal(size=x.size)
    return pd.DataFrame({"y": y, "x": x, "school": school, "klass": klass})


def _exam() -> pd.DataFrame:
    import mixedfx

    return mixedfx.datasets.load_exam()


def _asian() -> pd.DataFrame:
    import mixedfx

    return mixedfx.datasets.load_asian()


def _insteval() -> pd.DataFrame:
    return pd.read_parquet(HERE / "data" / "insteval.parquet")


GROWTH = "y ~ t + x1 + x2 + x3 + (1 + t | g)"
CASES = {
    # name: (data loader, lme4 formula, REML, statsmodels spec (fixed, group, re_formula) or None)
    "schools": (
        _exam,
        "gcse ~ lrt_groupc + (1 + lrt_groupc | school)",
        True,
        ("gcse ~ lrt_groupc", "school", "~lrt_groupc"),
    ),
    "children": (
        _asian,
        "weight ~ age_c + age_sp + girl + age_c_girl + age_sp_girl + (1 | id)",
        False,
        ("weight ~ age_c + age_sp + girl + age_c_girl + age_sp_girl", "id", None),
    ),
    "small-clusters": (_small_clusters, "y ~ x + (1 | g)", True, ("y ~ x", "g", None)),
    "insteval": (_insteval, "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)", True, None),
    "crossed": (_crossed, "y ~ x + (1 | a) + (1 | b)", True, None),
    # Not run by default (minutes each for the peers): the dense 5,000 and 10,000-level Schur complements.
    "crossed-5k": (partial(_crossed, levels_b=5_000), "y ~ x + (1 | a) + (1 | b)", True, None),
    "crossed-10k": (partial(_crossed, levels_b=10_000), "y ~ x + (1 | a) + (1 | b)", True, None),
    "nested": (_nested, "y ~ x + (1 | school/klass)", True, None),
}


# ---------------------------------------------------------------------------- tools (run in a child)
def _loglik_number(value) -> float:
    for attr in ("value", "logLik", "loglik"):
        if hasattr(value, attr):
            return float(getattr(value, attr))
    try:
        return float(value)
    except (TypeError, ValueError):
        return float(str(value).split()[2])


def _run_tool(tool: str, loader, formula: str, reml: bool, sm_spec) -> tuple[float, float]:
    data = loader()
    if tool == "mixedfx":
        import warnings

        import mixedfx

        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = mixedfx.fit(formula, data, method="reml" if reml else "ml")
        return time.perf_counter() - start, fit.loglik
    if tool == "mixedlm":
        import mixedlm

        start = time.perf_counter()
        fit = mixedlm.lmer(formula, data, REML=reml)
        return time.perf_counter() - start, _loglik_number(fit.logLik())
    if tool == "statsmodels":
        import warnings

        import statsmodels.formula.api as smf

        fixed, group, re_formula = sm_spec
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = smf.mixedlm(fixed, data, groups=data[group], re_formula=re_formula)
            fit = model.fit(reml=reml)
        return time.perf_counter() - start, float(fit.llf)
    raise ValueError(tool)


def _child(tool, case, size, queue) -> None:
    loader, formula, reml, sm_spec = CASES.get(case, (None, GROWTH, True, ("y ~ t + x1 + x2 + x3", "g", "~t")))
    if case == "growth":
        loader = lambda: _growth(size)  # noqa: E731
    seconds, loglik = _run_tool(tool, loader, formula, reml, sm_spec)
    queue.put((seconds, loglik, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def _run_python(tool: str, case: str, size: int, timeout: float):
    return run_in_child(_child, (tool, case, size), timeout)


R_SCRIPT = r"""
suppressMessages(library(lme4)); args <- commandArgs(TRUE)
d <- read.csv(args[1]); for (v in strsplit(args[4], ",")[[1]]) if (nzchar(v)) d[[v]] <- factor(d[[v]])
invisible(gc(reset = TRUE)); t0 <- proc.time()[["elapsed"]]
m <- lmer(as.formula(args[2]), data = d, REML = as.logical(args[3]))
el <- proc.time()[["elapsed"]] - t0
cat(sprintf('{"seconds": %.6f, "loglik": %.10f, "mb": %.1f}\n', el, as.numeric(logLik(m)), sum(gc()[, 6])))
"""


def _run_r(case: str, size: int, timeout: float, csv_cache: dict):
    loader, formula, reml, _ = CASES.get(case, (None, GROWTH, True, None))
    if case == "growth":
        loader = lambda: _growth(size)  # noqa: E731
    key = (case, size)
    if key not in csv_cache:
        data = loader()
        factors = [
            c for c in data.columns if data[c].dtype == object or str(data[c].dtype) in ("string", "str", "category")
        ]
        factors = sorted(set(factors) | set(_grouping_columns(formula)))
        path = Path(tempfile.mkdtemp()) / "data.csv"
        data.to_csv(path, index=False)
        csv_cache[key] = (path, factors)
    path, factors = csv_cache[key]
    script = Path(tempfile.mkdtemp()) / "fit.R"
    script.write_text(R_SCRIPT)
    res = rscript_json(script, [str(path), formula, "TRUE" if reml else "FALSE", ",".join(factors)], timeout)
    if isinstance(res, str):
        return res
    return res["seconds"], res["loglik"], res["mb"]


def _grouping_columns(formula: str) -> list[str]:
    from mixedfx.spec.formula import parse_formula

    return sorted({f for term in parse_formula(formula).random for f in term.factor})


# ---------------------------------------------------------------------------- driver
def _one_run(tool: str, case: str, size: int, timeout: float, csv_cache: dict):
    return _run_r(case, size, timeout, csv_cache) if tool == "lme4" else _run_python(tool, case, size, timeout)


def _tools(case: str, size: int, args, has_r: bool) -> list[str]:
    tools = ["mixedfx"]
    try:
        import mixedlm  # noqa: F401

        tools.append("mixedlm")
    except ImportError:
        pass
    sm_ok = CASES.get(case, (None, None, None, True))[3] is not None
    if sm_ok and (case != "growth" or size <= args.statsmodels_max) and case != "small-clusters":
        tools.append("statsmodels")
    if has_r:
        tools.append("lme4")
    return tools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["schools", "children", "growth", "small-clusters", "insteval", "crossed", "nested"],
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--statsmodels-max", type=int, default=100_000)
    args = parser.parse_args()
    has_r = has_lme4()
    print(machine_line(has_r))
    print(f"{'case':>16} {'tool':>12} {'median s':>9} {'peak MB':>8} {'ratio':>8} {'dloglik':>10}")
    csv_cache: dict = {}
    for case in args.cases:
        for size in args.sizes if case == "growth" else [0]:
            label = f"growth {size:.0e}" if case == "growth" else case
            base = None
            for tool in _tools(case, size, args, has_r):
                runs = repeated(partial(_one_run, tool, case, size, args.timeout, csv_cache), args.repeats)
                if isinstance(runs, str):
                    print(f"{label:>16} {tool:>12} {runs:>9}")
                    continue
                seconds, _, peak, ratio, dloglik, base = summarise(runs, base)
                print(f"{label:>16} {tool:>12} {seconds:>9.3f} {peak:>8.0f} {ratio:>7.1f}x {dloglik:>10.2e}")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
