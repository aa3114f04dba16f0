"""Stata's ``melogit`` / ``mepoisson`` output for a fitted GLMM, and its JSON layout (lme4's summary).

The header gives the family and link, the integration method (Laplace or ``mvaghermite``
with its points), observations, groups and obs per group, the log-likelihood and the Wald
test; then the coefficient table (odds ratios or IRRs with ``eform``), the random-effects
parameters and the LR test against the model without random effects.
"""

from __future__ import annotations

import numpy as np

from ..analysis import glmm as inference
from ..results.glmm import GLMMRecord
from ..spec.options import confidence_level, display_digits
from .text import group_text, stata_abbrev, stata_number, unambiguous_width

_TITLES = {
    ("binomial", "logit"): "Mixed-effects logistic regression",
    ("binomial", "probit"): "Mixed-effects probit regression",
    ("binomial", "cloglog"): "Mixed-effects complementary log-log regression",
    ("poisson", "log"): "Mixed-effects Poisson regression",
}


def _cell(x: float, digits: int, width: int = 10) -> str:
    return stata_number(x, digits=digits).rjust(width)


def _header(record: GLMMRecord, digits: int) -> list[str]:
    blocks = record.design.blocks
    left = [_TITLES[(record.family.name, record.family.link)]]
    right = [("Number of obs", f"{record.nobs:,}")]
    if len(blocks) == 1:
        name = blocks[0].name
        sizes = record.group_sizes
        left.append(f"Group variable: {name}")
        right += [("Number of groups", f"{record.ngroups[name]:,}"), ("", ""), ("Obs per group:", None)]
        right += [(k, f"{sizes.loc[name, k]:.1f}" if k == "avg" else f"{int(sizes.loc[name, k]):,}")
                  for k in ("min", "avg", "max")]  # fmt: skip
    integration = "Laplacian approximation" if record.nagq <= 1 else "mvaghermite"
    left += ["", f"Integration method: {integration}"]
    right += [("Integration pts.", f"{max(record.nagq, 1)}")]
    lines = []
    for i in range(max(len(left), len(right))):
        text = left[i] if i < len(left) else ""
        label, value = right[i] if i < len(right) else ("", "")
        if value is None:
            lines.append(f"{text:<48}{label}")
        elif label in ("min", "avg", "max"):
            lines.append(f"{text:<48}{label:>17} = {value:>10}")
        elif label:
            lines.append(f"{text:<48}{label:<17} = {value:>10}")
        else:
            lines.append(text)
    if len(blocks) > 1:
        lines += [""] + group_text(record).splitlines()
    chi2, df, p = inference.wald_chi2(record)
    lines.append("")
    lines.append(f"{'':<48}{f'Wald chi2({df})':<17} = {chi2:>10.2f}" if np.isfinite(chi2) else "")
    loglik = f"Log likelihood = {stata_number(record.loglik, digits=digits + 1, width=9)}"
    lines.append(f"{loglik:<48}{'Prob > chi2':<17} = {p:>10.4f}" if np.isfinite(p) else loglik)
    if record.n_missing:
        lines.append(f"({record.n_missing:,} observation(s) with missing values dropped)")
    return lines


def _display_name(name: str) -> str:
    return "_cons" if name == "(Intercept)" else name


def _fixed_table(record: GLMMRecord, level: float, eform: bool, digits: int) -> list[str]:
    table = inference.coef_table(record, level, eform)
    order = [n for n in table.index if n != "(Intercept)"] + [n for n in table.index if n == "(Intercept)"]
    counts = record.design.formula.counts
    response = counts[0] if counts else record.design.response_name  # Stata shows the successes
    width = unambiguous_width([_display_name(n) for n in order] + [response], 12)
    head = inference.eform_name(record) if eform else "Coef."
    pct = f"{confidence_level(level) * 100:g}%"
    rule = "-" * (width + 1) + "+" + "-" * 64
    lines = [
        "-" * len(rule),
        f"{stata_abbrev(response, width):>{width}} | {head:>10}  Std. Err.      z    P>|z|     [{pct} Conf. Interval]",
        rule,
    ]
    for name in order:
        r = table.loc[name]
        p = "   .  " if not np.isfinite(r["p"]) else f"{r['p']:6.3f}"
        lines.append(
            f"{stata_abbrev(_display_name(name), width):>{width}} | {_cell(r['estimate'], digits)} "
            f"{_cell(r['se'], digits)} {r['z']:8.2f}  {p}    {_cell(r['lower'], digits)}  {_cell(r['upper'], digits)}"
        )
    for expr in record.design.formula.offsets:
        lines.append(f"{stata_abbrev(expr, width):>{width}} | {'1':>10}  (offset)")
    lines.append("-" * len(rule))
    if eform and "(Intercept)" in table.index:
        lines.append(f"Note: _cons estimates baseline {'odds' if record.family.link == 'logit' else 'incidence rate'}.")
    return lines


def _random_table(record: GLMMRecord, level: float, scale: str, digits: int) -> list[str]:
    table = inference.varcomp_table(record, level, scale)
    width = max([27] + [len(p) + 4 for p in table["parameter"]])
    pct = f"{confidence_level(level) * 100:g}%"
    rule = "-" * (width + 1) + "+" + "-" * 50
    lines = [
        rule.replace("+", "-"),
        f"{'Random-effects Parameters':^{width}} |   Estimate  Std. Err.     [{pct} Conf. Interval]",
    ]
    lines.append(rule)
    current = None
    for _, row in table.iterrows():
        if row["group"] != current:
            current = row["group"]
            structure = _structure(record, current)
            lines.append(f"{current + ': ' + structure:<{width}} |")
        lines.append(
            f"{row['parameter']:>{width - 2}}   | {_cell(row['estimate'], digits)} {_cell(row['se'], digits)}    "
            f"{_cell(row['lower'], digits)}  {_cell(row['upper'], digits)}"
        )
    lines.append("-" * len(rule))
    return lines


def _structure(record: GLMMRecord, group: str) -> str:
    block = next(b for b in record.design.blocks if b.name == group)
    if block.q == 1:
        return "Identity"
    kinds = {t.structure.kind for t in block.terms}
    return {"unstructured": "Unstructured", "independent": "Independent", "exchangeable": "Exchangeable"}.get(
        kinds.pop() if len(kinds) == 1 else "", "Mixed"
    )


def summary_text(
    record: GLMMRecord, level: float = 95, eform: bool = False, scale: str = "var", digits: int = 7
) -> str:
    """The full ``melogit`` / ``mepoisson`` output."""
    digits = display_digits(digits)
    lines = _header(record, digits) + [""] + _fixed_table(record, level, eform, digits) + [""]
    lines += _random_table(record, level, scale, digits)
    lr = inference.lr_test_vs_glm(record)
    lines.append(lr.describe())
    if lr.kind == "chi2":
        lines += ["", "Note: LR test is conservative and provided only for reference."]
    if not record.converged:
        lines.append("Warning: convergence not achieved.")
    if record.singular:
        lines.append("Warning: boundary (singular) fit: a variance is zero or a correlation is +-1.")
    if record.design.dropped_fixed:
        lines.append(f"Note: aliased fixed effects dropped: {', '.join(record.design.dropped_fixed)}.")
    return "\n".join(lines)


def results_dict(record: GLMMRecord, ranef: bool = False) -> dict:
    """lme4's ``summary(glmer)`` as a JSON-ready dictionary."""
    table = inference.coef_table(record)
    out = {
        "formula": record.formula,
        "family": record.family_name,
        "link": record.family.link,
        "method": record.method,
        "nagq": record.nagq,
        "nobs": record.nobs,
        "n_missing": record.n_missing,
        "ngroups": record.ngroups,
        "loglik": record.loglik,
        "aic": record.aic,
        "bic": record.bic,
        "deviance": -2.0 * record.loglik,
        "converged": record.converged,
        "singular": record.singular,
        "fixef": {k: float(v) for k, v in record.fixef.items()},
        "coefficients": {
            name: {"estimate": row["estimate"], "se": row["se"], "z": row["z"], "p": row["p"]}
            for name, row in table.iterrows()
        },
        "theta": [float(t) for t in record.theta],
        "varcorr": record.varcorr.replace({np.nan: None}).to_dict(orient="records"),
        "offsets": list(record.design.formula.offsets),
        "lr_test_vs_glm": inference.lr_test_vs_glm(record).__dict__,
    }
    if ranef:
        out["ranef"] = {
            name: {"levels": [str(x) for x in frame.index], **{c: frame[c].tolist() for c in frame.columns}}
            for name, frame in inference.ranef(record).items()
        }
    return out
