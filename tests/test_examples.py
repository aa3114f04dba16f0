"""The documented examples run end to end, and the tracked docs/lecture.md and docs/binary.md are what
they write."""

import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "lecture.py"
TRACKED = ROOT / "docs" / "lecture.md"

# A number as the document prints it: 4,059, -.15999, 3.9e-10, 0.0000.
NUMBER = re.compile(r"(?<![\w.])-?(?:\d[\d,]*)?\.?\d+(?:e[-+]?\d+)?")


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lecture")
    argv = sys.argv
    sys.argv = [str(EXAMPLE), str(out)]
    try:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    finally:
        sys.argv = argv
    return out


def test_lecture_example_writes_docs(written):
    text = (written / "lecture.md").read_text()
    assert "Mixed-effects REML regression" in text and "Mixed-effects ML regression" in text
    assert "chibar2(01)" in text and "lie above average" in text
    assert "testparm i.schtype#c.lrt_groupc" in text and "estat icc" in text
    images = sorted(p.name for p in (written / "img").glob("*.png"))
    assert len(images) == 12
    for name in images:
        assert f"img/{name}" in text
    for report in ["schools_report.html", "growth_report.html"]:
        assert (written / report).stat().st_size > 50_000


def _last_digit_unit(token: str) -> float:
    """The value of one unit in the last printed digit: 0.001 for ``.553``, 1 for ``4,059``."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def _numbers_and_words(text: str) -> tuple[list[str], str]:
    return NUMBER.findall(text), NUMBER.sub("#", text)


def test_tracked_lecture_document_is_current(written):
    """Regenerating docs/lecture.md changes no word and no number beyond its last printed digit.

    Exact equality would depend on the machine's BLAS at a rounding boundary; a number may
    therefore differ by one unit in its last digit, but anything else means the document is
    stale: rerun ``python examples/lecture.py``.
    """
    _assert_same_document((written / "lecture.md").read_text(), TRACKED.read_text(), "lecture")


def _assert_same_document(new_text: str, old_text: str, name: str) -> None:
    new_numbers, new_words = _numbers_and_words(new_text)
    old_numbers, old_words = _numbers_and_words(old_text)
    assert new_words == old_words, f"docs/{name}.md is stale: rerun python examples/{name}.py"
    assert len(new_numbers) == len(old_numbers)
    for new, old in zip(new_numbers, old_numbers, strict=True):
        unit = max(_last_digit_unit(new), _last_digit_unit(old))
        assert abs(float(new.replace(",", "")) - float(old.replace(",", ""))) <= 1.01 * unit, (new, old)


def _run_example(name: str, out: Path) -> str:
    """Run examples/NAME.py writing into ``out``; the document it wrote."""
    argv = sys.argv
    sys.argv = [str(ROOT / "examples" / f"{name}.py"), str(out)]
    try:
        runpy.run_path(str(ROOT / "examples" / f"{name}.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return (out / f"{name}.md").read_text()


def test_binary_example_writes_its_document_and_it_is_current(tmp_path):
    """examples/binary.py (melogit on Contraception) runs clean and docs/binary.md is what it writes."""
    text = _run_example("binary", tmp_path)
    assert "Mixed-effects logistic regression" in text and "Odds Ratio" in text and "c.age#c.age" in text
    assert sorted(p.name for p in (tmp_path / "img").glob("binary_*.png")) == [
        "binary_caterpillar.png",
        "binary_probability.png",
    ]
    _assert_same_document(text, (ROOT / "docs" / "binary.md").read_text(), "binary")


def test_survey_example_writes_its_document_and_it_is_current(tmp_path):
    """examples/survey.py (PISA 2000 with weights at two levels) runs clean and docs/survey.md is what it writes."""
    text = _run_example("survey", tmp_path)
    assert "Log pseudolikelihood = -1443093.9" in text and "(Std. err. adjusted for 148 clusters in id_school)" in text
    assert sorted(p.name for p in (tmp_path / "img").glob("survey_*.png")) == ["survey_coefficients.png"]
    _assert_same_document(text, (ROOT / "docs" / "survey.md").read_text(), "survey")
