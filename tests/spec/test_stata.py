"""The Stata ``mixed`` front end: parsing, defaults and errors."""

import pytest

import mixedfx
from mixedfx.errors import FormulaError, OptionError
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
    assert spec["formula"] == "y ~ 1 + C(sex)*x + (1 + x | school) + (1 | class:school)"
    assert spec["covariance"] == {"school": "independent", "class:school": "identity"}
    assert spec["method"] == "reml" and spec["level"] == pytest.approx(90)
    assert parse_mixed("y x, noconstant || g: x, noconstant")["formula"] == "y ~ 0 + x + (0 + x | g)"


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
