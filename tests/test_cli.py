"""The command line: summary, JSON layout, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mixedfx.cli import main


def test_json_output_layout(capsys):
    assert main(["fit", "sleepstudy", "Reaction ~ Days + (Days | Subject)", "--json", "--method", "ml"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ["formula", "method", "nobs", "ngroups", "loglik", "converged", "fixef", "se", "sigma", "varcorr"]:
        assert key in out
    assert out["method"] == "ML" and out["ngroups"] == {"Subject": 18}
    assert out["loglik"] == pytest.approx(-875.969672, abs=1e-5)
    rows = {(r["group"], r["var1"], r["var2"]) for r in out["varcorr"]}
    assert ("Subject", "(Intercept)", "Days") in rows
    assert ("Residual", None, None) in rows
    assert "ranef" not in out


def test_json_ranef(capsys):
    assert main(["fit", "sleepstudy", "Reaction ~ Days + (Days | Subject)", "--json", "--ranef"]) == 0
    out = json.loads(capsys.readouterr().out)
    first = out["ranef"]["Subject"][0]
    assert first["level"] == "308"
    assert first["value"]["Days"] == pytest.approx(9.19902, rel=1e-4)
    assert set(first["se"]) == {"(Intercept)", "Days"}


def test_text_summary(capsys):
    assert main(["fit", "sleepstudy", "Reaction ~ Days + (Days | Subject)", "--stddev"]) == 0
    out = capsys.readouterr().out
    assert "Mixed-effects REML regression" in out
    assert "sd(Days)" in out and "corr(" in out
    assert "LR test vs. linear model" in out


def test_errors_are_one_line_without_traceback(capsys, tmp_path):
    assert main(["fit", "sleepstudy", "Reaction ~ Dayz + (1 | Subject)"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixedfx: error: Unknown variable 'Dayz'")
    assert "Traceback" not in err
    assert main(["fit", str(tmp_path / "nope.csv"), "y ~ x + (1|g)"]) == 2
    assert "not found" in capsys.readouterr().err


def test_python_dash_m_works():
    proc = subprocess.run(
        [sys.executable, "-m", "mixedfx", "fit", "pastes", "strength ~ 1 + (1 | batch/cask)", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout)["ngroups"] == {"cask:batch": 30, "batch": 10}


@pytest.mark.parametrize(
    "argv",
    [
        ["fit", "sleepstudy", "Reaction ~ Days + (1 | Subject"],
        ["fit", "sleepstudy", "Reaction ~ Days + (1 | Nope)"],
        ["fit", "no_such_file.csv", "y ~ x + (1 | g)"],
        ["fit", "sleepstudy"],
        ["fit", "sleepstudy", "Reaction ~ Days + (1 | Subject)", "--method", "bayes"],
        ["fit", "sleepstudy", "Reaction ~ Days + (1 | Subject)", "--level", "0.95"],
        ["fit", "sleepstudy", "Reaction ~ C(Subject) + (1 | Subject)"],
        ["fit", "sleepstudy", "Reaction ~ np.load(Days) + (1 | Subject)"],
        ["report", "sleepstudy", "Reaction ~ Days + (1 | Subject)", "--x", "nope"],
    ],
)
def test_every_error_is_one_line_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        raise SystemExit(main(argv))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mixedfx: error: ")
    assert "Traceback" not in err and "\x1b[" not in err


def test_report_on_small_clusters_with_integer_ages(tmp_path):
    """nlme's Orthodont layout: 27 children, 4 visits each at integer ages 8..14 (was a KeyError)."""
    rng = np.random.default_rng(0)
    subject = np.repeat([f"S{k:02d}" for k in range(27)], 4)
    age = np.tile([8, 10, 12, 14], 27)
    sex = np.repeat(rng.choice(["Male", "Female"], 27), 4)
    distance = 17 + 0.6 * age + np.repeat(rng.normal(0, 2, 27), 4) + rng.normal(0, 1.4, age.size)
    source = tmp_path / "orthodont.csv"
    pd.DataFrame({"distance": distance, "age": age, "Subject": subject, "Sex": sex}).to_csv(source, index=False)
    output = tmp_path / "o.html"
    assert main(["report", str(source), "distance ~ age + (age | Subject)", "--by", "Sex", "-o", str(output)]) == 0
    assert output.exists()


def test_glmm_fit_text_and_json(capsys):
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    assert main(["fit", "cbpp", formula, "--family", "binomial", "--or"]) == 0
    out = capsys.readouterr().out
    assert "Mixed-effects logistic regression" in out and "Odds Ratio" in out
    assert main(["fit", "cbpp", formula, "--family", "binomial", "--nagq", "7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nagq"] == 7 and out["family"] == "binomial" and out["link"] == "logit"
    assert out["loglik"] == pytest.approx(-91.98335, abs=1e-4)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--nagq", "7"], "--nagq applies to generalized models"),
        (["--family", "binomial", "--method", "reml"], "--method reml"),
        (["--family", "binomial", "--link", "log"], "link 'log'"),
        (["--family", "binomial", "--residuals", "ar1"], "--residuals"),
    ],
)
def test_glmm_flags_are_checked(extra, match, capsys):
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    assert main(["fit", "cbpp", formula, *extra]) == 2
    assert match in capsys.readouterr().err


def test_a_reader_that_closes_the_pipe_is_not_an_error():
    """``mixedfx fit ... | head -1``: the output's reader leaves early; exit 0, nothing on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mixedfx", "fit", "sleepstudy", "Reaction ~ Days + (Days | Subject)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before the fit has printed anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""


def test_warnings_are_printed_as_they_are_raised_one_line_each(capsys, monkeypatch):
    import warnings

    import mixedfx.cli as cli

    seen_during_fit = []

    def fit_that_warns(*args, **kwargs):
        for _ in range(2):  # the same place twice: printed twice, each before the fit goes on
            warnings.warn("first line\nsecond line", UserWarning, stacklevel=1)
            seen_during_fit.append(capsys.readouterr().err)
        return real_fit(*args, **kwargs)

    real_fit = cli.fit
    monkeypatch.setattr(cli, "fit", fit_that_warns)
    assert main(["fit", "exam", "gcse ~ lrt_groupc + (1 | school)"]) == 0
    assert seen_during_fit == ["mixedfx: warning: first line second line\n"] * 2
    assert "Number of obs" in capsys.readouterr().out
