"""Parsing lme4 formulas into fixed part and random terms."""

import re

import pytest

from mixedfx.errors import FormulaError
from mixedfx.spec.formula import expand_dot, parse_formula


def test_random_slope_and_fixed_part():
    p = parse_formula("y ~ x*z + np.log(w) + (1 + x | g)")
    assert p.response == "y"
    assert p.fixed == "x*z + np.log(w)"
    assert len(p.random) == 1
    term = p.random[0]
    assert (term.expr, term.factor, term.covariance) == ("1 + x", ("g",), "unstructured")


def test_double_bar_is_independent():
    (term,) = parse_formula("y ~ x + (x || g)").random
    assert term.covariance == "independent"
    assert term.expr == "x"


def test_nesting_expands_like_lme4():
    terms = parse_formula("y ~ 1 + (1 | a/b/c)").random
    assert [t.group_name for t in terms] == ["a", "b:a", "c:b:a"]


def test_interaction_factor_and_crossed_terms():
    terms = parse_formula("y ~ (1 | a:b) + (1 | c)").random
    assert [t.factor for t in terms] == [("a", "b"), ("c",)]
    assert parse_formula("y ~ (1 | a:b) + (1 | c)").fixed == "1"


def test_intercept_removal_is_kept_in_fixed_part():
    assert parse_formula("y ~ 0 + x + (1 | g)").fixed == "0 + x"
    assert parse_formula("y ~ x - 1 + (1 | g)").fixed == "x - 1"


def test_parenthesised_fixed_terms_are_not_random():
    p = parse_formula("y ~ (a + b):c + (1 | g)")
    assert p.fixed == "(a + b):c"


@pytest.mark.parametrize(
    "formula, message",
    [
        ("y x + (1|g)", "exactly one '~'"),
        ("y ~ x + (1|g", "Unclosed '('"),
        ("y ~ x + 1|g)", "Unbalanced ')'"),
        ("y ~ x + ( | g)", "nothing before '|'"),
        ("y ~ x + (1 | )", "no grouping factor"),
        ("y ~ x + + (1|g)", "Empty term"),
        ("~ x + (1|g)", "no response"),
        ("y ~ x | g", "parenthesised random term"),
        ("y ~ (1 | g + h)", "must be a column name"),
        ("", "non-empty string"),
    ],
)
def test_syntax_errors_name_the_problem(formula, message):
    with pytest.raises(FormulaError, match=re.escape(message)):
        parse_formula(formula)


def test_syntax_error_marks_position():
    with pytest.raises(FormulaError) as info:
        parse_formula("y ~ x + (1|g")
    lines = str(info.value).splitlines()
    assert lines[-1].index("^") == lines[-2].index("g") + 1


def test_offsets_are_split_out_of_the_fixed_part():
    parsed = parse_formula("y ~ x + offset(log(n)) + offset(z) + (1 | g)")
    assert parsed.fixed == "x" and parsed.offsets == ("log(n)", "z")


def test_dot_waits_for_the_columns():
    parsed = parse_formula("y ~ . - b + (1 | g)")
    assert parsed.has_dot
    with pytest.raises(FormulaError, match="expanded when the formula meets the data"):
        _ = parsed.fixed_formula
    expanded = expand_dot(parsed, ["y", "a", "b", "g", "w"], exclude=["w"])
    assert expanded.fixed_formula == "y ~ (`a` + `b`) - b" and not expanded.has_dot
    assert expand_dot(parse_formula("y ~ x + (1 | g)"), ["y", "x", "g"]).fixed == "x"  # no dot: unchanged
