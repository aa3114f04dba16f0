"""Nothing a user supplies is ever executed: formulas, column names, Stata commands, output paths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx.cli import main
from mixedfx.errors import DataError, FormulaError
from mixedfx.spec.expressions import check_expression, expression_variables, quote_name


def _payload(marker) -> str:
    """A formula term that, if evaluated, creates ``marker`` through the shell."""
    return f"I(eval(\"__import__('os').system('touch {marker}')\") + Days)"


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "user input was executed"


def test_python_api_refuses_code_in_a_formula(sleepstudy, marker):
    with pytest.raises(FormulaError, match="forbidden name 'eval'"):
        mixedfx.fit(f"Reaction ~ Days + {_payload(marker)} + (1 | Subject)", sleepstudy)


def test_random_term_and_response_are_checked_too(sleepstudy, marker):
    with pytest.raises(FormulaError, match="forbidden name"):
        mixedfx.fit(f"Reaction ~ Days + ({_payload(marker)} | Subject)", sleepstudy)
    with pytest.raises(FormulaError, match="forbidden name"):
        mixedfx.fit(f"{_payload(marker)} ~ Days + (1 | Subject)", sleepstudy)


def test_cli_refuses_code_in_a_formula(marker, capsys):
    status = main(["fit", "sleepstudy", f"Reaction ~ Days + {_payload(marker)} + (1 | Subject)"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "forbidden name 'eval'" in err


def test_stata_front_end_refuses_code(sleepstudy, marker):
    with pytest.raises(FormulaError):
        mixedfx.mixed(f"mixed Reaction Days {_payload(marker)} || Subject:", sleepstudy)


def test_duckdb_engine_refuses_before_reading(sleepstudy, marker, tmp_path):
    pytest.importorskip("duckdb")
    path = tmp_path / "sleep.parquet"
    sleepstudy.to_parquet(path)
    with pytest.raises(FormulaError, match="forbidden name 'eval'"):
        mixedfx.fit(f"Reaction ~ Days + {_payload(marker)} + (1 | Subject)", str(path), engine="duckdb")


def test_dask_engine_refuses(sleepstudy, marker):
    dd = pytest.importorskip("dask.dataframe")
    frame = dd.from_pandas(sleepstudy, npartitions=2)
    with pytest.raises(FormulaError, match="forbidden name 'eval'"):
        mixedfx.fit(f"Reaction ~ Days + {_payload(marker)} + (1 | Subject)", frame)


def test_report_quotes_a_hostile_column_name(tmp_path, marker):
    hostile = f"I(exec(\"__import__('os').system('touch {marker}')\") or x)"
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(20), 6)
    x = rng.normal(size=g.size)
    data = pd.DataFrame({"y": x + rng.normal(size=g.size) + rng.normal(size=20)[g], hostile: x, "g": g})
    source = tmp_path / "hostile.csv"
    data.to_csv(source, index=False)
    output = tmp_path / "report.html"
    status = main(["report", str(source), "y ~ 1 + (1 | g)", "--x", hostile, "-o", str(output)])
    assert status == 0 and output.exists()


def test_report_refuses_to_overwrite_its_input(tmp_path):
    source = tmp_path / "sleep.csv"
    mixedfx.datasets.load_sleepstudy().to_csv(source, index=False)
    before = source.read_bytes()
    status = main(["report", str(source), "Reaction ~ Days + (1 | Subject)", "-o", str(source)])
    assert status == 2 and source.read_bytes() == before


def test_report_checks_the_output_folder_before_fitting(tmp_path, capsys):
    status = main(["report", "sleepstudy", "Reaction ~ Days + (1 | Subject)", "-o", str(tmp_path / "no" / "r.html")])
    assert status == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "fitting" not in err


@pytest.mark.parametrize(
    "expr, forbidden",
    [
        ("x.__class__", "attribute access"),
        ("np.linalg.inv(x)", "attribute access"),
        ("np.load(x)", "not an elementwise numpy function"),
        ("__import__('os')", "forbidden name '__import__'"),
        ("open('f')", "forbidden name 'open'"),
        ("getattr(x, 'a')", "forbidden name 'getattr'"),
        ("(lambda: 1)()", "Lambda"),
        ("[a for a in x]", "ListComp"),
        ("x[0]", "Subscript"),
        ("f'{x}'", "JoinedStr"),
        ("foo(x)", "function 'foo'"),
        ("log(x, **k)", r"'\*\*' arguments"),
        ("C(x, _state=1)", "forbidden argument name"),
        ("(x := 1)", "NamedExpr"),
    ],
)
def test_forbidden_constructs(expr, forbidden):
    with pytest.raises(FormulaError, match=forbidden):
        check_expression(expr)


@pytest.mark.parametrize(
    "expr, variables",
    [
        ("np.log(x)", {"x"}),
        ("I(x ** 2 + 3 * z)", {"x", "z"}),
        ("C(f, contr.treatment('a'))", {"f"}),
        ("poly(x, 2)", {"x"}),
        ("bs(x, df=3)", {"x"}),
        ("sin(2 * pi * t)", {"t"}),
        ("np.log(`a.b`)", {"a.b"}),
        ("Q('a b')", {"a b"}),
        ("I(x > 0)", {"x"}),
    ],
)
def test_allowed_expressions_and_their_variables(expr, variables):
    assert expression_variables(expr) == variables


def test_names_from_the_calling_module_are_not_visible(sleepstudy):
    # 'warnings' and 'np' are imported by the design module: a formula must not reach them.
    with pytest.raises(DataError, match="Unknown variable 'warnings'"):
        mixedfx.fit("Reaction ~ Days + I(warnings) + (1 | Subject)", sleepstudy)


def test_quote_name_refuses_backticks():
    assert quote_name("a.b") == "`a.b`"
    with pytest.raises(FormulaError, match="backtick"):
        quote_name("a`b")


def test_python_report_refuses_to_overwrite_its_data_file(tmp_path):
    source = tmp_path / "sleep.csv"
    mixedfx.datasets.load_sleepstudy().to_csv(source, index=False)
    fit = mixedfx.fit("Reaction ~ Days + (1 | Subject)", str(source))
    with pytest.raises(DataError, match="is the input data file"):
        fit.report(source, progress=False)
