"""HTML tables of a fitted model for notebooks; every data-derived string is escaped."""

from __future__ import annotations

from html import escape

from ..analysis.lrtest import lr_test_vs_linear
from ..analysis.varcomp import varcomp_table
from ..analysis.wald import coef_table
from ..results import FitRecord


def html_summary(result: FitRecord, level: float = 95, scale: str = "var") -> str:
    """HTML tables for notebooks; every data-derived string is escaped."""
    like = "Log restricted-likelihood" if result.reml else "Log-likelihood"
    header = {
        "Model": f"Mixed-effects {result.method} regression",
        "Formula": result.formula,
        "Number of obs": f"{result.nobs:,}",
        like: f"{result.loglik:.3f}",
        "AIC / BIC": f"{result.aic:.2f} / {result.bic:.2f}",
    }
    for name, row in result.group_sizes.iterrows():
        sizes = f"{int(row['min'])}/{row['avg']:.1f}/{int(row['max'])}"
        header[f"Groups: {name}"] = f"{int(row['groups'])} (obs per group min/avg/max {sizes})"
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in header.items())
    fmt = lambda x: f"{x:.6g}"  # noqa: E731
    coef = coef_table(result, level).to_html(float_format=fmt, escape=True)
    re_tab = varcomp_table(result, level, scale).to_html(index=False, float_format=fmt, escape=True)
    lr = escape(lr_test_vs_linear(result).describe())
    notes = ""
    if not result.converged:
        notes += f"<p><b>Warning:</b> {escape(result.optimum.message)}</p>"
    if result.singular:
        notes += "<p><b>Warning:</b> boundary (singular) fit.</p>"
    return (
        f"<div class='mixedfx'><table>{rows}</table><h4>Fixed effects</h4>{coef}"
        f"<h4>Random-effects parameters</h4>{re_tab}<p>{lr}</p>{notes}</div>"
    )
