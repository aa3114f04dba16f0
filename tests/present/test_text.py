"""Stata-style text tables: abbreviations as Stata, never two rows that read alike."""

import mixedfx
from mixedfx.present.text import stata_abbrev, unambiguous_width


def test_stata_abbreviation_keeps_start_and_last_character():
    assert stata_abbrev("lrt_groupc", 8) == "lrt_gr~c"
    assert stata_abbrev("short", 8) == "short"


def test_width_grows_only_when_abbreviations_collide():
    assert unambiguous_width(["lrt_groupc", "girl"], 8) == 8
    names = ["c.lrt_groupc#2.schtype", "c.lrt_groupc#3.schtype"]
    assert stata_abbrev(names[0], 12) == stata_abbrev(names[1], 12)
    assert unambiguous_width(names, 12) == len(names[0])


def test_interaction_rows_stay_distinct_in_the_coefficient_table(exam):
    exam = exam.assign(schtype=exam["schgend"].map({"mixed": 1, "boys": 2, "girls": 3}))
    fit = mixedfx.mixed("mixed gcse c.lrt_groupc##i.schtype || school:, reml", exam)
    text = str(fit)
    assert "c.lrt_groupc#2.schtype |" in text and "c.lrt_groupc#3.schtype |" in text
    assert "   2.schtype |" in text  # the other rows are right-aligned in the wider column
