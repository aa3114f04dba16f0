"""LR tests refuse pairs of fits that are not nested."""

import pytest

import mixedfx
from mixedfx.errors import OptionError


def _ml(formula, data, **options):
    return mixedfx.fit(formula, data, method="ml", **options)


def test_nested_pairs_are_tested(sleepstudy):
    small = _ml("Reaction ~ Days + (1 | Subject)", sleepstudy)
    big = _ml("Reaction ~ Days + (Days | Subject)", sleepstudy)
    lr = mixedfx.lrtest(big, small)
    assert lr.df == 2 and lr.statistic > 0 and "conservative" in lr.label
    fixed = mixedfx.lrtest(small, _ml("Reaction ~ 1 + (1 | Subject)", sleepstudy))
    assert fixed.df == 1 and "conservative" not in fixed.label


@pytest.mark.parametrize(
    "first, second, message",
    [
        ("Reaction ~ Days + (1 | Subject)", "log(Reaction) ~ Days + (Days | Subject)", "different responses"),
        ("Reaction ~ I(Days**2) + (1 | Subject)", "Reaction ~ Days + (Days | Subject)", "fixed effects"),
        ("Reaction ~ Days + (0 + Days | Subject)", "Reaction ~ Days + I(Days**2) + (1 | Subject)", "random effect"),
    ],
)
def test_pairs_that_are_not_nested_are_refused(sleepstudy, first, second, message):
    with pytest.raises(OptionError, match=message):
        mixedfx.lrtest(_ml(first, sleepstudy), _ml(second, sleepstudy))


def test_different_rows_and_structures_are_refused(sleepstudy):
    base = _ml("Reaction ~ Days + (Days | Subject)", sleepstudy)
    other = sleepstudy.assign(Reaction=sleepstudy["Reaction"] + 1.0)
    with pytest.raises(OptionError, match="different data"):
        mixedfx.lrtest(_ml("Reaction ~ Days + (1 | Subject)", other), base)
    exchangeable = _ml("Reaction ~ Days + (Days | Subject)", sleepstudy, covariance={"Subject": "exchangeable"})
    independent = _ml("Reaction ~ Days + I(Days**2) + (Days || Subject)", sleepstudy)
    with pytest.raises(OptionError, match="not a special case"):
        mixedfx.lrtest(exchangeable, independent)
