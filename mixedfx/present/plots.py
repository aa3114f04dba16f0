"""The plots of a multilevel analysis (matplotlib; each function returns the Figure).

Every plot labels its axes, has a title, and stays readable in greyscale: groups are told
apart by marker and line style as well as by shade.

- :func:`trajectories` observed trajectories per cluster, paneled by a covariate;
- :func:`cluster_ols_lines` per-cluster OLS lines for clusters with at least k rows;
- :func:`ols_scatter` per-cluster OLS intercepts against slopes;
- :func:`shrinkage_plot` OLS vs EB estimates (arrows), point size by cluster size;
- :func:`predicted_curves` population-mean curves by a covariate, individual curves over data;
- :func:`caterpillar` ranked EB estimates with intervals, top and bottom highlighted (a dense strip for many);
- :func:`cluster_scatter` observations and the OLS line of chosen clusters;
- :func:`predicted_lines` per-cluster OLS lines against EB lines (shrinkage of the association);
- :func:`mean_curves` population-mean predictions at the observed values, by a covariate;
- :func:`residual_diagnostics` residuals vs fitted and normal Q-Q plots (residuals, each effect);
- :func:`autocorrelation_plot` ACF by lag and the occasion correlation matrix as a heat map.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats as st

from ..analysis.explore import ols_by_group
from ..analysis.margins import Margins
from ..analysis.prediction import fitted, residuals
from ..analysis.ranef import ranef
from ..analysis.ranking import rank, shrinkage
from ..errors import OptionError
from ..results import FitRecord
from ..spec.expressions import quote_name


def level_label(value) -> str:
    """A level as a reader writes it: ``1`` rather than ``1.0`` for a whole number stored as float."""
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def as_record(fit) -> FitRecord:
    """The record of a fitted model: a :class:`~mixedfx.results.FitRecord`, or the facade holding one."""
    return fit if isinstance(fit, FitRecord) else fit.record


STYLES = [("k", "-", "o"), ("0.45", "--", "s"), ("0.25", ":", "^"), ("0.6", "-.", "D")]


def _panels(n: int, width: float = 5.0, height: float = 4.0) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, sharey=True)
    return fig, axes[0]


def trajectories(
    data: pd.DataFrame, x: str, y: str, group: str, by: str | None = None, max_groups: int | None = 200
) -> Figure:
    """Observed trajectories ("spaghetti"), one line per cluster, one panel per level of ``by``."""
    levels = [None] if by is None else sorted(data[by].dropna().unique())
    fig, axes = _panels(len(levels))
    for ax, level in zip(axes, levels):
        part = data if level is None else data[data[by] == level]
        groups = list(dict.fromkeys(part[group]))[:max_groups]
        for g in groups:
            rows = part[part[group] == g].sort_values(x)
            ax.plot(rows[x], rows[y], color="0.35", linewidth=0.7, alpha=0.6, marker="o", markersize=2)
        ax.set_title(f"{by} = {level_label(level)}" if by else f"{y} by {group}")
        ax.set_xlabel(x)
    axes[0].set_ylabel(y)
    fig.suptitle(f"Observed trajectories of {y} ({group})")
    fig.tight_layout()
    return fig


def cluster_ols_lines(data: pd.DataFrame, x: str, y: str, group: str, min_size: int = 5) -> Figure:
    """Per-cluster OLS regression lines of ``y`` on ``x`` for clusters with at least ``min_size`` rows."""
    table = ols_by_group(f"{quote_name(y)} ~ {quote_name(x)}", data, group, min_size=min_size).dropna(subset=[x])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    grid = np.linspace(data[x].min(), data[x].max(), 2)
    for _, row in table.iterrows():
        ax.plot(grid, row["(Intercept)"] + row[x] * grid, color="0.3", linewidth=0.8, alpha=0.7)
    ax.set_xlabel(x)
    ax.set_ylabel(f"fitted {y}")
    ax.set_title(f"Cluster-specific OLS lines ({len(table)} clusters with >= {min_size} obs)")
    fig.tight_layout()
    return fig


def ols_scatter(table: pd.DataFrame, slope: str, intercept: str = "(Intercept)") -> Figure:
    """Scatter of per-cluster OLS intercepts against slopes (a table from :func:`mixedfx.ols_by_group`)."""
    clean = table.dropna(subset=[slope, intercept])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(
        clean[intercept],
        clean[slope],
        s=12 + clean["n"] / clean["n"].max() * 80,
        facecolor="0.6",
        edgecolor="k",
        linewidth=0.5,
    )
    r = np.corrcoef(clean[intercept], clean[slope])[0, 1]
    ax.set_xlabel(f"OLS {intercept}")
    ax.set_ylabel(f"OLS slope of {slope}")
    ax.set_title(f"Cluster intercepts vs slopes (r = {r:.2f}; size = n)")
    fig.tight_layout()
    return fig


def shrinkage_plot(fit, group: str | None = None, min_size: int = 2) -> Figure:
    """OLS vs EB estimates per cluster: arrows from OLS to EB, point size by cluster size.

    With two random effects on the factor the arrows live in the (intercept, slope) plane;
    otherwise one panel per effect plots EB against OLS with the line of no shrinkage.
    """
    table = shrinkage(as_record(fit), group=group, min_size=min_size)
    terms = [c[4:] for c in table.columns if c.startswith("ols_")]
    sizes = 10 + 80 * table["n"] / table["n"].max()
    if len(terms) == 2:
        a, b = terms
        ok = table[[f"ols_{a}", f"ols_{b}"]].notna().all(axis=1)
        t = table[ok]
        fig, ax = plt.subplots(figsize=(6.5, 5))
        ax.scatter(t[f"ols_{a}"], t[f"ols_{b}"], s=sizes[ok], facecolor="white", edgecolor="k", label="OLS")
        ax.scatter(t[f"eb_{a}"], t[f"eb_{b}"], s=sizes[ok], facecolor="0.3", edgecolor="k", label="EB")
        for _, row in t.iterrows():
            ax.annotate(
                "",
                xy=(row[f"eb_{a}"], row[f"eb_{b}"]),
                xytext=(row[f"ols_{a}"], row[f"ols_{b}"]),
                arrowprops={"arrowstyle": "->", "color": "0.5", "linewidth": 0.6},
            )
        ax.set_xlabel(a)
        ax.set_ylabel(b)
        ax.legend(title="estimate")
        ax.set_title("Shrinkage of cluster-specific coefficients (OLS -> EB)")
        fig.tight_layout()
        return fig
    fig, axes = _panels(len(terms), width=4.5)
    for ax, term in zip(axes, terms):
        ax.scatter(table[f"ols_{term}"], table[f"eb_{term}"], s=sizes, facecolor="0.5", edgecolor="k")
        lo = np.nanmin(table[[f"ols_{term}", f"eb_{term}"]].to_numpy())
        hi = np.nanmax(table[[f"ols_{term}", f"eb_{term}"]].to_numpy())
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8, label="no shrinkage")
        ax.set_xlabel(f"OLS {term}")
        ax.set_ylabel(f"EB {term}")
        ax.set_title(f"Shrinkage: {term}")
        ax.legend()
    fig.tight_layout()
    return fig


def predicted_curves(
    curves: pd.DataFrame,
    x: str,
    by: str | None = None,
    data: pd.DataFrame | None = None,
    y: str | None = None,
    group: str | None = None,
) -> Figure:
    """Population-mean curves (by a covariate, with CI bands) and individual curves over observed points.

    ``curves`` comes from ``fit.predict_grid``; individual curves are the rows whose
    ``curve`` is not ``"population"``, drawn with their observed points when ``data``, ``y``
    and ``group`` are given.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    pop = curves[curves["curve"] == "population"]
    levels = [None] if by is None else sorted(pop[by].unique())
    for k, level in enumerate(levels):
        colour, style, _ = STYLES[k % len(STYLES)]
        part = pop if level is None else pop[pop[by] == level]
        ax.plot(
            part[x],
            part["prediction"],
            color=colour,
            linestyle=style,
            linewidth=2,
            label="population mean" if level is None else f"mean, {by} = {level_label(level)}",
        )
        ax.fill_between(part[x], part["lower"], part["upper"], color=colour, alpha=0.15)
    individuals = curves[curves["curve"] != "population"]
    for k, (name, part) in enumerate(individuals.groupby("curve", sort=False)):
        colour, style, marker = STYLES[(k + 2) % len(STYLES)]
        label = f"{group or 'cluster'} {name}"
        ax.plot(part[x], part["prediction"], color=colour, linewidth=1.2, linestyle=style, label=f"{label}: predicted")
        if data is not None and y is not None and group is not None:
            obs = data[data[group].astype(str) == str(name)]
            ax.scatter(obs[x], obs[y], color=colour, marker=marker, s=28, zorder=3, label=f"{label}: observed")
    ax.set_xlabel(x)
    ax.set_ylabel("predicted " + (y or "response"))
    ax.set_title("Predicted mean and individual curves")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


#: Clusters beyond which a caterpillar plot becomes a dense strip, labelling only its ends.
LABELLED_CLUSTERS = 100


def caterpillar(
    fit, term: str = "(Intercept)", group: str | None = None, level: float = 95, highlight: int = 5
) -> Figure:
    """Ranked EB estimates with intervals; the top and bottom ``highlight`` clusters are marked.

    With many clusters (more than :data:`LABELLED_CLUSTERS`, such as 568 children) the plot is
    a dense strip of intervals of fixed height, and only the highlighted clusters are labelled.
    """
    record = as_record(fit)
    ranks = rank(record, term=term, group=group, level=level).iloc[::-1]
    dense = len(ranks) > LABELLED_CLUSTERS
    fig, ax = plt.subplots(figsize=(6.5, 7.5 if dense else max(4, 0.12 * len(ranks) + 1.5)))
    pos = np.arange(len(ranks))
    ax.errorbar(
        ranks["estimate"],
        pos,
        xerr=[ranks["estimate"] - ranks["lower"], ranks["upper"] - ranks["estimate"]],
        fmt="o" if not dense else ".",
        color="0.55",
        markersize=3 if not dense else 1.5,
        linewidth=0.8 if not dense else 0.4,
    )
    top = (ranks["rank"] <= highlight).to_numpy()
    bottom = (ranks["rank"] > len(ranks) - highlight).to_numpy()
    ax.scatter(ranks["estimate"][top], pos[top], marker="^", color="k", zorder=3, label=f"top {highlight}")
    ax.scatter(ranks["estimate"][bottom], pos[bottom], marker="v", color="k", zorder=3, label=f"bottom {highlight}")
    ax.axvline(0, color="k", linestyle="--", linewidth=0.8)
    shown = pos if not dense else pos[top | bottom]
    ax.set_yticks(shown)
    ax.set_yticklabels(ranks.index[shown], fontsize=6 if not dense else 7)
    ax.set_xlabel(f"EB estimate of {term} ({level:g}% interval)")
    name = group or record.design.blocks[0].name
    ax.set_ylabel(f"{name} ({len(ranks)} clusters, ranked)" if dense else name)
    ax.set_title(f"Ranking of clusters by {term}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def cluster_scatter(data: pd.DataFrame, x: str, y: str, group: str, clusters: list) -> Figure:
    """One panel per chosen cluster: its observations and its own OLS line (the lecture's schools 1 and 2)."""
    fig, axes = _panels(len(clusters), width=4.2)
    labels = data[group].astype(str)
    for ax, cluster in zip(axes, clusters):
        part = data[labels == str(cluster)]
        ax.scatter(part[x], part[y], s=10, color="0.4")
        if len(part) >= 2 and part[x].nunique() > 1:
            slope, intercept = np.polyfit(part[x].to_numpy(dtype=float), part[y].to_numpy(dtype=float), 1)
            grid = np.linspace(part[x].min(), part[x].max(), 2)
            ax.plot(grid, intercept + slope * grid, color="k", linewidth=1.5, label=f"OLS: slope {slope:.3g}")
            ax.legend(fontsize=8, loc="upper left")
        ax.set_title(f"{group} {cluster} ({len(part)} obs)")
        ax.set_xlabel(x)
    axes[0].set_ylabel(y)
    fig.tight_layout()
    return fig


def predicted_lines(fit, x: str, group: str | None = None, min_size: int = 1) -> Figure:
    """Cluster-specific lines from per-cluster OLS (left) and from the EB estimates (right), same axes.

    The lecture's "impact of shrinkage on the predicted association": the EB lines fan out less.
    No legend: one line per cluster, drawn thin.
    """
    record = as_record(fit)
    table = shrinkage(record, group=group, min_size=min_size)
    slope, intercept = f"{x}", "(Intercept)"
    data = record.design.data
    grid = np.linspace(float(data[x].min()), float(data[x].max()), 2)
    fig, axes = _panels(2, width=4.6)
    for ax, kind, title in zip(axes, ("ols", "eb"), ("per-cluster OLS", "empirical Bayes (mixed model)")):
        a, b = table[f"{kind}_{intercept}"], table[f"{kind}_{slope}"]
        for ai, bi in zip(a, b):
            if np.isfinite(ai) and np.isfinite(bi):
                ax.plot(grid, ai + bi * grid, color="0.3", linewidth=0.6, alpha=0.6)
        ax.set_title(f"{title} ({len(table)} clusters)")
        ax.set_xlabel(x)
    axes[0].set_ylabel(f"predicted {record.design.response_name}")
    fig.suptitle(f"Shrinkage of the cluster-specific association with {x}")
    fig.tight_layout()
    return fig


def mean_curves(fit, x: str, by: str | None = None) -> Figure:
    """Population-mean predictions (xb) at the observed values of ``x``, one curve per level of ``by``.

    Needs no grid: the fixed part is evaluated at the data's own rows (so derived columns such
    as spline terms come with them), averaged over rows sharing ``x`` and ``by``.
    """
    record = as_record(fit)
    data = record.design.data
    xb = record.design.X @ record.fixef.to_numpy()
    frame = pd.DataFrame({x: data[x].to_numpy(), "xb": xb})
    if by is not None:
        frame[by] = data[by].to_numpy()
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    levels = [None] if by is None else sorted(frame[by].dropna().unique())
    for k, level in enumerate(levels):
        colour, style, marker = STYLES[k % len(STYLES)]
        part = frame if level is None else frame[frame[by] == level]
        curve = part.groupby(x)["xb"].mean().sort_index()
        label = "population mean" if level is None else f"{by} = {level_label(level)}"
        ax.plot(curve.index, curve.to_numpy(), color=colour, linestyle=style, linewidth=1.8, label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(f"predicted mean {record.design.response_name}")
    ax.set_title("Predicted mean (fixed part)" + (f" by {by}" if by else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def residual_diagnostics(fit) -> Figure:
    """Residuals vs fitted, normal Q-Q of the residuals, and a normal Q-Q plot per random effect."""
    record = as_record(fit)
    blups = ranef(record)
    effects = [(name, col) for name, frame in blups.items() for col in frame.columns]
    fig, axes = plt.subplots(1, 2 + len(effects), figsize=(4.2 * (2 + len(effects)), 4), squeeze=False)
    axes = axes[0]
    resid = residuals(record, kind="pearson")
    axes[0].scatter(fitted(record), resid, s=6, color="0.35", alpha=0.6)
    axes[0].axhline(0, color="k", linewidth=0.8)
    axes[0].set_xlabel("fitted value")
    axes[0].set_ylabel("standardized residual")
    axes[0].set_title("Residuals vs fitted")
    _qq(axes[1], resid.to_numpy(), "Normal Q-Q: residuals")
    for ax, (name, col) in zip(axes[2:], effects):
        _qq(ax, blups[name][col].to_numpy(), f"Normal Q-Q: {col} | {name}")
    fig.tight_layout()
    return fig


def _qq(ax, values: np.ndarray, title: str) -> None:
    values = np.sort(values[np.isfinite(values)])
    theo = st.norm.ppf((np.arange(1, values.size + 1) - 0.5) / values.size)
    ax.scatter(theo, values, s=8, color="0.3")
    slope, intercept = np.std(values), np.mean(values)
    ax.plot(theo, intercept + slope * theo, "k--", linewidth=0.8)
    ax.set_xlabel("normal quantile")
    ax.set_ylabel("sample quantile")
    ax.set_title(title)


def autocorrelation_plot(result) -> Figure:
    """ACF by lag (bars with pair counts) and the occasion-by-occasion correlation heat map.

    ``result`` is a :class:`mixedfx.autocorrelation.Autocorrelation`.
    """
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    acf = result.acf
    ax1.bar(acf.index, acf["acf"], color="0.55", edgecolor="k")
    for lag, row in acf.iterrows():
        ax1.annotate(f"n={int(row['pairs'])}", (lag, row["acf"]), ha="center", va="bottom", fontsize=8)
    ax1.axhline(0, color="k", linewidth=0.8)
    ax1.set_xlabel("lag (occasions apart)")
    ax1.set_ylabel("autocorrelation")
    ax1.set_title("Residual autocorrelation by lag")
    ax1.set_xticks(list(acf.index))
    matrix = result.matrix
    image = ax2.imshow(matrix.to_numpy(dtype=float), cmap="Greys", vmin=-1, vmax=1)
    ax2.set_xticks(range(len(matrix)))
    ax2.set_yticks(range(len(matrix)))
    ax2.set_xticklabels(matrix.columns, rotation=45)
    ax2.set_yticklabels(matrix.index)
    for i in range(len(matrix)):
        for j in range(len(matrix)):
            value = matrix.iat[i, j]
            if np.isfinite(value):
                ax2.text(j, i, f"{value:.2f}", ha="center", va="center", color="w" if value > 0.5 else "k", fontsize=8)
    ax2.set_xlabel("occasion")
    ax2.set_ylabel("occasion")
    ax2.set_title("Residual correlation between occasions")
    fig.colorbar(image, ax=ax2, fraction=0.046)
    fig.tight_layout()
    return fig


def marginsplot(margins: Margins, x: str | None = None, by: str | None = None, ylabel: str | None = None) -> Figure:
    """Margins against ``x`` with their confidence intervals, one curve per level of ``by`` (Stata ``marginsplot``).

    ``x`` defaults to the margins' first numeric cell column (else the first), ``by`` to the
    remaining one; a numeric ``x`` gives lines with shaded intervals, a factor points with
    error bars.
    """
    table = margins.table
    cells = [c for c in margins.cells if c != "term"]
    if not cells:
        raise OptionError("marginsplot needs margins over at least one variable (at=, over=, specs or a factor).")
    numeric = [c for c in cells if pd.api.types.is_numeric_dtype(table[c])]
    x = x or (numeric[0] if numeric else cells[0])
    rest = [c for c in cells if c != x]
    by = by if by is not None else (rest[0] if rest else None)
    for name in [x] + ([by] if by else []):
        if name not in table.columns:
            raise OptionError(f"marginsplot: {name!r} is not a column of the margins ({', '.join(cells)}).")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    levels = [None] if by is None else list(dict.fromkeys(table[by]))
    positions = {v: i for i, v in enumerate(dict.fromkeys(table[x]))}
    continuous = pd.api.types.is_numeric_dtype(table[x])
    for k, level in enumerate(levels):
        colour, style, marker = STYLES[k % len(STYLES)]
        part = table if level is None else table[table[by] == level]
        label = None if level is None else f"{by} = {level_label(level)}"
        if continuous:
            part = part.sort_values(x)
            ax.plot(part[x], part["estimate"], color=colour, linestyle=style, marker=marker, ms=3, label=label)
            ax.fill_between(part[x], part["lower"], part["upper"], color=colour, alpha=0.25, linewidth=0)
        else:
            shift = 0.1 * (k - (len(levels) - 1) / 2)
            where = np.array([positions[v] for v in part[x]]) + shift
            err = np.vstack([part["estimate"] - part["lower"], part["upper"] - part["estimate"]])
            ax.errorbar(where, part["estimate"], yerr=err, fmt=marker, color=colour, capsize=3, label=label)
    if not continuous:
        ax.set_xticks(range(len(positions)), [level_label(v) for v in positions])
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or margins.kind)
    ax.set_title(f"{margins.kind} with {margins.level:g}% CIs")
    if by is not None:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
