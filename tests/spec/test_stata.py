"""The Stata ``mixed`` front end: parsing, defaults and errors."""

import numpy as np
import pytest

import mixedfx
from mixedfx.cli import main
from mixedfx.errors import DataError, FormulaError, OptionError
from mixedfx.spec.stata import parse_mixed


def test_lecture_commands_translate():
    spec = parse_mixed("mixed gcse lrt_groupc || school: lrt_groupc, cov(uns) mle stddev")
    assert spec["formula"] == "gcse ~ 1 + lrt_groupc + (1 + lrt_groupc | school)"
    assert spec["covariance"] == {"school": "unstructured"}
    assert (spec["method"], spec["scale"]) == ("ml", "sd")
    spec = parse_mixed("mixed weight age_c age_sp girl age_c_girl age_sp_girl || id: , var")
    assert spec["formula"].endswith("+ (1 | id)") and spec["scale"] == "var" and spec["method"] == "ml"


def test_defaults_and_factor_variables():
    spec = parse_mixed("y i.sex##c.x || school: x || class:, reml level(90)")
    assert spec["formula"] == "y ~ 1 + C(sex) + x + C(sex):x + (1 + x | school) + (1 | class:school)"
    assert spec["covariance"] == {"school": "independent", "class:school": "identity"}
    assert spec["method"] == "reml" and spec["level"] == pytest.approx(90)
    assert parse_mixed("y x, noconstant || g: x, noconstant")["formula"] == "y ~ 0 + x + (0 + x | g)"


def test_a_continuous_variable_interacted_with_itself_is_its_power(sleepstudy):
    """Stata's c.x#c.x is x squared (formulaic alone would collapse x:x to x)."""
    assert parse_mixed("y c.x##c.x || g:")["formula"] == "y ~ 1 + x + I(x^2) + (1 | g)"
    assert parse_mixed("y c.x#c.x#c.x i.a#i.a || g:")["formula"] == "y ~ 1 + I(x^3) + C(a) + (1 | g)"
    stata = mixedfx.mixed("mixed Reaction c.Days##c.Days || Subject:, reml", sleepstudy)
    formula = mixedfx.fit("Reaction ~ Days + I(Days^2) + (1 | Subject)", sleepstudy)
    assert list(stata.fixef.index) == ["(Intercept)", "Days", "c.Days#c.Days"]
    assert stata.loglik == pytest.approx(formula.loglik, abs=1e-8)
    np.testing.assert_allclose(stata.fixef.to_numpy()[[1, 2]], formula.fixef.to_numpy()[[1, 2]], rtol=1e-8)


def test_stata_fit_matches_formula_fit(sleepstudy):
    a = mixedfx.mixed("Reaction Days || Subject: Days, covariance(unstructured) reml", sleepstudy)
    b = mixedfx.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    assert a.loglik == pytest.approx(b.loglik, abs=1e-8)
    assert a.display_scale == "var"


@pytest.mark.parametrize(
    "command, error, message",
    [
        ("y x", FormulaError, "No random-effects level"),
        ("y x || g", FormulaError, "needs 'levelvar:'"),
        ("y x || g:, covariance(weird)", OptionError, "Unknown covariance structure"),
        ("y x || g:, stdev", OptionError, "Did you mean 'stddev'"),
        ("y x || g:, noconstant", FormulaError, "has no random effects"),
        ("y x-1 || g:", FormulaError, "not a Stata variable name"),
        ("y x || _all: R.z", OptionError, "not supported"),
        ("|| g:", FormulaError, "dependent variable"),
    ],
)
def test_stata_syntax_errors(command, error, message):
    with pytest.raises(error, match=message):
        parse_mixed(command)


def test_stata_coefficient_names_and_base_levels(exam):
    exam = exam.assign(
        girl=(exam["sex"] == "F").astype(int), kind=exam["schgend"].map({"mixed": 1, "boys": 2, "girls": 3})
    )
    fit = mixedfx.mixed("mixed gcse c.lrt##i.kind i.girl || school: lrt, cov(uns) reml", exam)
    assert list(fit.fixef.index) == ["(Intercept)", "lrt", "2.kind", "3.kind", "1.girl", "c.lrt#2.kind", "c.lrt#3.kind"]
    assert "c.lrt#2.kind" in fit.to_dict()["fixef"] and "c.lrt#2.kind" in fit.coef_table().index
    assert fit.lincom("2.kind - 3.kind")["estimate"] == pytest.approx(fit.fixef["2.kind"] - fit.fixef["3.kind"])
    last = mixedfx.mixed("mixed gcse lrt ib(last).kind || school:, reml", exam)
    assert [n for n in last.fixef.index if "kind" in n] == ["1.kind", "2.kind"]
    third = mixedfx.mixed("mixed gcse lrt ib3.kind || school:, reml", exam)
    assert third.fixef["1.kind"] == pytest.approx(last.fixef["1.kind"], rel=1e-10)


def test_if_and_in_select_rows_as_stata(exam):
    exam = exam.assign(girl=(exam["sex"] == "F").astype(int))
    fit = mixedfx.mixed("mixed gcse lrt if girl == 1 & lrt > -15 in 1/3000 || school:, reml", exam)
    rows = exam.iloc[:3000]
    expected = mixedfx.fit("gcse ~ lrt + (1 | school)", rows[(rows["girl"] == 1) & (rows["lrt"] > -15)])
    assert fit.nobs == expected.nobs and fit.loglik == pytest.approx(expected.loglik, abs=1e-8)
    missing = exam.assign(lrt=exam["lrt"].where(exam.index % 10 != 0))
    above = mixedfx.mixed("mixed gcse girl if lrt > 10 || school:", missing)  # Stata: missing is larger than any number
    assert above.nobs == int(((missing["lrt"] > 10) | missing["lrt"].isna()).sum())
    with pytest.raises(FormulaError, match="not allowed|calls something|Cannot read the condition"):
        mixedfx.mixed("mixed gcse lrt if __import__('os') || school:", exam)


def test_vce_dfmethod_and_predict_follow_the_command(sleepstudy):
    fit = mixedfx.mixed("mixed Reaction Days || Subject: Days, cov(uns) reml vce(robust)", sleepstudy)
    assert "Robust SE" in str(fit.summary())
    kr = mixedfx.mixed("mixed Reaction Days || Subject: Days, cov(uns) reml dfmethod(kroger)", sleepstudy)
    assert "Kenward" in str(kr.summary()) or "kroger" in str(kr.summary())
    xb = fit.predict(sleepstudy.head(3))  # Stata's predict: xb by default
    np.testing.assert_allclose(xb["prediction"], fit.predict(sleepstudy.head(3), level="population")["prediction"])


def test_stata_command_line(capsys):
    command = "mixed weight age_c age_sp girl age_c_girl age_sp_girl || id:, variance"
    assert main(["stata", "asian", command, "--estat", "icc", "--estat", "group", "--estat", "recovariance"]) == 0
    out = capsys.readouterr().out
    assert "Mixed-effects ML regression" in out and "Intraclass correlation" in out and "No. of" in out


def test_estat_recovariance_prints_as_stata(capsys):
    command = "mixed gcse lrt_groupc || school: lrt_groupc, cov(uns) reml"
    assert main(["stata", "exam", command, "--estat", "recovariance"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = out.index("Random-effects covariance matrix for level school")
    assert out[header + 2].split() == ["|", "lrt_gr~c", "_cons"]  # slopes first, Stata's names
    assert out[header + 4].split()[:2] == ["lrt_gr~c", "|"] and len(out[header + 4].split()) == 3  # lower triangle
    assert out[header + 5].split()[0] == "_cons" and len(out[header + 5].split()) == 4


def test_if_conditions_refuse_type_mismatch_and_empty_selections(exam):
    with pytest.raises(DataError, match="type mismatch.*schgend == 1"):
        mixedfx.mixed("mixed gcse lrt if schgend == 1 || school:", exam)
    with pytest.raises(DataError, match="select no observations"):
        mixedfx.mixed("mixed gcse lrt if lrt > 1000 & lrt < . || school:", exam)
    girls = mixedfx.mixed('mixed gcse lrt if schgend == "girls" || school:', exam)
    assert girls.nobs == int((exam["schgend"] == "girls").sum())


def test_conditions_cannot_reach_python(exam):
    for condition in ("__import__ == 1", "open(lrt) > 1", "lrt.real > 1"):
        with pytest.raises(FormulaError):
            mixedfx.mixed(f"mixed gcse lrt if {condition} || school:", exam)


# ---------------------------------------------------------------------------- sampling weights
def test_sampling_weights_are_read_from_the_weight_clause_and_the_levels():
    spec = parse_mixed("mixed y x [pw=w1] || school: || klass:, pweight(w2) pwscale(effective)")
    assert spec["pweights"] == {"": "w1", "klass:school": "w2"}
    assert spec["pwscale"] == "effective"
    assert spec["formula"] == "y ~ 1 + x + (1 | school) + (1 | klass:school)"
    plain = parse_mixed("mixed y x || g:")
    assert plain["pweights"] is None and plain["pwscale"] is None


def test_the_weight_clause_may_follow_if_and_in():
    spec = parse_mixed("mixed y x if x > 0 in 1/50 [pweight = w1] || g:, pweight(w2)")
    assert spec["pweights"] == {"": "w1", "g": "w2"} and spec["in"] == "1/50"


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("mixed y x [fw=f] || g:", r"\[fw=...\] weights are not supported"),
        ("mixed y x [pw=exp(w)] || g:", "needs a variable name"),
        ("mixed y x || g:, pweight(__import__('os'))", "needs a variable name"),
        ("mixed y x [pw=w] || g:, pwscale(huge)", r"pwscale\(huge\) is not supported"),
        ("mixed y x [pw=w] [pw=v] || g:", "Give one weight clause"),
        ("mixed y x [pw=w [pw=v]] || g:", "needs a variable name"),
    ],
)
def test_bad_weight_syntax_is_refused(command, message):
    with pytest.raises((OptionError, FormulaError), match=message):
        parse_mixed(command)


# ---------------------------------------------------------------------------- postestimation
def test_margins_commands_are_parsed():
    from mixedfx.spec.stata import parse_postestimation

    spec = parse_postestimation("margins schgend, at(lrt=(-20(10)20) girl=1) over(sex) pwcompare mcompare(holm)")
    assert spec["command"] == "margins" and spec["specs"] == ["schgend"] and spec["operator"] == "pw"
    assert spec["at"] == {"lrt": [-20.0, -10.0, 0.0, 10.0, 20.0], "girl": [1.0]}
    assert spec["over"] == ["sex"] and spec["adjust"] == "holm"
    assert parse_postestimation("margins, dydx(x z) level(90)")["dydx"] == ["x", "z"]
    assert parse_postestimation("margins r.schgend")["operator"] == "r"
    assert parse_postestimation("contrast schgend")["operator"] == "r"
    assert parse_postestimation("pwcompare schgend, mcompare(noadjust)")["adjust"] == "none"
    assert parse_postestimation("margins, at(age=(0(0.25)1))")["at"]["age"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_postestimation("margins, at(k=(1/3) g=(girls boys))")["at"] == {"k": [1, 2, 3], "g": ["girls", "boys"]}


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("predict xb", "Unknown postestimation command"),
        ("margins x, mcompare(tukey)", r"mcompare\(tukey\) is not supported"),
        ("margins, at(x=(0(-1)3))", "does not reach"),
        ("margins, at(x=())", "empty numlist"),
        ("margins, at(x=(1 __import__('os')))", "Cannot read"),
        ("margins, at(x=(1 2)", "Unbalanced parentheses"),
        ("margins, post", "Unknown margins option 'post'"),
        ("contrast r.a, at(x=1)", "takes no at"),
        ("margins a.b.c", "Cannot read"),
    ],
)
def test_bad_postestimation_commands_are_refused(command, message):
    from mixedfx.spec.stata import parse_postestimation

    with pytest.raises(OptionError, match=message):
        parse_postestimation(command)


def test_postestimation_after_mixed_runs_margins_and_stata_s_pwcompare(exam):
    fit = mixedfx.mixed("mixed gcse lrt i.schgend || school:", exam)
    margins = fit.postestimation("margins schgend")
    direct = fit.margins("schgend")
    np.testing.assert_allclose(margins.table["estimate"], direct.table["estimate"], rtol=1e-12)
    pairs = fit.postestimation("pwcompare schgend, mcompare(bonferroni)")
    assert list(pairs.table["contrast"]) == ["girls vs boys", "mixed vs boys", "mixed vs girls"]
    emmeans_order = fit.contrast("pw.schgend", adjust="bonferroni")
    np.testing.assert_allclose(pairs.table["estimate"].iloc[0], -emmeans_order.table["estimate"].iloc[0], rtol=1e-12)
    np.testing.assert_allclose(sorted(pairs.table["p"]), sorted(emmeans_order.table["p"]), rtol=1e-12)


def test_cli_runs_post_commands_and_draws_marginsplot(tmp_path, capsys):
    png = tmp_path / "margins.png"
    code = main(
        [
            "stata",
            "exam",
            "mixed gcse lrt i.schgend || school:",
            "--post",
            "margins schgend",
            "--post",
            "margins, at(lrt=(-20(20)20)) over(schgend)",
            "--marginsplot",
            str(png),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and ". margins schgend" in out and "Predictive margins" in out and "lrt=20, mixed" in out
    assert png.stat().st_size > 10_000
    assert main(["stata", "exam", "mixed gcse lrt || school:", "--post", "margins, bogus"]) == 2
    assert "Unknown margins option 'bogus'" in capsys.readouterr().err


def test_generalized_commands_refuse_sampling_weights():
    data = mixedfx.datasets.load("cbpp").assign(w=1.0)
    with pytest.raises(OptionError, match="melogit does not take sampling weights"):
        mixedfx.mixed("melogit incidence i.period [pw=w] || herd:, binomial(size)", data)
