"""Margins against R: emmeans (marginal means, pairs with adjustments) and delta-method margins made in R.

The references (``tests/reference/make_margins.R``) are lme4 fits of the schools model with
``schgend`` and of sleepstudy, and glmer's cbpp; predictive margins and average marginal
effects there are computed from R's model matrices as marginaleffects does.  The fits agree
with lme4's to about 1e-7, so the margins are compared to 1e-6 (absolute and relative).
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

import mixedfx
from mixedfx.analysis import margins as margins_module
from mixedfx.errors import OptionError
from mixedfx.present.text import margins_text

REFERENCE = Path(__file__).parents[1] / "reference"
TOL = {"rel": 1e-6, "abs": 1e-6}


def _load(name: str) -> dict:
    return json.loads((REFERENCE / name).read_text())


@pytest.fixture(scope="module")
def exam_ref():
    return _load("exam_margins.json")


@pytest.fixture(scope="module")
def exam_fit(exam_ref):
    return mixedfx.fit(exam_ref["formula"], mixedfx.datasets.load_exam())


def _assert_rows(table: pd.DataFrame, rows: list[dict], estimate: str = "emmean", se: str = "SE"):
    assert len(table) == len(rows)
    for (_, got), want in zip(table.iterrows(), rows):
        assert got["estimate"] == pytest.approx(want[estimate], **TOL)
        assert got["se"] == pytest.approx(want[se], **TOL)
        if "asymp.LCL" in want:
            assert got["lower"] == pytest.approx(want["asymp.LCL"], **TOL)
            assert got["upper"] == pytest.approx(want["asymp.UCL"], **TOL)
        if "p.value" in want and want["p.value"] > 1e-300:
            assert got["p"] == pytest.approx(want["p.value"], rel=1e-5, abs=1e-9)


def test_fit_is_lme4_s(exam_fit, exam_ref):
    np.testing.assert_allclose(exam_fit.fixef.to_numpy(), list(exam_ref["fixef"].values()), atol=1e-6)


def test_estimated_marginal_means_equal_emmeans(exam_fit, exam_ref):
    _assert_rows(exam_fit.emmeans("schgend").table, exam_ref["emmeans_schgend"])
    _assert_rows(exam_fit.emmeans("schgend", weights="proportional").table, exam_ref["emmeans_schgend_proportional"])
    _assert_rows(exam_fit.emmeans(["sex", "schgend"]).table, exam_ref["emmeans_sex_schgend"])
    at = exam_fit.emmeans("lrt_groupc", at={"lrt_groupc": [-20, 0, 20]})
    _assert_rows(at.table, exam_ref["emmeans_lrt_at"])


@pytest.mark.parametrize("adjust", ["none", "bonferroni", "holm", "sidak"])
def test_pairwise_comparisons_equal_emmeans_pairs(exam_fit, exam_ref, adjust):
    pairs = exam_fit.contrast("pw.schgend", adjust=adjust)
    assert list(pairs.table["contrast"]) == [row["contrast"] for row in exam_ref["pairs_schgend"][adjust]]
    _assert_rows(pairs.table, exam_ref["pairs_schgend"][adjust], estimate="estimate")


def test_predictive_margins_equal_the_delta_method_in_r(exam_fit, exam_ref):
    _assert_rows(exam_fit.margins("schgend").table, exam_ref["predictive_schgend"], "estimate", "se")
    _assert_rows(exam_fit.margins().table, [exam_ref["predictive_overall"]], "estimate", "se")
    at = exam_fit.margins(at={"lrt_groupc": [-20, 0, 20]})
    _assert_rows(at.table, exam_ref["predictive_lrt_at"], "estimate", "se")
    over = exam_fit.margins(over="sex")
    assert list(over.table["sex"]) == ["F", "M"]
    _assert_rows(over.table, exam_ref["predictive_over_sex"], "estimate", "se")


def test_average_marginal_effects_equal_the_delta_method_in_r(exam_fit, exam_ref):
    _assert_rows(exam_fit.margins(dydx="lrt_groupc").table, [exam_ref["ame_lrt"]], "estimate", "se")
    _assert_rows(
        exam_fit.margins(dydx="lrt_groupc", over="schgend").table, exam_ref["ame_lrt_over_schgend"], "estimate", "se"
    )
    effects = exam_fit.margins(dydx=["sex", "schgend"])
    assert list(effects.table["contrast"]) == ["M - F", "girls - boys", "mixed - boys"]
    _assert_rows(effects.table, [exam_ref["ame_sex"], *exam_ref["ame_schgend"]], "estimate", "se")


def test_sleepstudy_margins_at_representative_days():
    ref = _load("sleepstudy_margins.json")
    fit = mixedfx.fit(ref["formula"], mixedfx.datasets.load_sleepstudy())
    means = fit.emmeans("Days", at={"Days": list(range(10))})
    _assert_rows(means.table, ref["emmeans_days"])
    four = fit.emmeans("Days", at={"Days": [0, 3, 6, 9]}).pairwise("holm")
    _assert_rows(four.table, ref["pairs_days_0_9_holm"], estimate="estimate")
    _assert_rows(fit.margins(dydx="Days").table, [ref["ame_days"]], "estimate", "se")


def test_glmm_margins_of_the_mean_equal_r():
    ref = _load("cbpp_margins.json")
    fit = mixedfx.fit(ref["formula"], mixedfx.datasets.load("cbpp"), family="binomial", nagq=7)
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(ref["fixef"].values()), atol=1e-5)
    tol = {"rel": 1e-4, "abs": 1e-6}  # glmer's quadrature optimum and SEs agree to about 1e-5
    emm = fit.emmeans("period").table  # emmeans type = "response": the inverse link of the mean eta
    for (_, got), want in zip(emm.iterrows(), ref["emmeans_period_response"]):
        assert got["estimate"] == pytest.approx(want["prob"], **tol)
        assert got["se"] == pytest.approx(want["SE"], **tol)
    predictive = fit.margins("period").table
    for (_, got), want in zip(predictive.iterrows(), ref["predictive_period_mu"]):
        assert got["estimate"] == pytest.approx(want["estimate"], **tol)
        assert got["se"] == pytest.approx(want["se"], **tol)
    overall = fit.margins().table.iloc[0]
    assert overall["estimate"] == pytest.approx(ref["predictive_overall_mu"]["estimate"], **tol)
    assert overall["se"] == pytest.approx(ref["predictive_overall_mu"]["se"], **tol)
    data = mixedfx.datasets.load("cbpp")
    X = np.column_stack([np.ones(len(data))] + [(data["period"] == k).to_numpy(float) for k in "234"])
    for k, (_, got) in enumerate(predictive.iterrows()):
        Xk = X.copy()
        Xk[:, 1:] = 0.0
        if k:
            Xk[:, k] = 1.0
        mu = 1 / (1 + np.exp(-Xk @ fit.fixef.to_numpy()))
        J = (Xk * (mu * (1 - mu))[:, None]).mean(axis=0)
        assert got["estimate"] == pytest.approx(mu.mean(), rel=1e-12)
        assert got["se"] == pytest.approx(np.sqrt(J @ fit.vcov.to_numpy() @ J), rel=1e-8)
    averaged = fit.margins("period", predict="marginal").table  # E over u of the mean, R's integrate()
    for (_, got), want in zip(averaged.iterrows(), ref["predictive_period_marginal"]):
        assert got["estimate"] == pytest.approx(want["estimate"], **tol)
        assert got["se"] == pytest.approx(want["se"], **tol)
    linear = fit.margins("period", predict="xb").table
    np.testing.assert_allclose(linear["estimate"].iloc[1] - linear["estimate"].iloc[0], fit.fixef.iloc[1], rtol=1e-10)


# ---------------------------------------------------------------------------- the machinery
@pytest.mark.parametrize("method", ["bonferroni", "holm", "sidak"])
def test_adjusted_pvalues_equal_statsmodels(method):
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.0005])
    expected = multipletests(p, method=method)[1]
    np.testing.assert_allclose(margins_module.adjusted_pvalues(p, method), expected, rtol=1e-12)


def test_chunked_sums_equal_one_pass(exam_fit, monkeypatch):
    whole = exam_fit.margins("schgend", dydx="lrt_groupc").table
    monkeypatch.setattr(margins_module, "MARGIN_CHUNK", 97)
    chunked = exam_fit.margins("schgend", dydx="lrt_groupc").table
    np.testing.assert_allclose(chunked["estimate"], whole["estimate"], rtol=1e-12)
    np.testing.assert_allclose(chunked["se"], whole["se"], rtol=1e-12)


def test_reference_contrasts_and_joint_test(exam_fit):
    means = exam_fit.emmeans("schgend")
    contrasts = exam_fit.contrast("r.schgend")
    assert list(contrasts.table["contrast"]) == ["girls - boys", "mixed - boys"]
    estimates = means.table["estimate"].to_numpy()
    np.testing.assert_allclose(contrasts.table["estimate"], estimates[1:] - estimates[0], rtol=1e-12)
    test = margins_module.joint_test(contrasts)
    # the joint test of the contrasts is the Wald test of the schgend coefficients (no interaction at the mean)
    wald = exam_fit.test("schgendgirls = 0", "schgendmixed = 0")
    assert test["df"] == 2
    assert test["chi2"] == pytest.approx(wald["chi2"], rel=1e-8)


def test_margins_of_a_survey_fit_use_its_robust_covariance():
    pisa = mixedfx.datasets.load_pisa2000()
    fit = mixedfx.fit(
        "isei ~ female + college + (1 | id_school)",
        pisa,
        method="ml",
        pweights={"": "w_fstuwt", "id_school": "wnrschbw"},
        pwscale="size",
    )
    effect = fit.margins(dydx="college").table.iloc[0]
    assert effect["estimate"] == pytest.approx(fit.fixef["college"], rel=1e-9)
    assert effect["se"] == pytest.approx(fit.se["college"], rel=1e-6)


def test_margins_text_is_stata_s_layout(exam_fit):
    text = margins_text(exam_fit.contrast("pw.schgend", adjust="bonferroni"))
    assert "Pairwise comparisons" in text and "Multiple comparisons: Bonferroni (3 comparisons)" in text
    assert "Delta-method" in text and "boys - girls |" in text


def test_marginsplot_draws_curves_and_points(exam_fit):
    curves = mixedfx.plots.marginsplot(exam_fit.margins(at={"lrt_groupc": [-20, 0, 20]}, over="sex"))
    ax = curves.axes[0]
    assert len(ax.lines) == 2 and ax.get_xlabel() == "lrt_groupc"
    points = mixedfx.plots.marginsplot(exam_fit.margins("schgend"))
    assert [t.get_text() for t in points.axes[0].get_xticklabels()] == ["boys", "girls", "mixed"]
    with pytest.raises(OptionError, match="at least one variable"):
        mixedfx.plots.marginsplot(exam_fit.margins())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f.margins(at={"lrt": [0]}), "'lrt', which is not a variable of the fixed part"),
        (lambda f: f.margins("lrt_groupc"), "only factors take all their levels"),
        (lambda f: f.margins("schgend", predict="fitted"), "depend on the BLUPs"),
        (lambda f: f.emmeans("lrt_groupc"), "is numeric: give its values"),
        (lambda f: f.contrast("pw.lrt_groupc"), "is not one"),
        (lambda f: f.contrast("x.schgend"), "Unknown contrast operator"),
        (lambda f: f.contrast("pw.schgend", adjust="tukey"), "adjust must be one of"),
        (lambda f: f.emmeans("schgend", weights="cells"), "weights must be 'equal' or 'proportional'"),
        (lambda f: f.margins(at={"schgend": ["coed"]}), "coed"),
    ],
)
def test_bad_requests_are_refused(exam_fit, call, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((OptionError, mixedfx.errors.DataError), match=message):
            call(exam_fit)


def test_margins_of_a_fit_from_reduced_data_are_refused(tmp_path):
    path = tmp_path / "exam.parquet"
    mixedfx.datasets.load_exam().to_parquet(path)
    fit = mixedfx.fit("gcse ~ lrt + schgend + (1 | school)", str(path), engine="duckdb")
    for call in (lambda: fit.margins("schgend"), lambda: fit.emmeans("schgend"), lambda: fit.contrast("r.schgend")):
        with pytest.raises(OptionError, match="fitted from reduced data"):
            call()


def test_population_averaged_margins_need_random_intercepts_only():
    sleep = mixedfx.datasets.load_sleepstudy().assign(slow=lambda d: (d["Reaction"] > 300).astype(float))
    fit = mixedfx.fit("slow ~ Days + (1 + Days | Subject)", sleep, family="bernoulli")
    with pytest.raises(OptionError, match="random intercepts only"):
        fit.margins(predict="marginal")
    assert fit.margins(at={"Days": [0, 9]}).table["estimate"].is_monotonic_increasing
