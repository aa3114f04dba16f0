"""The plots of a multilevel analysis (public namespace; see :mod:`mixedfx.present.plots`)."""

from .present.plots import (
    autocorrelation_plot,
    caterpillar,
    cluster_ols_lines,
    cluster_scatter,
    marginsplot,
    mean_curves,
    ols_scatter,
    predicted_curves,
    predicted_lines,
    residual_diagnostics,
    shrinkage_plot,
    trajectories,
)

__all__ = [
    "trajectories",
    "cluster_ols_lines",
    "cluster_scatter",
    "predicted_lines",
    "mean_curves",
    "ols_scatter",
    "shrinkage_plot",
    "predicted_curves",
    "caterpillar",
    "residual_diagnostics",
    "autocorrelation_plot",
    "marginsplot",
]
