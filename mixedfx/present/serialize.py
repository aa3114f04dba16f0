"""Fitted models as JSON-ready dictionaries (the CLI's ``--json`` layout)."""

from __future__ import annotations

import math

import numpy as np

from ..analysis.lrtest import lr_test_vs_linear
from ..analysis.moments import moments_coef_table, moments_component_table
from ..analysis.ranef import ranef_table
from ..analysis.varcomp import varcomp_table
from ..analysis.wald import coef_table, wald_chi2
from ..results import FitRecord


def _clean(value):
    """JSON-safe scalar: NaN/inf become None, numpy scalars become Python numbers."""
    if value is None:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def results_dict(result: FitRecord, ranef: bool = False, dfmethod: str | None = None) -> dict:
    """The fitted model as a JSON-ready dict (the CLI's ``--json`` output).

    With ``dfmethod`` it adds ``"df"`` (name -> denominator df) and ``"p"``; ``"se"`` becomes
    the SE used for those t tests (Kenward-Roger adjusts it).
    """
    chi2, df, p = wald_chi2(result)
    lr = None if result.pseudo else lr_test_vs_linear(result)  # no LR test for a pseudo-likelihood
    out = {
        "formula": result.formula,
        "offsets": list(result.design.formula.offsets),
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
        "lr_test_vs_linear": None
        if lr is None
        else {"statistic": _clean(lr.statistic), "df": lr.df, "p": _clean(lr.pvalue), "kind": lr.kind},
        "pseudo_likelihood": result.pseudo,
        "vce": "robust" if result.pseudo else "model",
    }
    table = varcomp_table(result, scale="sd")
    out["random_effects_parameters"] = [
        {k: (_clean(v) if k not in ("group", "structure", "parameter") else v) for k, v in row.items()}
        for row in table.to_dict(orient="records")
    ]
    rside = result.rside
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
        table = coef_table(result, dfmethod=dfmethod)
        out["dfmethod"] = dfmethod
        out["df"] = {k: _clean(v) for k, v in table["df"].items()}
        out["se"] = {k: _clean(v) for k, v in table["se"].items()}
        out["p"] = {k: _clean(v) for k, v in table["p"].items()}
    if result.design.dropped_fixed:
        out["dropped_fixed"] = list(result.design.dropped_fixed)
    if ranef:
        table = ranef_table(result)
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


def moments_dict(record, level: float = 95, replicates: int | None = None) -> dict:
    """A method-of-moments fit as a JSON-ready dict (the CLI's ``--json`` with ``--method moments``)."""
    coefficients = moments_coef_table(record, level)
    components = moments_component_table(record, level, replicates)
    return {
        "formula": record.formula,
        "method": "moments",
        "nobs": record.nobs,
        "n_missing_dropped": record.n_missing,
        "ngroups": {k: int(v) for k, v in record.ngroups.items()},
        "fixef": {k: _clean(v) for k, v in coefficients["estimate"].items()},
        "se": {k: _clean(v) for k, v in coefficients["se"].items()},
        "components": [
            {k: (_clean(v) if k != "group" else v) for k, v in row.items()}
            for row in components.to_dict(orient="records")
        ],
        "bootstrap_replicates": int(components.attrs["replicates"]),
        "truncated": [bool(t) for t in record.estimates.truncated],
        "cg_iterations": int(record.estimates.cg_iterations),
    }
