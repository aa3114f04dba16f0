"""The documented lecture example runs end to end and writes its document, images and reports."""

import runpy
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lecture.py"


def test_lecture_example_writes_docs(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), str(tmp_path)])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    text = (tmp_path / "lecture.md").read_text()
    assert "Mixed-effects REML regression" in text and "Mixed-effects ML regression" in text
    assert "chibar2(01)" in text and "above average" in text
    images = sorted(p.name for p in (tmp_path / "img").glob("*.png"))
    assert len(images) == 8
    for name in images:
        assert f"img/{name}" in text
    for report in ["schools_report.html", "growth_report.html"]:
        assert (tmp_path / report).stat().st_size > 50_000
