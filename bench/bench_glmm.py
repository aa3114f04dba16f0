"""Benchmark mixedfx's GLMMs against glmer in lme4 and mixedlm, with statsmodels' variational Bayes for time.

    python bench/bench_glmm.py [--cases cbpp verbagg grouseticks contraception-agq7
                                bernoulli-laplace bernoulli-agq7] [--repeats 3] [--timeout 600]
                               [--tools mixedfx mixedlm lme4 statsmodels]

Peers, each in a fresh process with the data made before the clock starts: R's lme4 ``glmer``
through ``Rscript`` (when R and lme4 are installed), the PyPI package ``mixedlm`` (lme4's
``glmer`` ported to Python with a Rust core; when installed) and statsmodels'
``BinomialBayesMixedGLM.fit_vb`` (a variational approximation with no likelihood, so for time
only; binary responses with a dense random-effects design, so small data only).  The table shows
the median wall time of ``--repeats`` runs, the peak memory (the child's peak RSS; for R, R's own
heap from ``gc()``), the ratio to mixedfx and the log-likelihood difference from mixedfx's
(positive: the peer found a higher one).  Every tool fits the same formula: binomial responses as
proportions with the trials as weights (mixedlm has no ``cbind``), ``age^2`` as a column.

The synthetic Bernoulli cases have 10^6 rows in 10^5 clusters:
``logit P(y = 1) = -0.5 + 0.7 x1 - 0.4 x2 + u_g``, ``u_g ~ N(0, 0.8^2)``, x2 binary.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from summary import has_lme4, machine_line, repeated, run_in_child, summarise  # noqa: E402


# ---------------------------------------------------------------------------- cases
def _cbpp() -> pd.DataFrame:
    import mixedfx

    data = mixedfx.datasets.load("cbpp")
    return data.assign(prop=data["incidence"] / data["size"], size=data["size"].astype(float))


def _dataset(name: str):
    def load() -> pd.DataFrame:
        import mixedfx

        return mixedfx.datasets.load(name)

    return load


def _contraception() -> pd.DataFrame:
    import mixedfx

    data = mixedfx.datasets.load("contraception")
    return data.assign(age2=data["age"] ** 2)


def bernoulli_data(n_rows: int = 1_000_000, seed: int = 1) -> pd.DataFrame:
    """The synthetic random-intercept logit model of the module docstring."""
    rng = np.random.default_rng(seed)
    clusters = n_rows // 10
    g = rng.integers(0, clusters, n_rows)
    x1, x2 = rng.normal(size=n_rows), rng.binomial(1, 0.4, n_rows).astype(float)
    eta = -0.5 + 0.7 * x1 - 0.4 * x2 + rng.normal(scale=0.8, size=clusters)[g]
    y = rng.binomial(1, 1.0 / (1.0 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "g": g.astype(str)})


BERNOULLI = "y ~ x1 + x2 + (1 | g)"
CASES = {
    # name: (data, formula, family, nAGQ, weights column, statsmodels (fixed, {name: vc formula}) or None)
    "cbpp": (_cbpp, "prop ~ period + (1 | herd)", "binomial", 1, "size", None),
    "verbagg": (
        _dataset("verbagg"),
        "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)",
        "binomial",
        1,
        None,
        ("r2 ~ Anger + Gender + btype + situ", {"id": "0 + C(id)", "item": "0 + C(item)"}),
    ),
    "grouseticks": (
        _dataset("grouseticks"),
        "TICKS ~ YEAR + cHEIGHT + (1 | INDEX) + (1 | BROOD) + (1 | LOCATION)",
        "poisson",
        1,
        None,
        None,
    ),
    "contraception-agq7": (
        _contraception,
        "use ~ age + age2 + urban + livch + (1 | district)",
        "binomial",
        7,
        None,
        ("use ~ age + age2 + urban + livch", {"district": "0 + C(district)"}),
    ),
    "bernoulli-laplace": (bernoulli_data, BERNOULLI, "binomial", 1, None, None),
    "bernoulli-agq7": (bernoulli_data, BERNOULLI, "binomial", 7, None, None),
}


# ---------------------------------------------------------------------------- tools (run in a child)
def _binary_response(data: pd.DataFrame, column: str) -> pd.DataFrame:
    """0/1 floats for a two-level text response (the peers want numbers)."""
    if data[column].dtype.kind in "biuf":
        return data
    levels = sorted(data[column].dropna().unique())
    return data.assign(**{column: (data[column] == levels[-1]).astype(float)})


def _run_tool(tool: str, case: str) -> tuple[float, float]:
    loader, formula, family, nagq, weights, sm_spec = CASES[case]
    data = _binary_response(loader(), formula.split("~")[0].strip())
    if tool == "mixedfx":
        import mixedfx

        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = mixedfx.fit(formula, data, family=family, nagq=nagq, weights=weights)
        return time.perf_counter() - start, fit.loglik
    if tool == "mixedlm":
        import mixedlm
        from mixedlm import families

        fam = families.Binomial() if family == "binomial" else families.Poisson()
        w = None if weights is None else data[weights].to_numpy(dtype=float)
        start = time.perf_counter()
        fit = mixedlm.glmer(formula, data, family=fam, nAGQ=nagq, weights=w)
        seconds = time.perf_counter() - start
        return seconds, float(fit.logLik().value)
    if tool == "statsmodels":
        from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

        fixed, vc = sm_spec
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            BinomialBayesMixedGLM.from_formula(fixed, vc, data).fit_vb()
        return time.perf_counter() - start, float("nan")
    raise ValueError(tool)


def _child(tool: str, case: str, queue) -> None:
    seconds, loglik = _run_tool(tool, case)
    queue.put((seconds, loglik, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def _run_python(tool: str, case: str, timeout: float):
    return run_in_child(_child, (tool, case), timeout)


R_SCRIPT = r"""
suppressMessages(library(lme4)); args <- commandArgs(TRUE)
d <- read.csv(args[1]); for (v in strsplit(args[5], ",")[[1]]) if (nzchar(v)) d[[v]] <- factor(d[[v]])
fam <- if (args[3] == "poisson") poisson else binomial
w <- if (nzchar(args[6])) d[[args[6]]] else NULL; d$.w <- if (is.null(w)) 1 else w
invisible(gc(reset = TRUE)); t0 <- proc.time()[["elapsed"]]
m <- glmer(as.formula(args[2]), data = d, family = fam, nAGQ = as.integer(args[4]), weights = .w)
el <- proc.time()[["elapsed"]] - t0
cat(sprintf('{"seconds": %.6f, "loglik": %.10f, "mb": %.1f}\n', el, as.numeric(logLik(m)), sum(gc()[, 6])))
"""


def _run_r(case: str, timeout: float, csv_cache: dict):
    loader, formula, family, nagq, weights, _ = CASES[case]
    if case not in csv_cache:
        data = _binary_response(loader(), formula.split("~")[0].strip())
        factors = [c for c in data.columns if data[c].dtype.kind not in "biuf"]
        path = Path(tempfile.mkdtemp()) / "data.csv"
        data.to_csv(path, index=False)
        csv_cache[case] = (path, factors)
    path, factors = csv_cache[case]
    script = Path(tempfile.mkdtemp()) / "fit.R"
    script.write_text(R_SCRIPT)
    command = ["Rscript", str(script), str(path), formula, family, str(nagq), ",".join(factors), weights or ""]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    if out.returncode != 0:
        return "failed"
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res["seconds"], res["loglik"], res["mb"]


# ---------------------------------------------------------------------------- driver
def _one_run(tool: str, case: str, timeout: float, csv_cache: dict):
    return _run_r(case, timeout, csv_cache) if tool == "lme4" else _run_python(tool, case, timeout)


def _tools(case: str, has_r: bool) -> list[str]:
    tools = ["mixedfx"]
    try:
        import mixedlm  # noqa: F401

        tools.append("mixedlm")
    except ImportError:
        pass
    if has_r:
        tools.append("lme4")
    if CASES[case][5] is not None:
        tools.append("statsmodels")
    return tools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--tools", nargs="+", help="only these of mixedfx, mixedlm, lme4, statsmodels")
    args = parser.parse_args()
    has_r = has_lme4()
    print(machine_line(has_r))
    print(f"{'case':>20} {'tool':>12} {'median s':>9} {'peak MB':>8} {'ratio':>8} {'dloglik':>10}")
    csv_cache: dict = {}
    for case in args.cases:
        base = None
        for tool in [t for t in _tools(case, has_r) if args.tools is None or t in args.tools]:
            runs = repeated(partial(_one_run, tool, case, args.timeout, csv_cache), args.repeats)
            if isinstance(runs, str):
                print(f"{case:>20} {tool:>12} {runs:>9}")
                continue
            seconds, _, peak, ratio, dloglik, base = summarise(runs, base)
            shown = "(no lik.)" if np.isnan(dloglik) else f"{dloglik:.2e}"
            print(f"{case:>20} {tool:>12} {seconds:>9.3f} {peak:>8.0f} {ratio:>7.1f}x {shown:>10}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
