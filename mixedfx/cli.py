"""Command-line interface: ``mixedfx fit DATA FORMULA [options]`` and ``mixedfx report ...``.

DATA is a ``.csv``/``.tsv``, ``.dta`` or ``.parquet`` file, or the name of a bundled data
set (``exam``, ``asian``, ``sleepstudy``, ``pastes``, ``penicillin``, ``cbpp``,
``verbagg``, ``grouseticks``, ``contraception``).  Errors print one
line on stderr and exit with status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from . import __version__, datasets
from .api import compare as mixedfx_compare
from .api import fit, mixed
from .data.io import check_output_path, read_data
from .errors import DataError, MixedFXError, OptionError, suggest
from .present import text
from .present.plots import marginsplot
from .spec.options import confidence_level
from .spec.stata import parse_postestimation


def _load(source: str):
    """A data file, or a bundled data set when no such file exists."""
    if not Path(source).exists() and source in datasets.NAMES:
        return datasets.load(source)
    return read_data(source, progress=True)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mixedfx", description="Linear mixed-effects models (lme4 formula syntax).")
    parser.add_argument("--version", action="version", version=f"mixedfx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a linear mixed model and print its summary or JSON")
    fit.add_argument(
        "data", help="data file (.csv, .tsv, .dta, .parquet), bundled data set name, or with --engine duckdb a glob"
    )
    fit.add_argument("formula", help="lme4 formula, e.g. 'y ~ x + (1 + x | g)'")
    fit.add_argument(
        "--method",
        choices=["reml", "ml", "moments"],
        help="estimation method (default reml; ml with --family, the only one; moments: crossed random "
        "intercepts at scale)",
    )
    fit.add_argument("--json", action="store_true", help="print one JSON object instead of the text summary")
    fit.add_argument("--ranef", action="store_true", help="with --json, include BLUPs and conditional SDs")
    fit.add_argument("--weights", help="column of observation weights (residual variance sigma^2/w)")
    fit.add_argument("--level", type=float, default=95.0, help="confidence level in percent (default 95)")
    fit.add_argument("--stddev", action="store_true", help="report SDs and correlations instead of variances")
    fit.add_argument(
        "--residuals", help="residual structure, Stata syntax: 'ar1, t(Days)', 'exchangeable', 'independent, by(sex)'"
    )
    fit.add_argument("--group", help="cluster variable of --residuals for a model without random effects")
    fit.add_argument(
        "--engine",
        default="memory",
        choices=["memory", "duckdb"],
        help="memory (default) or duckdb: reduce Parquet/CSV files (a glob or directory) in SQL "
        "(per cluster; with --method moments, to cells of crossed factors)",
    )
    fit.add_argument(
        "--dfmethod", choices=["satterthwaite", "kroger"], help="t tests with Satterthwaite or Kenward-Roger df"
    )
    fit.add_argument(
        "--family",
        choices=["binomial", "bernoulli", "poisson"],
        help="a generalized linear mixed model (maximum likelihood; --method does not apply)",
    )
    fit.add_argument("--link", help="with --family: logit (default), probit or cloglog; log for poisson")
    fit.add_argument(
        "--nagq",
        type=int,
        default=1,
        help="with --family: 1 Laplace (default), 0 lme4's fast start, k > 1 points of adaptive quadrature",
    )
    fit.add_argument("--or", dest="eform", action="store_true", help="with --family: odds ratios / IRRs")
    fit.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    stata = sub.add_parser("stata", help="fit a model written as a Stata mixed command, optionally with estat")
    stata.add_argument("data", help="data file (.dta, .csv, .tsv, .parquet) or bundled data set name")
    stata.add_argument("stata_command", metavar="COMMAND", help="e.g. 'mixed gcse lrt || school: lrt, cov(uns) reml'")
    stata.add_argument(
        "--estat",
        action="append",
        default=[],
        choices=list(ESTAT),
        help="after the fit, as Stata's estat: icc, wcorrelation, recovariance, group, ic (repeatable)",
    )
    stata.add_argument("--cluster", help="with --estat wcorrelation: the cluster to show (default: the first)")
    stata.add_argument(
        "--post",
        action="append",
        default=[],
        metavar="COMMAND",
        help="after the fit, Stata's margins, contrast or pwcompare, e.g. 'margins schgend, pwcompare' (repeatable)",
    )
    stata.add_argument("--marginsplot", metavar="PNG", help="draw the last --post margins (Stata's marginsplot) here")
    stata.add_argument("--json", action="store_true", help="print one JSON object instead of the text output")
    stata.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    rep = sub.add_parser("report", help="fit a model and write a self-contained HTML report")
    rep.add_argument("data", help="data file (.csv, .tsv, .dta, .parquet) or bundled data set name")
    rep.add_argument("formula", help="lme4 formula")
    rep.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    rep.add_argument("--method", default="reml", choices=["reml", "ml"])
    rep.add_argument("--weights", help="column of observation weights")
    rep.add_argument("--x", help="covariate for trajectory and per-cluster OLS plots (default: first random slope)")
    rep.add_argument("--time", help="occasion variable for the residual autocorrelation section")
    rep.add_argument("--by", help="covariate to panel the trajectories by")
    rep.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


def _run_report(args: argparse.Namespace) -> int:
    check_output_path(args.output, inputs=(args.data,))
    data = _load(args.data)
    for name in (args.x, args.time, args.by):
        if name is not None and name not in data.columns:
            raise DataError(f"Unknown column {name!r}.{suggest(name, map(str, data.columns))}")
    print("report: fitting the model", file=sys.stderr, flush=True)
    with warnings_to_stderr():
        result = fit(args.formula, data, method=args.method, weights=args.weights)
    path = result.report(args.output, x=args.x, time=args.time, by=args.by)
    print(f"report written to {path}", file=sys.stderr)
    return 0


#: Stata's estat subcommands: their text output (``cluster``: wcorrelation's cluster).
ESTAT = {
    "icc": lambda result, cluster: text.icc_text(result.record, result.display_level),
    "wcorrelation": lambda result, cluster: text.matrix_text(
        "Within-cluster correlation", result.wcorrelation(cluster=cluster)
    ),
    "recovariance": lambda result, cluster: "\n\n".join(
        text.matrix_text(f"Random-effects covariance matrix for level {name}", G) for name, G in result.G.items()
    ),
    "group": lambda result, cluster: text.group_text(result.record),
    "ic": lambda result, cluster: mixedfx_compare(result).to_string(),
}


def _run_stata(args: argparse.Namespace) -> int:
    for command in args.post:  # syntax errors before the fit
        parse_postestimation(command)
    data = _load(args.data)
    with warnings_to_stderr():
        result = mixed(args.stata_command, data)
    if args.marginsplot:
        if not args.post:
            raise OptionError("--marginsplot draws the margins of a --post command; give one.")
        check_output_path(args.marginsplot, inputs=(args.data,))
        marginsplot(result.postestimation(args.post[-1])).savefig(args.marginsplot, dpi=100)
    if args.json:
        out = result.to_dict()
        for name in args.estat:
            out.setdefault("estat", {})[name] = ESTAT[name](result, args.cluster)
        for command in args.post:
            table = result.postestimation(command).table
            out.setdefault("post", {})[command] = json.loads(table.to_json(orient="records"))
        print(json.dumps(out, indent=2))
        return 0
    print(result.summary())
    for name in args.estat:
        print(f"\n. estat {name}\n")
        print(ESTAT[name](result, args.cluster))
    for command in args.post:
        print(f"\n. {command}\n")
        print(text.margins_text(result.postestimation(command)))
    return 0


def _run_fit(args: argparse.Namespace) -> int:
    confidence_level(args.level)  # percent, as in Stata: refused before the fit
    if args.family is not None:
        return _run_glmm(args)
    for flag, given in (("--link", args.link is not None), ("--nagq", args.nagq != 1), ("--or", args.eform)):
        if given:
            raise OptionError(f"{flag} applies to generalized models only; add --family binomial or poisson.")
    if args.method == "moments":
        return _run_moments(args)
    data = args.data if args.engine == "duckdb" else _load(args.data)
    with warnings_to_stderr():
        result = fit(
            args.formula,
            data,
            method=args.method or "reml",
            weights=args.weights,
            engine=args.engine,
            residuals=args.residuals,
            group=args.group,
        )
    if args.json:
        print(json.dumps(result.to_dict(ranef=args.ranef, dfmethod=args.dfmethod), indent=2))
    else:
        print(result.summary(level=args.level, scale="sd" if args.stddev else "var", dfmethod=args.dfmethod))
    return 0


def _run_moments(args: argparse.Namespace) -> int:
    """``mixedfx fit ... --method moments``: method-of-moments components, GLS fixed effects."""
    refused = {
        "--ranef": args.ranef,
        "--stddev": args.stddev,
        "--dfmethod": args.dfmethod is not None,
        "--group": args.group is not None,
    }
    for flag, given in refused.items():
        if given:
            raise OptionError(f"{flag} does not apply to --method moments.")
    with warnings_to_stderr():
        result = fit(
            args.formula,
            args.data if args.engine == "duckdb" else _load(args.data),
            method="moments",
            weights=args.weights,
            engine=args.engine,
            residuals=args.residuals,
        )
    if args.json:
        print(json.dumps(result.to_dict(level=args.level), indent=2))
    else:
        print(result.summary(level=args.level))
    return 0


def _run_glmm(args: argparse.Namespace) -> int:
    """``mixedfx fit ... --family F``: a generalized linear mixed model."""
    refused = {
        "--method reml": args.method == "reml",
        "--residuals": args.residuals is not None,
        "--group": args.group is not None,
        "--engine duckdb": args.engine != "memory",
        "--dfmethod": args.dfmethod is not None,
    }
    for flag, given in refused.items():
        if given:
            raise OptionError(f"{flag} is an option of linear mixed models, not of --family {args.family}.")
    data = _load(args.data)
    with warnings_to_stderr():
        result = fit(args.formula, data, weights=args.weights, family=args.family, link=args.link, nagq=args.nagq)
    if args.json:
        print(json.dumps(result.to_dict(ranef=args.ranef), indent=2))
    else:
        print(result.summary(level=args.level, eform=args.eform, scale="sd" if args.stddev else "var"))
    return 0


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@contextmanager
def warnings_to_stderr():
    """Warnings printed to stderr as they are raised, one line each (a slow fit's notice at its start,
    not after it), every time (not once per place in the code)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"mixedfx: warning: {one_line(message)}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def one_line(message: str) -> str:
    """An error message on one line: no terminal colour codes, a formula's caret as its column."""
    lines = _ANSI.sub("", str(message)).splitlines()
    out = []
    for i, line in enumerate(lines):
        caret = line.strip() == "^" and i > 0
        if caret:
            out[-1] = f"{out[-1]} (at column {len(line) - len(line.lstrip()) - 1})"
        elif line.strip():
            out.append(line.strip())
    return " ".join(out)


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line and exit status 2, like every other error."""

    def error(self, message: str):
        self.exit(2, f"mixedfx: error: {one_line(message)} (see mixedfx --help)\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mixedfx`` command; returns the exit status (2 for any error)."""
    args = _build_parser().parse_args(argv)
    try:
        runner = {"report": _run_report, "stata": _run_stata, "fit": _run_fit}[args.command]
        return runner(args)
    except MixedFXError as exc:
        if args.debug:
            raise
        print(f"mixedfx: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader (head, less) closed the pipe: nothing is wrong; stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit
        return 0
    except Exception as exc:  # noqa: BLE001 - the CLI promises no tracebacks (nor library text) without --debug
        if args.debug:
            raise
        print(
            f"mixedfx: error: an unexpected {type(exc).__name__} inside mixedfx (a bug); "
            "rerun with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
