"""The lecture's two case studies, end to end: every question it asks, as a Stata user would ask it.

    python examples/lecture.py [OUTPUT_DIR]        # default: docs/ (writes lecture.md, img/*.png, reports)

1. Inner-London schools (GCSE at 16 vs London Reading Test at 11, 65 schools): students per
   school, schools 1 and 2, per-school OLS lines and their intercepts and slopes, the
   random-coefficient model, the heteroskedastic variance it implies, whether the association
   varies across schools, shrinkage of intercepts, slopes and predicted lines, the ranking of
   schools, gender modifying the association (level 1 x level 1) and school type explaining
   its variation (level 2 x level 1), with the tests Stata would run.
2. Asian children's growth: trajectories by gender, residual autocorrelation by visit, the
   random-intercept spline model, its ICC and LR test, predicted mean growth by gender and
   individual curves, gender differences in growth, and a continuous-time residual correlation.

Tables are printed to five significant digits: that is well inside what the optimiser
guarantees, so rerunning the script leaves docs/lecture.md unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import mixedfx
from mixedfx import plots
from mixedfx.present.text import margins_text

#: Significant digits of the printed tables (see the module docstring).
DIGITS = 5


def save(fig, path: Path) -> str:
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path.name


def block(text: str) -> list[str]:
    return ["```", str(text), "```", ""]


def number(x: float) -> str:
    return f"{x:.{DIGITS}g}"


def summary(fit) -> str:
    """The Stata-style summary to :data:`DIGITS` significant digits."""
    return str(fit.summary(digits=DIGITS))


def schools(out: Path, img: Path) -> list[str]:
    exam = mixedfx.datasets.load_exam()
    exam["girl"] = (exam["sex"] == "F").astype(int)
    exam["schtype"] = exam["schgend"].map({"mixed": 1, "boys": 2, "girls": 3})  # Stata codes: 1 mixed, 2 boys, 3 girls
    md = ["## Inner-London schools", ""]
    sizes = exam.groupby("school", observed=True).size()
    md += [
        "Students per school (Stata: `by school: egen totalstudents = count(student)`, `summ totalstudents`):",
        "",
        "| schools | mean | SD | min | max |",
        "|---|---|---|---|---|",
        f"| {len(sizes)} | {sizes.mean():.2f} | {sizes.std():.2f} | {sizes.min()} | {sizes.max()} |",
        "",
    ]
    first = save(plots.cluster_scatter(exam, "lrt", "gcse", "school", [1, 2]), img / "schools_1_and_2.png")
    md += ["GCSE against LRT in schools 1 and 2, with each school's OLS line:", ""]
    md += [f"![schools 1 and 2](img/{first})", ""]
    ols = mixedfx.ols_by_group("gcse ~ lrt", exam, "school", min_size=5)
    corr = ols[["(Intercept)", "lrt"]].corr().iloc[0, 1]
    lines = save(plots.cluster_ols_lines(exam, "lrt", "gcse", "school", 5), img / "schools_ols_lines.png")
    md += [
        f"Per-school OLS of gcse on lrt for the {len(ols)} schools with at least 5 students; their intercepts "
        f"and slopes correlate {corr:.3f}:",
        "",
        f"![school OLS lines](img/{lines})",
        f"![intercepts vs slopes](img/{save(plots.ols_scatter(ols, 'lrt'), img / 'schools_ols_scatter.png')})",
        "",
    ]
    command = "mixed gcse lrt_groupc || school: lrt_groupc, cov(uns) reml stddev"
    fit = mixedfx.mixed(command, exam)
    md += [f"The random-coefficient model, Stata `{command}`:", ""] + block(summary(fit))
    G = fit.G["school"]
    tau1, tau2, tau12, s2 = G.iloc[0, 0], G.iloc[1, 1], G.iloc[0, 1], fit.sigma**2
    rows = [f"| {x:g} | {tau1 + 2 * tau12 * x + tau2 * x**2 + s2:.1f} |" for x in (-20, -10, 0, 10, 20)]
    md += [
        "Random slopes make the total variance heteroskedastic: "
        "var(xi) = tau1^2 + 2 tau12 (x - xbar) + tau2^2 (x - xbar)^2 + sigma^2:",
        "",
        "| lrt_groupc | var(gcse) |",
        "|---|---|",
        *rows,
        "",
    ]
    intercept_only = mixedfx.mixed("mixed gcse lrt_groupc || school:, reml", exam)
    lr = mixedfx.lrtest(intercept_only, fit)
    md += [
        "Does the association vary across schools? LR test of the random slope (Stata `lrtest`), REML fits with "
        f"the same fixed effects: chi2({lr.df}) = {lr.statistic:.2f}, p = {lr.pvalue:.2g} (conservative: the "
        "slope variance is tested on its boundary). "
        f"The slope SD is {number(np.sqrt(tau2))} GCSE points per LRT point, against a mean slope of "
        f"{number(fit.fixef['lrt_groupc'])}.",
        "",
    ]
    shrink = fit.shrinkage(min_size=5)
    head = shrink.head(8)
    outside = ", ".join(str(g) for g in head.index[(head["shrinkage_lrt_groupc"] - 0.5).abs() > 0.5])
    md += [
        "Shrinkage of intercepts and slopes (first 8 schools with at least 5 students). The factor is "
        "(EB - mean) / (OLS - mean): 1 no shrinkage, 0 full. Intercepts and slopes are correlated, so a school's "
        f"EB slope also borrows from its intercept; where its OLS slope lies near the mean slope (schools {outside}) "
        "the factor leaves [0, 1] although the EB slope moved little:",
        "",
    ]
    md += block(head.round(3).to_string())
    md += [f"![shrinkage](img/{save(plots.shrinkage_plot(fit, min_size=5), img / 'schools_shrinkage.png')})", ""]
    lines = save(plots.predicted_lines(fit, "lrt_groupc", min_size=5), img / "schools_predicted_lines.png")
    md += ["... and of the predicted association between gcse and lrt:", "", f"![predicted lines](img/{lines})", ""]
    ranks = fit.rank(term="(Intercept)")
    good, bad = ranks[ranks["flag"] == "above"], ranks[ranks["flag"] == "below"]
    md += [
        "Ranking the schools: the EB estimate of a school's random intercept is its expected GCSE for a student of "
        "the school's average intake, relative to the average school (its value added); the random slope says how "
        f"strongly intake matters there, not how well the school does. {len(good)} schools lie above average and "
        f"{len(bad)} below (95% intervals from comparative SEs, Stata's `reses`, excluding zero):",
        "",
    ]
    md += block(ranks.head(5).round(3).to_string() + "\n...\n" + ranks.tail(5).round(3).to_string())
    md += [f"![ranking](img/{save(plots.caterpillar(fit), img / 'schools_ranking.png')})", ""]
    md += [f"![diagnostics](img/{save(plots.residual_diagnostics(fit), img / 'schools_diagnostics.png')})", ""]
    gender = mixedfx.mixed("mixed gcse c.lrt_groupc##i.girl || school: lrt_groupc, cov(uns) reml", exam)
    row = gender.coef_table().loc["c.lrt_groupc#1.girl"]
    md += [
        "Does gender modify the association (two level-1 predictors interacting)? "
        "Stata `mixed gcse c.lrt_groupc##i.girl || school: lrt_groupc, cov(uns) reml`:",
        "",
    ]
    md += block(summary(gender))
    md += [
        f"The interaction `c.lrt_groupc#1.girl` is {number(row['estimate'])} (SE {number(row['se'])}, z = "
        f"{row['z']:.2f}, p = {row['p']:.3f}): girls' GCSE depends on their LRT "
        f"{'more' if row['estimate'] > 0 else 'less'} than boys', "
        f"{'but not significantly' if row['p'] > 0.05 else 'significantly'} at the 5% level.",
        "",
    ]
    stype = "mixed gcse c.lrt_groupc##i.schtype || school: lrt_groupc, cov(uns) reml"
    typed = mixedfx.mixed(stype, exam)
    joint = typed.test("c.lrt_groupc#2.schtype = 0", "c.lrt_groupc#3.schtype = 0")
    main_effects = typed.test("2.schtype = 0", "3.schtype = 0")
    slope_before, slope_after = fit.G["school"].iloc[1, 1], typed.G["school"].iloc[1, 1]
    icpt_before, icpt_after = fit.G["school"].iloc[0, 0], typed.G["school"].iloc[0, 0]
    md += [
        "Does the type of school (1 mixed, 2 boys, 3 girls; a level-2 predictor) explain part of the variation "
        f"across schools, and does it modify the level-1 association? Stata `{stype}`:",
        "",
    ]
    md += block(summary(typed))
    md += [
        "Stata `testparm i.schtype#c.lrt_groupc` (joint Wald test of the cross-level interaction): "
        f"chi2({joint['df']}) = {joint['chi2']:.2f}, p = {joint['p']:.3f}; `testparm i.schtype`: "
        f"chi2({main_effects['df']}) = {main_effects['chi2']:.2f}, p = {main_effects['p']:.3g}. "
        f"School type explains {100 * (1 - icpt_after / icpt_before):.0f}% of the between-school variance of "
        f"the intercepts and {100 * (1 - slope_after / slope_before):.0f}% of that of the slopes (against the "
        "random-coefficient model above; a negative share means the estimated variance grew, as it can when a "
        "predictor explains nothing).",
        "",
    ]
    fit.report(out / "schools_report.html", x="lrt_groupc", progress=False, digits=DIGITS)
    md += ["Full report: [schools_report.html](schools_report.html)", ""]
    return md


def growth(out: Path, img: Path) -> list[str]:
    asian = mixedfx.datasets.load_asian()
    md = ["## Asian children's growth", ""]
    trajectories = save(plots.trajectories(asian, "age", "weight", "id", by="girl"), img / "growth_trajectories.png")
    md += ["Observed growth by gender (girl = 1):", "", f"![trajectories](img/{trajectories})", ""]
    command = "mixed weight age_c age_sp girl age_c_girl age_sp_girl || id:, variance"
    fit = mixedfx.mixed(command, asian)
    ac = mixedfx.autocorrelation(fit.residuals(level="population"), asian["occ"], asian["id"])
    md += [
        "Correlation of the residuals between visits (the lecture's `autocor wtres visit id`; marginal "
        "residuals of the spline model) and by lag:",
        "",
    ]
    md += block(ac.matrix.round(3).to_string() + "\n\n" + ac.acf.round(3).to_string())
    md += [f"![autocorrelation](img/{save(plots.autocorrelation_plot(ac), img / 'growth_autocorrelation.png')})", ""]
    md += [f"Stata: `{command}` (all 568 children; the lecture used a 68-child subsample):", ""]
    md += block(summary(fit))
    tau2 = fit.G["id"].iloc[0, 0]
    md += [
        f"Within-child correlation: {number(tau2)} / ({number(tau2)} + {number(fit.sigma**2)}) = "
        f"{tau2 / (tau2 + fit.sigma**2):.3f}; Stata `estat icc`:",
        "",
    ]
    md += block(fit.icc().round(4).to_string())
    girls = fit.lincom("age_c + age_c_girl")
    gender = fit.test("age_c_girl = 0", "age_sp_girl = 0")
    md += [
        "Do girls grow differently? Stata `test age_c_girl age_sp_girl`: "
        f"chi2({gender['df']}) = {gender['chi2']:.2f}, p = {gender['p']:.3g}; girls' growth in the first year, "
        f"`lincom age_c + age_c_girl`: {number(girls['estimate'])} kg per year (95% CI {number(girls['lower'])} to "
        f"{number(girls['upper'])}), boys' {number(fit.fixef['age_c'])}.",
        "",
    ]
    curves = fit.predict_grid(
        {"age": np.linspace(0.1, 2.6, 40)},
        by={"girl": [0.0, 1.0]},
        groups=[45, 258],
        derive=mixedfx.datasets.add_spline_terms,
    )
    mean = save(plots.mean_curves(fit, "age", by="girl"), img / "growth_mean.png")
    figure = plots.predicted_curves(curves, "age", by="girl", data=asian, y="weight", group="id")
    md += [
        "Predicted mean growth by gender, and predicted mean against individual growth (two children):",
        "",
        f"![predicted mean growth](img/{mean})",
        f"![predicted growth](img/{save(figure, img / 'growth_predicted.png')})",
        "",
    ]
    ages = list(np.round(np.arange(0.0, 2.51, 0.25), 2))
    at_ages = fit.margins(at={"age": ages, "girl": [0.0, 1.0]}, derive=mixedfx.datasets.add_spline_terms)
    marginsplot = plots.marginsplot(at_ages, x="age", by="girl", ylabel="predicted mean weight (kg)")
    md += [
        "Predicted mean weight by gender at ages 0 to 2.5 with 95% confidence intervals, Stata "
        "`margins, at(age=(0(0.25)2.5) girl=(0 1))` and `marginsplot` (the spline terms recomputed from age): "
        '`fit.margins(at={"age": ages, "girl": [0, 1]}, derive=mixedfx.datasets.add_spline_terms)` and '
        "`mixedfx.plots.marginsplot(...)`:",
        "",
    ]
    md += block(margins_text(at_ages, digits=DIGITS))
    md += [f"![margins plot](img/{save(marginsplot, img / 'growth_marginsplot.png')})", ""]
    # Residual correlation that the random intercept does not capture: an exponential (continuous-time
    # AR(1)) structure in age, compared by a likelihood-ratio test (child 4326's duplicated visit dropped).
    visits = asian.drop_duplicates(["id", "age"])
    plain = mixedfx.mixed(command, visits)
    expo = mixedfx.mixed(command + " residuals(exponential, t(age))", visits)
    lr = mixedfx.lrtest(plain, expo)
    md += [
        "Random intercept plus an exponential (CAR(1)) residual correlation in age, Stata "
        f"`{command} residuals(exponential, t(age))` (child 4326's repeated visit dropped):",
        "",
    ]
    md += block(expo.re_table().round(4).to_string(index=False))
    md += [f"LR test against independent residuals: chi2({lr.df}) = {lr.statistic:.2f}, p = {lr.pvalue:.3g}.", ""]
    fit.report(out / "growth_report.html", x="age", time="occ", by="girl", progress=False, digits=DIGITS)
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
