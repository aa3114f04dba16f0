"""Confidence levels are percentages everywhere (Stata's unit); display digits 1-7; anything else is refused."""

import numpy as np
import pytest
from scipy import stats as st

import mixedfx
from mixedfx.cli import main
from mixedfx.errors import OptionError
from mixedfx.spec.options import confidence_level, display_digits, two_sided_quantile
from mixedfx.spec.stata import parse_mixed


def test_percent_levels():
    assert confidence_level(95) == pytest.approx(0.95)
    assert two_sided_quantile(90) == pytest.approx(st.norm.ppf(0.95))


@pytest.mark.parametrize(
    "bad, message",
    [(0.95, "write level=95"), (0, "between 10"), (100, "between 10"), (-5, "between 10"), ("x", "percentage")],
)
def test_bad_levels_are_refused(bad, message):
    with pytest.raises(OptionError, match=message):
        confidence_level(bad)


def test_every_entry_point_refuses_a_fraction(sleepstudy, capsys):
    fit = mixedfx.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    for call in (
        lambda: fit.coef_table(level=0.9),
        lambda: fit.re_table(level=0.9),
        lambda: fit.summary(level=0.9),
        lambda: fit.rank(term="Days", level=0.9),
        lambda: fit.lincom("Days", level=0.9),
        lambda: fit.predict(sleepstudy.head(2), interval="confidence", conf_level=0.9),
        lambda: fit.confint(level=0.9),
    ):
        with pytest.raises(OptionError, match="level is a percentage"):
            call()
    with pytest.raises(OptionError, match="level is a percentage"):
        parse_mixed("mixed Reaction Days || Subject:, level(0.95)")
    assert main(["fit", "sleepstudy", "Reaction ~ Days + (1 | Subject)", "--level", "0.95"]) == 2
    assert "level is a percentage" in capsys.readouterr().err


def test_intervals_are_ordered_and_widen_with_the_level(sleepstudy):
    fit = mixedfx.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    narrow, wide = fit.re_table(level=80), fit.re_table(level=99)
    assert np.all(narrow["lower"] <= narrow["upper"]) and np.all(wide["lower"] < narrow["lower"])


@pytest.mark.parametrize("bad", [0, -1, 8, 2.5, True, "5"])
def test_bad_digits_are_refused(bad, sleepstudy):
    with pytest.raises(OptionError, match="digits must be a whole number from 1 to 7"):
        display_digits(bad)
    fit = mixedfx.fit("Reaction ~ Days + (1 | Subject)", sleepstudy)
    with pytest.raises(OptionError, match="digits"):
        fit.summary(digits=bad)


def test_fewer_digits_round_the_table(sleepstudy):
    fit = mixedfx.fit("Reaction ~ Days + (1 | Subject)", sleepstudy)
    assert display_digits(np.int64(3)) == 3
    assert "10.467" in str(fit.summary()) and "10.467" not in str(fit.summary(digits=3))
    assert " 10.5 " in str(fit.summary(digits=3))
