"""The documented lecture example runs end to end, and the tracked docs/lecture.md is what it writes."""

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
    assert len(images) == 11
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
    new_numbers, new_words = _numbers_and_words((written / "lecture.md").read_text())
    old_numbers, old_words = _numbers_and_words(TRACKED.read_text())
    assert new_words == old_words, "docs/lecture.md is stale: rerun python examples/lecture.py"
    assert len(new_numbers) == len(old_numbers)
    for new, old in zip(new_numbers, old_numbers, strict=True):
        unit = max(_last_digit_unit(new), _last_digit_unit(old))
        assert abs(float(new.replace(",", "")) - float(old.replace(",", ""))) <= 1.01 * unit, (new, old)
