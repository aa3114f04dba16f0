"""Presentation of fitted models: Stata-style text tables and the JSON layout.

The text summary follows Stata's ``mixed``: a header (observations, groups, obs per group,
log-likelihood, Wald chi2), the fixed-effects table (coef, SE, z, P>|z|, CI), the
random-effects parameters with SEs and CIs, and the LR test against linear regression.
"""

from __future__ import annotations

import re

import numpy as np

from ..analysis.lrtest import lr_test_vs_linear
from ..analysis.moments import moments_coef_table, moments_component_table
from ..analysis.varcomp import icc, varcomp_table
from ..analysis.wald import coef_table, wald_chi2
from ..results import FitRecord
from ..spec.options import confidence_level, display_digits


def stata_number(x: float, digits: int = 7, width: int = 8) -> str:
    """A number as Stata's ``%9.0g`` writes it: up to ``digits`` significant digits in ``width``
    characters besides the sign, without the leading zero (``.5529766``, ``.0190615``,
    ``-.1599923``); ``.`` for missing."""
    if x is None or not np.isfinite(x):
        return "."
    for d in range(digits, 0, -1):
        text = f"{x:.{d}g}"
        if "e" not in text and text.lstrip("-").startswith("0."):
            text = text.replace("0.", ".", 1)
        if len(text.lstrip("-")) <= width:
            return text
    return f"{x:.2e}"


def _num(x: float, width: int = 10, digits: int = 7) -> str:
    """A table cell: :func:`stata_number` (``digits`` significant digits) right-aligned in ``width`` characters."""
    return stata_number(x, digits=digits).rjust(width)


def _cells(row, names: list[str], digits: int, gap: str = " ") -> str:
    """Table cells of ``row[name]`` for each name, separated by ``gap``."""
    return gap.join(_num(row[name], digits=digits) for name in names)


def stata_abbrev(name: str, length: int) -> str:
    """Stata's abbreviation of a name longer than ``length``: its start, ``~`` and its last character."""
    return name if len(name) <= length else f"{name[: length - 2]}~{name[-1]}"


def unambiguous_width(names: list[str], width: int) -> int:
    """``width`` when Stata's abbreviations of ``names`` stay distinct, else the longest name's length.

    Stata abbreviates to 12 characters; two interaction terms can then read alike
    (``c.lrt_grou~e`` twice), and a table must never leave the reader guessing which row is which.
    """
    abbreviated = {stata_abbrev(name, width) for name in names}
    if len(abbreviated) == len(set(names)):
        return width
    return max(width, *(len(name) for name in names))


_PARAMETER = re.compile(r"^(sd|var|corr|cov)\((.*)\)$")


def _abbreviate_parameter(label: str, length: int = 8) -> str:
    """``sd(lrt_groupc)`` -> ``sd(lrt_gr~c)``: random-effect names in at most ``length`` characters, as Stata."""
    match = _PARAMETER.match(label)
    if match is None or match.group(2) == "Residual":
        return label
    inner = ",".join(stata_abbrev(part, length) for part in match.group(2).split(","))
    return f"{match.group(1)}({inner})"


def _pvalue(p: float) -> str:
    return "   .  " if not np.isfinite(p) else f"{p:6.3f}"


def _header(result: FitRecord, level: float, digits: int = 7) -> list[str]:
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
    chi2, df, p = wald_chi2(result)
    rside = result.rside
    left = [f"Mixed-effects {kind} regression" if blocks else f"Marginal (no random effects) {kind} regression"]
    if len(blocks) == 1:
        left.append(f"Group variable: {blocks[0].name}")
    elif not blocks and rside is not None:
        left.append(f"Group variable: {rside.cluster}")
        right.append(("Number of groups", f"{rside.model.n_clusters:,}"))
    like = (
        "Log restricted-likelihood" if result.reml else ("Log pseudolikelihood" if result.pseudo else "Log likelihood")
    )
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
        lines += group_text(result).splitlines()
    for i, (label, value) in enumerate(wald):
        text = f"{like} = {stata_number(result.loglik, digits=digits + 1, width=9)}" if i == len(wald) - 1 else ""
        lines.append(f"{text:<48}{label:<17} = {value:>10}" if label else text)
    if result.n_missing:
        lines.append(f"({result.n_missing:,} observation(s) with missing values dropped)")
    if result.pseudo:
        top = result.design.blocks[result.deviance.weights.order[-1]]
        lines.append(f"{'(Std. err. adjusted for ' + f'{top.n_levels:,} clusters in {top.name})':>80}")
    return lines


def _display_name(name: str) -> str:
    return "_cons" if name == "(Intercept)" else name


def _fixed_table(
    result: FitRecord, level: float, dfmethod: str | None = None, vce: str = "model", digits: int = 7
) -> list[str]:
    """Coefficient table with the intercept last, as Stata shows it (t and df with ``dfmethod``)."""
    table = coef_table(result, level, dfmethod=dfmethod, vce=vce)
    order = [n for n in table.index if n != "(Intercept)"] + [n for n in table.index if n == "(Intercept)"]
    names = [_display_name(n) for n in order]
    width = unambiguous_width(names + [result.design.response_name], 12)  # Stata's column: longer names abbreviated
    pct = f"{confidence_level(level) * 100:g}%"
    stat = "t" if dfmethod else "z"
    df_head = "        df" if dfmethod else ""
    se_head = "Robust SE" if vce == "robust" or result.pseudo else "Std. Err."
    rule = "-" * (width + 1) + "+" + "-" * (66 + len(df_head))
    lines = ["-" * len(rule)]
    lines.append(
        f"{stata_abbrev(result.design.response_name, width):>{width}} |      Coef.  {se_head}{df_head}      {stat}"
        f"    P>|{stat}|"
        f"     [{pct} Conf. Interval]"
    )
    lines.append(rule)
    for name in order:
        r = table.loc[name]
        df_cell = f" {r['df']:9.2f}" if dfmethod else ""
        lines.append(
            f"{stata_abbrev(_display_name(name), width):>{width}} | {_cells(r, ['estimate', 'se'], digits)}{df_cell} "
            f"{r[stat]:8.2f}  "
            f"{_pvalue(r['p'])}    {_cells(r, ['lower', 'upper'], digits, gap='  ')}"
        )
    for expr in result.design.formula.offsets:  # as Stata lists an offset: coefficient 1
        lines.append(f"{stata_abbrev(expr, width):>{width}} | {'1':>10}  (offset)")
    lines.append("-" * len(rule))
    if dfmethod:
        lines.append(f"Denominator degrees of freedom: {dfmethod}.")
    return lines


def _random_table(result: FitRecord, level: float, scale: str, digits: int = 7) -> list[str]:
    """Random-effects parameters with SEs and CIs, grouped by level and structure."""
    table = varcomp_table(result, level, scale)
    labels = list(table["parameter"])
    length = 8 if len({_abbreviate_parameter(p) for p in labels}) == len(set(labels)) else 10**6
    width = max([27] + [len(_abbreviate_parameter(p, length)) + 4 for p in labels])
    pct = f"{confidence_level(level) * 100:g}%"
    rule = "-" * (width + 1) + "+" + "-" * 50
    lines = [
        "-" * len(rule),
        f"{'Random-effects Parameters':^{width}} |   Estimate  {'Robust SE' if result.pseudo else 'Std. Err.'}"
        f"     [{pct} Conf. Interval]",
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
        numbers = f"{_cells(row, ['estimate', 'se'], digits)}    {_cells(row, ['lower', 'upper'], digits, gap='  ')}"
        lines.append(f"{_abbreviate_parameter(row['parameter'], length):>{width - 2}}   | {numbers}")
    lines.append("-" * len(rule))
    return lines


def summary_text(
    result: FitRecord,
    level: float = 95,
    scale: str = "var",
    dfmethod: str | None = None,
    vce: str = "model",
    digits: int = 7,
) -> str:
    """The full Stata-style summary.

    ``scale``: ``"var"`` (variances, default) or ``"sd"`` (Stata's ``stddev``);
    ``dfmethod``: ``"satterthwaite"`` or ``"kroger"`` for t tests; ``vce="robust"`` for
    cluster-robust standard errors; ``digits``: significant digits of the numbers (Stata's 7).
    """
    digits = display_digits(digits)
    lines = _header(result, level, digits)
    if not result.converged and not result.optimum.moved:
        lines += [
            "",
            f"The optimiser did not move from its starting values ({result.optimum.message}): there are no",
            "estimates to show. Try a simpler random-effects or residual structure, or other starting values.",
        ]
        return "\n".join(lines)
    lines.append("")
    lines += _fixed_table(result, level, dfmethod, vce, digits)
    lines.append("")
    lines += _random_table(result, level, scale, digits)
    if result.pseudo:  # as Stata: no likelihood-ratio test for a pseudo-likelihood
        lines.append("Standard errors: linearisation (sandwich) estimator clustered at the top level.")
    else:
        lr = lr_test_vs_linear(result)
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
    lines += [f"Note: {note}" for note in result.notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- estat
def icc_text(result: FitRecord, level: float = 95) -> str:
    """Stata's ``estat icc``: intraclass correlations with SEs and CIs, outermost level first."""
    table = icc(result, level)
    pct = f"{confidence_level(level) * 100:g}%"
    rule = "-" * 29 + "+" + "-" * 48
    lines = [
        "Intraclass correlation",
        "-" * 78,
        f"{'Level':>28} |        ICC   Std. Err.     [{pct} Conf. Interval]",
        rule,
    ]
    for name, row in table.iterrows():
        lines.append(
            f"{stata_abbrev(str(name), 28):>28} | {_cells(row, ['icc', 'se'], 7)}    "
            f"{_cells(row, ['lower', 'upper'], 7, gap='  ')}"
        )
    lines.append("-" * 78)
    return "\n".join(lines)


def group_text(result: FitRecord) -> str:
    """Stata's ``estat group``: groups and observations per group for every grouping factor."""
    sizes = result.group_sizes
    lines = [
        "-------------------------------------------------------------",
        "                |     No. of       Observations per Group",
        " Group Variable |     Groups    Minimum    Average    Maximum",
        "----------------+--------------------------------------------",
    ]
    for block in reversed(result.design.blocks):  # outermost level first, as Stata
        row = sizes.loc[block.name]
        lines.append(
            f"{stata_abbrev(block.name, 15):>15} | {int(row['groups']):>10,} {int(row['min']):>10,} "
            f"{row['avg']:>10.1f} {int(row['max']):>10,}"
        )
    lines.append("-------------------------------------------------------------")
    return "\n".join(lines)


def matrix_text(title: str, frame, columns_per_panel: int = 6) -> str:
    """A symmetric labelled matrix as Stata's ``estat recovariance``/``wcorrelation`` print it.

    The lower triangle in Stata's number format, names abbreviated to 8 characters,
    ``(Intercept)`` as ``_cons`` and moved last (Stata lists slopes first), and wide
    matrices in panels of ``columns_per_panel`` columns.
    """
    names = list(frame.index)
    order = [n for n in names if n != "(Intercept)"] + [n for n in names if n == "(Intercept)"]
    frame = frame.loc[order, order]
    labels = [stata_abbrev(_display_name(str(n)), 8) for n in order]
    values = frame.to_numpy(dtype=float)
    lines = [title]
    for start in range(0, len(order), columns_per_panel):
        stop = min(start + columns_per_panel, len(order))
        lines += ["", f"{'':>12} |" + "".join(f"{label:>11}" for label in labels[start:stop])]
        lines.append("-" * 13 + "+" + "-" * (11 * (stop - start)))
        for i in range(start, len(order)):
            cells = "".join(stata_number(values[i, j]).rjust(11) for j in range(start, min(stop, i + 1)))
            lines.append(f"{labels[i]:>12} |{cells}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- margins
_MARGIN_HEADS = {
    "Predictive margins": "Margin",
    "Average marginal effects": "dy/dx",
    "Estimated marginal means": "Mean",
    "Contrasts": "Contrast",
    "Pairwise comparisons": "Contrast",
}


def margins_text(margins, digits: int = 7) -> str:
    """A margins table as Stata's ``margins``/``pwcompare`` prints it: delta-method SEs, z, p and intervals."""
    digits = display_digits(digits)
    table = margins.table
    labels = margins.labels()
    width = max(12, min(40, max(len(lab) for lab in labels))) if labels else 12
    pct = f"{confidence_level(margins.level) * 100:g}%"
    head = _MARGIN_HEADS.get(margins.kind, "Estimate")
    rule = "-" * (width + 1) + "+" + "-" * 64
    lines = [
        f"{margins.kind:<48}Number of obs = {margins.nobs:>10,}",
        f"Expression: {margins.expression}",
    ]
    if margins.adjust != "none":
        lines.append(f"Multiple comparisons: {margins.adjust.capitalize()} ({len(table)} comparisons)")
    lines += [
        "",
        "-" * len(rule),
        f"{'':>{width}} |            Delta-method",
        f"{'':>{width}} | {head:>10}  Std. err.      z    P>|z|     [{pct} conf. interval]",
        rule,
    ]
    for label, (_, row) in zip(labels, table.iterrows()):
        lines.append(
            f"{label[:width]:>{width}} | {_cells(row, ['estimate', 'se'], digits)} {row['z']:8.2f}  "
            f"{_pvalue(row['p'])}    {_cells(row, ['lower', 'upper'], digits, gap='  ')}"
        )
    lines.append("-" * len(rule))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- method of moments
def moments_text(record, level: float = 95, replicates: int | None = None, digits: int = 7) -> str:
    """The summary of a method-of-moments fit: GLS coefficients, moment components with bootstrap SEs."""
    digits = display_digits(digits)
    table = moments_coef_table(record, level)
    components = moments_component_table(record, level, replicates)
    chi2, df, p = wald_chi2(record)
    pct = f"{confidence_level(level) * 100:g}%"
    lines = [
        f"{'Mixed-effects regression, method of moments':<48}{'Number of obs':<17} = {record.nobs:>10,}",
        f"{'  variance components: U-statistics':<48}{f'Wald chi2({df})':<17} = {chi2:>10.2f}",
        f"{'  (Gao & Owen); fixed effects: GLS':<48}{'Prob > chi2':<17} = {p:>10.4f}",
    ]
    if record.n_missing:
        lines.append(f"({record.n_missing:,} observation(s) with missing values dropped)")
    lines += ["", *group_text(record).splitlines(), ""]
    names = list(table.index)
    order = [n for n in names if n != "(Intercept)"] + [n for n in names if n == "(Intercept)"]
    width = unambiguous_width([_display_name(n) for n in order] + [record.design.response_name], 12)
    rule = "-" * (width + 1) + "+" + "-" * 66
    lines += [
        "-" * len(rule),
        f"{stata_abbrev(record.design.response_name, width):>{width}} |      Coef.  Std. Err.      z    P>|z|"
        f"     [{pct} Conf. Interval]",
        rule,
    ]
    for name in order:
        r = table.loc[name]
        lines.append(
            f"{stata_abbrev(_display_name(name), width):>{width}} | {_cells(r, ['estimate', 'se'], digits)} "
            f"{r['z']:8.2f}  {_pvalue(r['p'])}    {_cells(r, ['lower', 'upper'], digits, gap='  ')}"
        )
    lines += ["-" * len(rule), ""]
    rule = "-" * 28 + "+" + "-" * 50
    lines += [
        "-" * len(rule),
        f"{'Random-effects Parameters':^27} |   Estimate  Boot. SE      [{pct} Perc. Interval]",
        rule,
    ]
    for _, row in components.iterrows():
        label = f"var({row['group'] if row['group'] != 'Residual' else 'Residual'})"
        numbers = f"{_cells(row, ['estimate', 'se'], digits)}    {_cells(row, ['lower', 'upper'], digits, gap='  ')}"
        lines.append(f"{stata_abbrev(label, 25):>25}   | {numbers}")
    lines.append("-" * len(rule))
    n_boot = components.attrs.get("replicates", 0)
    lines.append(
        f"Standard errors of the fixed effects: GLS given the components; of the components: parametric bootstrap, "
        f"{n_boot} replicates (seed {record.seed})."
    )
    for name, cut in zip(record.ngroups, record.estimates.truncated):
        if cut:
            lines.append(f"Note: the moment estimate of var({name}) was negative and is set to zero.")
    return "\n".join(lines)
