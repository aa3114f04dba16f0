"""Wald inference on the fixed effects: coefficient tables, linear combinations and tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as st

from ..errors import OptionError, suggest
from ..results import FitRecord
from ..spec.options import confidence_level, two_sided_quantile
from .ddf import coefficient_df
from .robust import robust_vcov


def wald_chi2(result) -> tuple[float, int, float]:
    """Wald chi2 test that every fixed effect but the intercept is zero: (chi2, df, p)."""
    names = [n for n in result.fixef.index if n != "(Intercept)"]
    if not names:
        return np.nan, 0, np.nan
    b = result.fixef[names].to_numpy()
    V = result.vcov.loc[names, names].to_numpy()
    chi2 = float(b @ np.linalg.solve(V, b))
    return chi2, len(names), float(st.chi2.sf(chi2, len(names)))


def coef_table(result: FitRecord, level: float = 95, dfmethod: str | None = None, vce: str = "model") -> pd.DataFrame:
    """Fixed effects with SE, test statistic, p-value and confidence interval.

    Without ``dfmethod``: z tests and normal intervals (Stata).  With ``dfmethod`` =
    ``"satterthwaite"`` or ``"kroger"``: t tests with those denominator df (column ``df``;
    Kenward-Roger also uses its adjusted covariance).  ``vce="robust"`` uses the
    cluster-robust covariance (z tests).
    """
    est = result.fixef
    if vce == "robust":
        if dfmethod:
            raise OptionError("vce='robust' gives large-sample z tests; do not combine it with dfmethod.")
        se = pd.Series(np.sqrt(np.diag(robust_vcov(result).to_numpy())), index=est.index)
    elif vce != "model":
        raise OptionError(f"vce must be 'model' or 'robust', not {vce!r}.")
    else:
        se = result.se
    if dfmethod is None:
        return pd.DataFrame(z_columns(est, se, level))
    df, vcov = coefficient_df(result, dfmethod)
    se = pd.Series(np.sqrt(np.diag(vcov.to_numpy())), index=est.index)
    stat = est / se
    q = st.t.ppf(0.5 + confidence_level(level) / 2, df)
    return pd.DataFrame(
        {
            "estimate": est,
            "se": se,
            "df": df,
            "t": stat,
            "p": 2 * st.t.sf(np.abs(stat), df),
            "lower": est - q * se,
            "upper": est + q * se,
        }
    )


def _coefficient_name(token: str, names: list[str]) -> str:
    token = token.strip()
    if token in ("_cons", "Intercept"):
        token = "(Intercept)"
    if token not in names:
        raise OptionError(f"Unknown coefficient {token!r} in the expression.{suggest(token, names)}")
    return token


def _split_signed(expr: str) -> list[tuple[int, str]]:
    """Split a linear expression at top-level + and - (not inside parentheses)."""
    parts, depth, sign, start = [], 0, 1, 0
    text = expr.strip()
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and ch in "+-" and i > 0 and text[i - 1] not in "eE*":
            piece = text[start:i].strip()
            if piece:
                parts.append((sign, piece))
            sign, start = (1 if ch == "+" else -1), i + 1
        elif depth == 0 and ch in "+-" and i == 0:
            sign, start = (1 if ch == "+" else -1), 1
    piece = text[start:].strip()
    if piece:
        parts.append((sign, piece))
    return parts


def parse_linear(expr: str, names: list[str], allow_constant: bool = False) -> tuple[np.ndarray, float]:
    """``"2*age_c - age_sp + 1"`` -> (weights over coefficients, constant)."""
    weights = np.zeros(len(names))
    constant = 0.0
    for sign, piece in _split_signed(expr):
        factors = [f.strip() for f in piece.split("*")]
        coef, name = float(sign), None
        for f in factors:
            try:
                coef *= float(f)
            except ValueError:
                if name is not None:
                    raise OptionError(f"{piece!r} is not linear in the coefficients.") from None
                name = _coefficient_name(f, names)
        if name is None:
            constant += coef
        else:
            weights[names.index(name)] += coef
    if not weights.any() and not allow_constant:
        raise OptionError(f"The expression {expr!r} names no coefficient.")
    return weights, constant


def lincom(result: FitRecord, expr: str, level: float = 95, vcov: np.ndarray | None = None) -> pd.Series:
    """A linear combination of fixed effects with SE, z, p and CI (Stata ``lincom``)."""
    names = list(result.fixef.index)
    L, c = parse_linear(expr, names)
    V = result.vcov.to_numpy() if vcov is None else vcov
    est = float(L @ result.fixef.to_numpy() + c)
    se = float(np.sqrt(L @ V @ L))
    return pd.Series(z_columns(est, se, level), name=expr)


def z_columns(est, se, level: float) -> dict:
    """Estimate, SE, z, two-sided p and normal CI (scalars or aligned Series)."""
    q = two_sided_quantile(level)
    z = est / se
    return {
        "estimate": est,
        "se": se,
        "z": z,
        "p": 2 * st.norm.sf(np.abs(z)),
        "lower": est - q * se,
        "upper": est + q * se,
    }


def hypothesis_matrix(result, *equations: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``L beta = r`` from equations like ``"a = 0"`` or ``"a = b"`` (a bare ``"a"`` means ``a = 0``)."""
    names = list(result.fixef.index)
    rows, rhs = [], []
    for eq in equations:
        if eq.count("=") > 1:
            raise OptionError(f"{eq!r} has more than one '='.")
        left, _, right = eq.partition("=")
        L1, c1 = parse_linear(left, names, allow_constant=True)
        L2, c2 = parse_linear(right, names, allow_constant=True) if right.strip() else (np.zeros(len(names)), 0.0)
        if not (L1 - L2).any():
            raise OptionError(f"The hypothesis {eq!r} involves no coefficient.")
        rows.append(L1 - L2)
        rhs.append(c2 - c1)
    return np.array(rows), np.array(rhs)


def wald_test(result, *equations: str, vcov: np.ndarray | None = None) -> dict:
    """Joint Wald test of linear hypotheses (Stata ``test``): chi2, df, p."""
    L, r = hypothesis_matrix(result, *equations)
    V = result.vcov.to_numpy() if vcov is None else vcov
    diff = L @ result.fixef.to_numpy() - r
    chi2 = float(diff @ np.linalg.solve(L @ V @ L.T, diff))
    df = int(np.linalg.matrix_rank(L))
    return {"chi2": chi2, "df": df, "p": float(st.chi2.sf(chi2, df))}
