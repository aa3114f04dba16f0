"""R's formula syntax means what it means in R (never Python's XOR for ^)."""

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx.errors import FormulaError
from mixedfx.spec.formula import parse_formula
from mixedfx.spec.rsyntax import r_column_name, translate


@pytest.mark.parametrize(
    "r, python",
    [
        ("y ~ I(x^2) + (1 | g)", "y ~ I(x**2) + (1 | g)"),
        ("y ~ (a + b)^2", "y ~ (a + b)^2"),  # crossing at the formula level stays
        ("y ~ log(x^2)", "y ~ log(x**2)"),
        ("y ~ poly(x, 2, raw = TRUE)", "y ~ poly(x, 2, raw = True)"),
        ("y ~ bs(x, knots = c(1, 2))", "y ~ bs(x, knots = [1, 2])"),
        ("y ~ as.factor(f) + as.numeric(z)", "y ~ factor(f) + as_numeric(z)"),
        ("y ~ log(Sepal.Length) + np.log(x)", "y ~ log(`Sepal.Length`) + np.log(x)"),
        ("y ~ a %in% b", "y ~ a : b"),
        ("y ~ C(f, contr.treatment('a^b'))", "y ~ C(f, contr.treatment('a^b'))"),  # strings untouched
    ],
)
def test_translation(r, python):
    assert translate(r) == python


def test_membership_inside_a_call_is_refused():
    with pytest.raises(FormulaError, match="%in%"):
        translate("y ~ I(x %in% z)")


def test_power_inside_I_is_a_power_not_xor(sleepstudy):
    r_style = mixedfx.fit("Reaction ~ Days + I(Days^2) + (1 | Subject)", sleepstudy)
    python_style = mixedfx.fit("Reaction ~ Days + I(Days**2) + (1 | Subject)", sleepstudy)
    np.testing.assert_allclose(r_style.fixef.to_numpy(), python_style.fixef.to_numpy(), rtol=1e-12)
    assert list(r_style.fixef.index) == ["(Intercept)", "Days", "I(Days^2)"]  # lme4's name
    xor = sleepstudy.assign(d2=sleepstudy["Days"].to_numpy() ^ 2)
    wrong = mixedfx.fit("Reaction ~ Days + d2 + (1 | Subject)", xor)
    assert abs(r_style.fixef["I(Days^2)"] - wrong.fixef["d2"]) > 0.1


@pytest.mark.parametrize(
    "formulaic, r",
    [
        ("I(x ** 2)", "I(x^2)"),
        ("as_numeric(z)", "as.numeric(z)"),
        ("log(`Sepal.Length`)", "log(Sepal.Length)"),
        ("bs(x, knots=[3, 6], degree=2)[1]", "bs(x, knots = c(3, 6), degree = 2)1"),
        ("poly(x, 2, raw=True)[2]", "poly(x, 2, raw = TRUE)2"),
        ("sin(2 * pi * x / 7)", "sin(2 * pi * x/7)"),
        ("poly(x, 2)[1]:I(x > 4)[False]", "poly(x, 2)1:I(x > 4)FALSE"),
        ("I(x > 4)[T.True]", "I(x > 4)TRUE"),
        ("I(x == 1)", "I(x == 1)"),
        ("lrt:sex[T.M]", "lrt:sexM"),
        ("f[T.a=b]", "fa=b"),  # level labels are copied as they are
    ],
)
def test_column_names_are_written_back_as_lme4_prints_them(formulaic, r):
    assert r_column_name(formulaic) == r


def test_grouping_terms_as_lme4_expands_them():
    parsed = parse_formula("y ~ 1 + (1 | a*b) + (1 | `plant type`) + (1 | Site.Id)")
    assert [t.factor for t in parsed.random] == [("a",), ("b",), ("a", "b"), ("plant type",), ("Site.Id",)]
    assert parse_formula("y ~ 1 + (1 | a/b)").random[1].factor == ("b", "a")


def test_dotted_names_in_r_formulas():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(10), 8)
    x = rng.uniform(1, 3, g.size)
    data = pd.DataFrame({"Sepal.Width": 2 * np.log(x) + rng.normal(size=10)[g] + rng.normal(size=g.size)})
    data["Sepal.Length"], data["Plant.Id"] = x, g
    fit = mixedfx.fit("Sepal.Width ~ log(Sepal.Length) + (1 | Plant.Id)", data)
    assert list(fit.fixef.index) == ["(Intercept)", "log(Sepal.Length)"]
    assert fit.ngroups == {"Plant.Id": 10}
