"""The HTML report: well-formed, self-contained, every section and image, data strings escaped."""

from html.parser import HTMLParser

import numpy as np
import pandas as pd

import mixedfx
from mixedfx.cli import main

VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images, self.headings, self.scripts = [], [], [], [], 0
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts += 1
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def _check(html: str) -> _Checker:
    checker = _Checker()
    checker.feed(html)
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    assert html.startswith("<!DOCTYPE html>")
    return checker


def test_growth_report_has_every_section_and_image(tmp_path):
    data = mixedfx.datasets.load_asian()
    fit = mixedfx.fit("weight ~ age_c + age_sp + girl + age_c_girl + age_sp_girl + (1 | id)", data, method="ml")
    path = fit.report(tmp_path / "growth.html", x="age", time="occ", by="girl", progress=False)
    html = path.read_text()
    checker = _check(html)
    for section in [
        "Data",
        "Model",
        "Intraclass correlation",
        "LR test against linear regression",
        "Residual autocorrelation",
        "Plots",
    ]:
        assert section in checker.headings, section
    alts = [img["alt"] for img in checker.images]
    assert alts == [
        "observed trajectories",
        "cluster OLS lines",
        "cluster OLS intercepts vs slopes",
        "shrinkage",
        "predicted mean by girl",
        "caterpillar plot",
        "residual diagnostics",
        "residual autocorrelation",
    ]
    assert all(img["src"].startswith("data:image/png;base64,") for img in checker.images)
    assert "http" not in html and checker.scripts == 0


def test_cli_report_with_progress(tmp_path, capsys):
    out = tmp_path / "schools.html"
    assert main(["report", "exam", "gcse ~ lrt_groupc + (1 + lrt_groupc | school)", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "report [8/8]" in err
    html = out.read_text()
    checker = _check(html)
    assert "Ranking of school by its (Intercept) EB estimate" in checker.headings
    alts = [img["alt"] for img in checker.images]
    assert "observed trajectories" not in alts  # students in schools are not trajectories
    assert alts[:2] == ["first clusters", "cluster OLS lines"] and "OLS and EB lines" in alts
    assert "Within-cluster correlation" in checker.headings and "fit.wcorrelation" not in html  # no API hints
    assert main(["report", "exam", "gcse ~ lrt_groupc + (1 | school)", "--time", "nope", "-o", str(out)]) == 2


def test_hostile_names_are_escaped(tmp_path):
    rng = np.random.default_rng(0)
    g = np.repeat([f"<script>alert({i})</script>" for i in range(12)], 6)
    x = rng.normal(size=g.size)
    data = pd.DataFrame({"y<b>": x + rng.normal(size=g.size) + rng.normal(size=12).repeat(6), "x": x, "g": g})
    data = data.rename(columns={"y<b>": "y"})
    data["g"] = data["g"]
    fit = mixedfx.fit("y ~ x + (1 | g)", data)
    html = fit.report(tmp_path / "r.html", progress=False).read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<script>" not in fit._repr_html_()
