"""The lecture's two case studies, end to end (writes docs/lecture.md, PNGs and HTML reports).

    python examples/lecture.py [OUTPUT_DIR]        # default: docs/

1. Inner-London schools: GCSE at 16 vs London Reading Test at 11 in 65 schools: per-school
   OLS (schools with >= 5 students), the random-coefficient model (REML, unstructured, SDs),
   EB intercepts and slopes, shrinkage, and the ranking of schools with intervals.
2. Asian children's growth: random-intercept model with a linear spline in age (knot at one
   year) by gender, ICC, LR test against linear regression, predicted mean growth by gender
   and individual curves, residual autocorrelation by visit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import mixedfx
from mixedfx import plots

LINES, TRAJ = "schools_ols_lines.png", "growth_trajectories.png"


def save(fig, path: Path) -> str:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def schools(out: Path, img: Path) -> list[str]:
    exam = mixedfx.datasets.load_exam()
    md = ["## Inner-London schools", ""]
    ols = mixedfx.ols_by_group("gcse ~ lrt", exam, "school", min_size=5)
    md += [
        f"Per-school OLS of gcse on lrt: {len(ols)} schools with at least 5 students "
        f"(sizes {int(ols['n'].min())}-{int(ols['n'].max())}).",
        "",
    ]
    md += [
        f"![school OLS lines](img/{save(plots.cluster_ols_lines(exam, 'lrt', 'gcse', 'school', 5), img / LINES)})",
        f"![intercepts vs slopes](img/{save(plots.ols_scatter(ols, 'lrt'), img / 'schools_ols_scatter.png')})",
        "",
    ]
    fit = mixedfx.mixed("mixed gcse lrt_groupc || school: lrt_groupc, cov(uns) reml stddev", exam)
    md += ["Stata: `mixed gcse lrt_groupc || school: lrt_groupc, cov(uns) reml stddev`", "", "```", str(fit), "```", ""]
    md += [
        "Within-school covariance for school 1 (first 4 students): random slopes make it heteroskedastic.",
        "",
        "```",
        fit.wcovariance(cluster="1").iloc[:4, :4].round(2).to_string(),
        "```",
        "",
    ]
    shrink = fit.shrinkage(min_size=5)
    md += ["Shrinkage (first 8 schools with >= 5 students):", "", "```", shrink.head(8).round(3).to_string(), "```", ""]
    md += [f"![shrinkage](img/{save(plots.shrinkage_plot(fit, min_size=5), img / 'schools_shrinkage.png')})", ""]
    ranks = fit.rank(term="(Intercept)")
    good, bad = ranks[ranks["flag"] == "above"], ranks[ranks["flag"] == "below"]
    md += [
        f"Ranking by the EB intercept (value added): {len(good)} schools above average, {len(bad)} below "
        "(95% intervals from comparative SEs excluding zero).",
        "",
        "```",
        ranks.head(5).round(3).to_string(),
        "...",
        ranks.tail(5).round(3).to_string(),
        "```",
        "",
    ]
    md += [f"![ranking](img/{save(plots.caterpillar(fit), img / 'schools_ranking.png')})", ""]
    md += [f"![diagnostics](img/{save(plots.residual_diagnostics(fit), img / 'schools_diagnostics.png')})", ""]
    fit.report(out / "schools_report.html", x="lrt_groupc", progress=False)
    md += ["Full report: [schools_report.html](schools_report.html)", ""]
    return md


def growth(out: Path, img: Path) -> list[str]:
    asian = mixedfx.datasets.load_asian()
    md = ["## Asian children's growth", ""]
    md += [
        f"![trajectories](img/{save(plots.trajectories(asian, 'age', 'weight', 'id', by='girl'), img / TRAJ)})",
        "",
    ]
    command = "mixed weight age_c age_sp girl age_c_girl age_sp_girl || id:, variance"
    fit = mixedfx.mixed(command, asian)
    md += [
        f"Stata: `{command}` (all 568 children; the lecture used a 68-child subsample)",
        "",
        "```",
        str(fit),
        "```",
        "",
    ]
    md += ["ICC (Stata `estat icc`):", "", "```", fit.icc().round(4).to_string(), "```", ""]
    curves = fit.predict_grid(
        {"age": np.linspace(0.1, 2.6, 40)},
        by={"girl": [0.0, 1.0]},
        groups=[45, 258],
        derive=mixedfx.datasets.add_spline_terms,
    )
    fig = plots.predicted_curves(curves, "age", by="girl", data=asian, y="weight", group="id")
    md += [f"![predicted growth](img/{save(fig, img / 'growth_predicted.png')})", ""]
    ac = mixedfx.autocorrelation(fit.residuals(level="population"), asian["occ"], asian["id"])
    md += [
        "Correlation of marginal residuals between visits (the lecture's `autocor` table) and by lag:",
        "",
        "```",
        ac.matrix.round(3).to_string(),
        "",
        ac.acf.round(3).to_string(),
        "```",
        "",
    ]
    md += [f"![autocorrelation](img/{save(plots.autocorrelation_plot(ac), img / 'growth_autocorrelation.png')})", ""]
    # Residual correlation that the random intercept does not capture: an exponential (continuous-time
    # AR(1)) structure in age, compared by a likelihood-ratio test (child 4326's duplicated visit dropped).
    visits = asian.drop_duplicates(["id", "age"])
    plain = mixedfx.mixed(command, visits)
    expo = mixedfx.mixed(command + " residuals(exponential, t(age))", visits)
    lr = mixedfx.lrtest(plain, expo)
    md += [
        "Random intercept plus an exponential (CAR(1)) residual correlation in age, Stata "
        f"`{command} residuals(exponential, t(age))`:",
        "",
        "```",
        expo.re_table().round(4).to_string(index=False),
        "```",
        "",
        f"LR test against the independent-residual model: chi2({lr.df}) = {lr.statistic:.2f}, p = {lr.pvalue:.4g}.",
        "",
    ]
    fit.report(out / "growth_report.html", x="age", time="occ", by="girl", progress=False)
    md += ["Full report: [growth_report.html](growth_report.html)", ""]
    return md


def main(out: Path) -> None:
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    md = ["# The lecture's case studies with mixedfx", "", "Generated by `python examples/lecture.py`.", ""]
    md += schools(out, img) + growth(out, img)
    (out / "lecture.md").write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {out / 'lecture.md'}, reports and {len(list(img.glob('*.png')))} images")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "docs")
