"""Presentation of fitted models: Stata-style text tables and the JSON layout.

The text summary follows Stata's ``mixed``: a header (observations, groups, obs per group,
log-likelihood, Wald chi2), the fixed-effects table (coef, SE, z, P>|z|, CI), the
random-effects parameters with SEs and CIs, and the LR test against linear regression.
"""

from __future__ import annotations

import math

import numpy as np

from . import inference


def _num(x: float, width: int = 10) -> str:
    """A number in ``width`` characters with up to 7 significant digits (Stata's %10.0g feel)."""
    if x is None or not np.isfinite(x):
        return ".".rjust(width)
    for digits in (7, 6, 5):
        text = f"{x:.{digits}g}"
        if len(text) < width:
            break
    return text.rjust(width)


def _pvalue(p: float) -> str:
    return "   .  " if not np.isfinite(p) else f"{p:6.3f}"


def _header(result, level: float) -> list[str]:
    """Header block: model type, counts, obs per group, log-likelihood, Wald test."""
    lines = []
    right = []
    kind = "REML" if result.reml else "ML"
    blocks = result.design.blocks
    right.append(("Number of obs", f"{result.nobs:,}"))
    sizes = result.group_sizes
    if len(blocks) == 1:
        name = blocks[0].name
        right.append(("Number of groups", f"{result.ngroups[name]:,}"))
        right.append(("", ""))
        right.append(("Obs per group:", None))
        right.append(("min", f"{int(sizes.loc[name, 'min']):,}"))
        right.append(("avg", f"{sizes.loc[name, 'avg']:.1f}"))
        right.append(("max", f"{int(sizes.loc[name, 'max']):,}"))
    chi2, df, p = inference.wald_chi2(result)
    rside = getattr(result, "rside", None)
    left = [f"Mixed-effects {kind} regression" if blocks else f"Marginal (no random effects) {kind} regression"]
    if len(blocks) == 1:
        left.append(f"Group variable: {blocks[0].name}")
    elif not blocks and rside is not None:
        left.append(f"Group variable: {rside.cluster}")
        right.append(("Number of groups", f"{rside.model.n_clusters:,}"))
    like = "Log restricted-likelihood" if result.reml else "Log likelihood"
    wald = [
        ("", ""),
        (f"Wald chi2({df})", f"{chi2:.2f}" if np.isfinite(chi2) else "."),
        ("Prob > chi2", f"{p:.4f}" if np.isfinite(p) else "."),
    ]
    for i, (label, value) in enumerate(right):
        text = left[i] if i < len(left) else ""
        if value is None:
            lines.append(f"{text:<48}{label}")
        elif label in ("min", "avg", "max"):
            lines.append(f"{text:<48}{label:>17} = {value:>10}")
        elif label:
            lines.append(f"{text:<48}{label:<17} = {value:>10}")
        else:
            lines.append(text)
    if len(blocks) > 1:
        lines.append("")
        lines.append("-------------------------------------------------------------")
        lines.append("                |     No. of       Observations per Group")
        lines.append(" Group Variable |     Groups    Minimum    Average    Maximum")
        lines.append("----------------+--------------------------------------------")
        for block in reversed(blocks):  # outermost level first, as Stata
            row = sizes.loc[block.name]
            lines.append(
                f"{block.name[:15]:>15} | {int(row['groups']):>10,} {int(row['min']):>10,} "
                f"{row['avg']:>10.1f} {int(row['max']):>10,}"
            )
        lines.append("-------------------------------------------------------------")
    for i, (label, value) in enumerate(wald):
        text = f"{like} = {result.loglik:.3f}" if i == len(wald) - 1 else ""
        lines.append(f"{text:<48}{label:<17} = {value:>10}" if label else text)
    if result.n_missing:
        lines.append(f"({result.n_missing:,} observation(s) with missing values dropped)")
    return lines


def _display_name(name: str) -> str:
    return "_cons" if name == "(Intercept)" else name


def _fixed_table(result, level: float, dfmethod: str | None = None, vce: str = "model") -> list[str]:
    """Coefficient table with the intercept last, as Stata shows it (t and df with ``dfmethod``)."""
    table = inference.coef_table(result, level, dfmethod=dfmethod, vce=vce)
    order = [n for n in table.index if n != "(Intercept)"] + [n for n in table.index if n == "(Intercept)"]
    width = max([12, len(result.design.response_name)] + [len(_display_name(n)) for n in order])
    pct = f"{level * 100:g}%"
    stat = "t" if dfmethod else "z"
    df_head = "        df" if dfmethod else ""
    se_head = "Robust SE" if vce == "robust" else "Std. Err."
    rule = "-" * (width + 1) + "+" + "-" * (66 + len(df_head))
    lines = ["-" * len(rule)]
    lines.append(
        f"{result.design.response_name:>{width}} |      Coef.  {se_head}{df_head}      {stat}    P>|{stat}|"
        f"     [{pct} Conf. Interval]"
    )
    lines.append(rule)
    for name in order:
        r = table.loc[name]
        df_cell = f" {r['df']:9.2f}" if dfmethod else ""
        lines.append(
            f"{_display_name(name):>{width}} | {_num(r['estimate'])} {_num(r['se'])}{df_cell} {r[stat]:8.2f}  "
            f"{_pvalue(r['p'])}    {_num(r['lower'])}  {_num(r['upper'])}"
        )
    lines.append("-" * len(rule))
    if dfmethod:
        lines.append(f"Denominator degrees of freedom: {dfmethod}.")
    return lines


def _random_table(result, level: float, scale: str) -> list[str]:
    """Random-effects parameters with SEs and CIs, grouped by level and structure."""
    table = inference.varcomp_table(result, level, scale)
    width = max([27] + [len(p) + 4 for p in table["parameter"]])
    pct = f"{level * 100:g}%"
    rule = "-" * (width + 1) + "+" + "-" * 50
    lines = [
        "-" * len(rule),
        f"{'Random-effects Parameters':^{width}} |   Estimate  Std. Err.     [{pct} Conf. Interval]",
        rule,
    ]
    current = None
    for _, row in table.iterrows():
        key = (row["group"], row["structure"])
        if row["group"] == "Residual" and not row["structure"]:
            lines.append(rule)
        elif key != current:
            if row["group"] == "Residual":
                lines.append(rule)
            current = key
            lines.append(f"{row['group'] + ': ' + row['structure']:<{width}} |")
        numbers = f"{_num(row['estimate'])} {_num(row['se'])}    {_num(row['lower'])}  {_num(row['upper'])}"
        lines.append(f"{row['parameter']:>{width - 2}}   | {numbers}")
    lines.append("-" * len(rule))
    return lines


def summary_text(
    result, level: float | None = None, scale: str | None = None, dfmethod: str | None = None, vce: str = "model"
) -> str:
    """The full Stata-style summary.

    ``scale``: ``"var"`` (variances, default) or ``"sd"`` (Stata's ``stddev``);
    ``dfmethod``: ``"satterthwaite"`` or ``"kroger"`` for t tests; ``vce="robust"`` for
    cluster-robust standard errors.
    """
    scale = scale or getattr(result, "display_scale", "var")
    level = level or getattr(result, "display_level", 0.95)
    lines = _header(result, level)
    lines.append("")
    lines += _fixed_table(result, level, dfmethod, vce)
    lines.append("")
    lines += _random_table(result, level, scale)
    lr = inference.lr_test_vs_linear(result)
    lines.append(lr.describe())
    if lr.kind == "chi2":
        lines.append("")
        lines.append("Note: LR test is conservative and provided only for reference.")
    if not result.converged:
        lines.append(f"Warning: convergence not achieved ({result.optimum.message}).")
    if result.singular:
        lines.append(
            "Warning: boundary (singular) fit: a variance is zero or a correlation is +-1; "
            "its SE and CI are not defined."
        )
    if result.design.dropped_fixed:
        lines.append(f"Note: aliased fixed effects dropped: {', '.join(result.design.dropped_fixed)}.")
    return "\n".join(lines)


def _clean(value):
    """JSON-safe scalar: NaN/inf become None, numpy scalars become Python numbers."""
    if value is None:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def results_dict(result, ranef: bool = False, dfmethod: str | None = None) -> dict:
    """The fitted model as a JSON-ready dict (the CLI's ``--json`` output).

    With ``dfmethod`` it adds ``"df"`` (name -> denominator df) and ``"p"``; ``"se"`` becomes
    the SE used for those t tests (Kenward-Roger adjusts it).
    """
    chi2, df, p = inference.wald_chi2(result)
    lr = inference.lr_test_vs_linear(result)
    out = {
        "formula": result.formula,
        "method": result.method,
        "nobs": result.nobs,
        "n_missing_dropped": result.n_missing,
        "ngroups": {k: int(v) for k, v in result.ngroups.items()},
        "obs_per_group": {
            name: {"min": int(row["min"]), "avg": float(row["avg"]), "max": int(row["max"])}
            for name, row in result.group_sizes.iterrows()
        },
        "loglik": _clean(result.loglik),
        "aic": _clean(result.aic),
        "bic": _clean(result.bic),
        "converged": result.converged,
        "convergence_message": result.optimum.message,
        "singular": result.singular,
        "fixef": {k: _clean(v) for k, v in result.fixef.items()},
        "se": {k: _clean(v) for k, v in result.se.items()},
        "sigma": _clean(result.sigma),
        "theta": [_clean(t) for t in result.theta],
        "varcorr": [
            {
                "group": row["group"],
                "var1": row["var1"] if isinstance(row["var1"], str) else None,
                "var2": row["var2"] if isinstance(row["var2"], str) else None,
                "vcov": _clean(row["vcov"]),
                "sdcor": _clean(row["sdcor"]),
            }
            for row in result.varcorr.to_dict(orient="records")
        ],
        "wald_chi2": {"chi2": _clean(chi2), "df": df, "p": _clean(p)},
        "lr_test_vs_linear": {"statistic": _clean(lr.statistic), "df": lr.df, "p": _clean(lr.pvalue), "kind": lr.kind},
    }
    table = inference.varcomp_table(result, scale="sd")
    out["random_effects_parameters"] = [
        {k: (_clean(v) if k not in ("group", "structure", "parameter") else v) for k, v in row.items()}
        for row in table.to_dict(orient="records")
    ]
    rside = getattr(result, "rside", None)
    if rside is not None:
        out["residuals"] = {
            "type": rside.spec.kind,
            "order": rside.spec.order or None,
            "time": rside.spec.time,
            "by": rside.spec.by,
            "cluster": rside.cluster,
            "parameters": {k: _clean(v) for k, v in zip(rside.labels, rside.natural())},
        }
    if dfmethod:
        table = inference.coef_table(result, dfmethod=dfmethod)
        out["dfmethod"] = dfmethod
        out["df"] = {k: _clean(v) for k, v in table["df"].items()}
        out["se"] = {k: _clean(v) for k, v in table["se"].items()}
        out["p"] = {k: _clean(v) for k, v in table["p"].items()}
    if result.design.dropped_fixed:
        out["dropped_fixed"] = list(result.design.dropped_fixed)
    if ranef:
        table = result.ranef_table()
        out["ranef"] = {}
        for (group, level), part in table.groupby(["group", "level"], sort=False):
            out["ranef"].setdefault(group, []).append(
                {
                    "level": level,
                    "value": {t: _clean(v) for t, v in zip(part["term"], part["estimate"])},
                    "se": {t: _clean(v) for t, v in zip(part["term"], part["se"])},
                }
            )
    return out


def html_summary(result, level: float = 0.95) -> str:
    """HTML tables for notebooks; every data-derived string is escaped."""
    from html import escape

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
    coef = inference.coef_table(result, level).to_html(float_format=fmt, escape=True)
    scale = getattr(result, "display_scale", "var")
    re_tab = inference.varcomp_table(result, level, scale).to_html(index=False, float_format=fmt, escape=True)
    lr = escape(inference.lr_test_vs_linear(result).describe())
    notes = ""
    if not result.converged:
        notes += f"<p><b>Warning:</b> {escape(result.optimum.message)}</p>"
    if result.singular:
        notes += "<p><b>Warning:</b> boundary (singular) fit.</p>"
    return (
        f"<div class='mixedfx'><table>{rows}</table><h4>Fixed effects</h4>{coef}"
        f"<h4>Random-effects parameters</h4>{re_tab}<p>{lr}</p>{notes}</div>"
    )
