"""Every plot builds on the bundled data and carries the expected artists and labels."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

import mixedfx
from mixedfx import plots


@pytest.fixture(scope="module")
def schools():
    return mixedfx.fit("gcse ~ lrt_groupc + (1 + lrt_groupc | school)", mixedfx.datasets.load_exam())


@pytest.fixture(scope="module")
def growth():
    data = mixedfx.datasets.load_asian()
    return mixedfx.fit("weight ~ age_c + age_sp + girl + age_c_girl + age_sp_girl + (1 | id)", data, method="ml")


def _labelled(fig: Figure) -> None:
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        assert ax.get_xlabel() and ax.get_title(), ax


def test_trajectories_paneled_by_gender():
    data = mixedfx.datasets.load_asian()
    fig = plots.trajectories(data, "age", "weight", "id", by="girl", max_groups=50)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].lines) == 50 and fig.axes[0].get_title() == "girl = 0"  # not 0.0
    assert fig.axes[0].get_ylabel() == "weight"
    _labelled(fig)


def test_cluster_ols_lines_and_scatter():
    data = mixedfx.datasets.load_exam()
    fig = plots.cluster_ols_lines(data, "lrt_groupc", "gcse", "school", min_size=5)
    n_big = (data.groupby("school", observed=True).size() >= 5).sum()
    assert len(fig.axes[0].lines) == n_big
    table = mixedfx.ols_by_group("gcse ~ lrt_groupc", data, "school", min_size=5)
    fig = plots.ols_scatter(table, "lrt_groupc")
    points = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert len(points[0].get_offsets()) == len(table)
    _labelled(fig)


def test_shrinkage_plot_two_effects_and_one_effect(schools, growth):
    fig = plots.shrinkage_plot(schools, min_size=5)
    ax = fig.axes[0]
    assert len([c for c in ax.collections if isinstance(c, PathCollection)]) == 2
    assert len(ax.texts) > 0 or len(ax.patches) > 0 or ax.get_legend() is not None
    assert ax.get_xlabel() == "(Intercept)" and ax.get_ylabel() == "lrt_groupc"
    fig = plots.shrinkage_plot(growth)
    assert len(fig.axes) == 1 and fig.axes[0].get_legend() is not None


def test_predicted_curves(growth):

    curves = growth.predict_grid(
        {"age": np.linspace(0.1, 2.5, 20)},
        by={"girl": [0.0, 1.0]},
        groups=[2, 3],
        derive=mixedfx.datasets.add_spline_terms,
    )
    fig = plots.predicted_curves(curves, "age", by="girl", data=mixedfx.datasets.load_asian(), y="weight", group="id")
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # two mean curves, two children
    assert len(ax.get_legend().get_texts()) == 6  # plus the children's observed points
    _labelled(fig)


def test_caterpillar_highlights(schools):
    fig = plots.caterpillar(schools, highlight=5)
    ax = fig.axes[0]
    assert len(ax.get_yticklabels()) == 65
    marks = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sorted(len(c.get_offsets()) for c in marks)[-2:] == [5, 5]


def test_residual_diagnostics(schools):
    fig = plots.residual_diagnostics(schools)
    assert len(fig.axes) == 4  # residuals vs fitted, Q-Q residuals, Q-Q of two effects
    _labelled(fig)


def test_autocorrelation_plot(growth):
    data = growth.design.data
    ac = mixedfx.autocorrelation(growth.residuals(level="population"), data["occ"], data["id"])
    fig = plots.autocorrelation_plot(ac)
    assert len(fig.axes[0].patches) == len(ac.acf)
    assert len(fig.axes[1].texts) == 25
    _labelled(fig)


def test_caterpillar_with_many_clusters_labels_only_its_ends():
    asian = mixedfx.datasets.load_asian()
    fit = mixedfx.fit("weight ~ age_c + age_sp + girl + (1 | id)", asian, method="ml")
    fig = plots.caterpillar(fit, highlight=8)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == 16 and "568 clusters" in fig.axes[0].get_ylabel()
    plt.close(fig)


def test_cluster_scatter_predicted_lines_and_mean_curves(schools):
    exam = mixedfx.datasets.load_exam()
    fig = plots.cluster_scatter(exam, "lrt", "gcse", "school", [1, 2])
    assert [ax.get_title() for ax in fig.axes] == ["school 1 (73 obs)", "school 2 (55 obs)"]
    plt.close(fig)
    fig = plots.predicted_lines(schools, "lrt_groupc", min_size=5)
    assert len(fig.axes) == 2 and all(ax.get_legend() is None for ax in fig.axes)  # no 65-entry legend
    assert len(fig.axes[0].lines) == len(fig.axes[1].lines) > 50
    plt.close(fig)
    growth = mixedfx.fit("weight ~ age_c + age_sp + girl + age_c_girl + age_sp_girl + (1 | id)",
                         mixedfx.datasets.load_asian(), method="ml")  # fmt: skip
    fig = plots.mean_curves(growth, "age", by="girl")
    assert len(fig.axes[0].lines) == 2
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["girl = 0", "girl = 1"]
    _labelled(fig)
