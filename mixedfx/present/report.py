"""A one-file HTML report of a fitted model: tables, ICC, ranking and the plots that apply.

The file is self-contained (PNG images embedded as base64, CSS inline, no scripts, no
network) and every data-derived string (column names, factor levels, the formula) is
HTML-escaped, so a hostile data file cannot inject markup.
"""

from __future__ import annotations

import base64
import io
import sys
from html import escape
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..analysis.explore import autocorrelation, ols_by_group
from ..analysis.lrtest import lr_test_vs_linear
from ..analysis.marginal import wcorrelation
from ..analysis.prediction import residuals
from ..analysis.ranking import rank
from ..analysis.varcomp import icc
from ..data.io import check_output_path
from ..results import FitRecord
from ..spec.expressions import quote_name
from . import plots
from .text import summary_text

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eee; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
h2 { border-bottom: 2px solid #444; padding-bottom: 4px; margin-top: 2em; }
"""


def _figure_html(fig, alt: str) -> str:
    """The figure as an embedded PNG ``<img>``; closes the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _table_html(frame: pd.DataFrame, index: bool = True) -> str:
    return frame.to_html(index=index, escape=True, float_format=lambda v: f"{v:.5g}", na_rep="")


def _default_x(fit) -> str | None:
    """The variable to put on the x axis: the first random slope, else the first numeric covariate."""
    data = fit.design.data
    for block in fit.design.blocks:
        for name in block.names:
            if name in data.columns and pd.api.types.is_numeric_dtype(data[name]):
                return name
    for name in fit.design.fixed_names:
        if name in data.columns and pd.api.types.is_numeric_dtype(data[name]):
            return name
    return None


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled

    def step(self, what: str) -> None:
        self.done += 1
        if self.enabled:
            print(f"report [{self.done}/{self.total}] {what}", file=sys.stderr, flush=True)


def _correlation_section(fit: FitRecord, block) -> tuple[str, str]:
    """ICCs for random-intercept models; otherwise why not, and the implied within-cluster correlation."""
    if block is not None and all(b.names == ["(Intercept)"] for b in fit.design.blocks):
        return "Intraclass correlation", _table_html(icc(fit))
    if block is None:
        return (
            "Within-cluster correlation",
            "<p>No random effects: the residual structure alone correlates a cluster's observations.</p>",
        )
    cluster = block.levels[0]
    matrix = wcorrelation(fit, group=block.name, cluster=cluster).iloc[:6, :6]
    note = (
        "<p>With random slopes the correlation of two observations of a cluster depends on their covariates, "
        f"so there is no single intraclass correlation. The correlation the model implies for the first "
        f"observations of {escape(block.name)} {escape(str(cluster))}:</p>"
    )
    return "Within-cluster correlation", note + _table_html(matrix.round(3))


def build_report(
    fit: FitRecord,
    x: str | None = None,
    time: str | None = None,
    by: str | None = None,
    title: str | None = None,
    progress: bool = True,
    scale: str = "var",
    digits: int = 7,
) -> str:
    """The report as an HTML string (see :func:`write_report`; ``digits``: significant digits of the tables)."""
    fit.require_rows("The report")
    fit.require_likelihood("The report (its LR test, EB rankings and shrinkage plots)")  # before any work
    data = fit.design.data
    block = fit.design.blocks[0] if fit.design.blocks else None
    rside = fit.rside
    if block is not None:
        group = block.factor[0] if len(block.factor) == 1 else None
    else:  # a marginal model: clusters come from its residual structure
        group = rside.cluster if rside is not None else None
    x = x or _default_x(fit)
    y = fit.design.response_name
    tracker = _Progress(8, progress)
    # Per-cluster OLS: the lecture's rule (clusters with at least 5 rows), or 3 where every cluster is smaller.
    sizes_max = int(fit.design.blocks[0].level_counts.max()) if fit.design.blocks else 0
    min_size = 5 if sizes_max >= 5 else 3
    sections: list[tuple[str, str]] = []

    sizes = fit.group_sizes.rename(columns={"groups": "clusters", "avg": "mean size"})
    summary = (
        f"<p>{fit.nobs:,} observations used"
        + (f"; {fit.n_missing:,} dropped for missing values" if fit.n_missing else "")
        + ".</p>"
        + _table_html(sizes)
    )
    sections.append(("Data", summary))
    tracker.step("data summary")
    sections.append(("Model", f"<pre>{escape(summary_text(fit, scale=scale, digits=digits))}</pre>"))
    tracker.step("tables")
    sections.append(_correlation_section(fit, block))
    lr = lr_test_vs_linear(fit)
    sections.append(("LR test against linear regression", f"<p>{escape(lr.describe())}</p>"))
    if block is not None and "(Intercept)" in block.names:
        ranks = rank(fit, group=block.name)
        shown = pd.concat([ranks.head(10), ranks.tail(10)]) if len(ranks) > 20 else ranks
        sections.append((f"Ranking of {block.name} by its (Intercept) EB estimate", _table_html(shown)))
    tracker.step("ICC, LR test, ranking")

    figures = []
    by = by if by in data.columns else None
    if x is not None and group is not None and x in data.columns:
        if time is not None:  # trajectories are for longitudinal data (occasions), not students in schools
            figures.append(_figure_html(plots.trajectories(data, x, y, group, by=by), "observed trajectories"))
        else:
            first = [c for c, n in zip(block.levels, block.level_counts) if n >= min_size][:2] if block else []
            if first:
                figures.append(_figure_html(plots.cluster_scatter(data, x, y, group, first), "first clusters"))
        figures.append(_figure_html(plots.cluster_ols_lines(data, x, y, group, min_size), "cluster OLS lines"))
        ols = ols_by_group(f"{quote_name(y)} ~ {quote_name(x)}", data, group, min_size=min_size)
        if x in ols.columns and ols[x].notna().sum() > 2:
            figures.append(_figure_html(plots.ols_scatter(ols, x), "cluster OLS intercepts vs slopes"))
    tracker.step("exploratory plots")
    if block is not None and block.q <= 2:
        figures.append(_figure_html(plots.shrinkage_plot(fit, group=block.name, min_size=min_size), "shrinkage"))
    if block is not None and x in block.names and "(Intercept)" in block.names:
        lines = plots.predicted_lines(fit, x, group=block.name, min_size=min_size)
        figures.append(_figure_html(lines, "OLS and EB lines"))
    if x is not None and by is not None:
        figures.append(_figure_html(plots.mean_curves(fit, x, by=by), "predicted mean by " + by))
    if block is not None and "(Intercept)" in block.names:
        figures.append(_figure_html(plots.caterpillar(fit, group=block.name), "caterpillar plot"))
    tracker.step("shrinkage and ranking plots")
    figures.append(_figure_html(plots.residual_diagnostics(fit), "residual diagnostics"))
    tracker.step("residual diagnostics")
    if time is not None and group is not None:
        # Marginal residuals y - X beta, as the lecture's autocor table: conditional residuals of
        # small clusters are pulled negative by the shrinkage of their own BLUPs.
        ac = autocorrelation(residuals(fit, level="population"), data[time], data[group])
        note = f"<p>Marginal residuals ({escape(y)} minus the fixed part) by occasion of {escape(time)}.</p>"
        sections.append(("Residual autocorrelation", note + _table_html(ac.matrix) + _table_html(ac.acf)))
        figures.append(_figure_html(plots.autocorrelation_plot(ac), "residual autocorrelation"))
    tracker.step("autocorrelation")
    sections.append(("Plots", "\n".join(figures)))
    title = title or f"Mixed model: {fit.formula}"
    body = "\n".join(f"<h2>{escape(name)}</h2>\n{content}" for name, content in sections)
    html = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )
    tracker.step("assembled")
    return html


def write_report(
    fit: FitRecord,
    path: str | Path,
    x: str | None = None,
    time: str | None = None,
    by: str | None = None,
    title: str | None = None,
    progress: bool = True,
    scale: str = "var",
    inputs: tuple = (),
    digits: int = 7,
) -> Path:
    """Write the self-contained HTML report of ``fit`` to ``path``.

    ``x`` is the covariate for trajectory and per-cluster OLS plots (default: the first
    random slope), ``time`` an occasion variable for the residual autocorrelation section,
    ``by`` a covariate to panel trajectories by.
    """
    path = check_output_path(path, inputs)
    html = build_report(fit, x=x, time=time, by=by, title=title, progress=progress, scale=scale, digits=digits)
    path.write_text(html, encoding="utf-8")
    return path
