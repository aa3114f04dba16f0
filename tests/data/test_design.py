"""Design matrices: naming, missing values, aliasing and clear errors for bad input."""

import re

import numpy as np
import pandas as pd
import pytest

import mixedfx
from conftest import simulate_two_level
from mixedfx.data.columns import lme4_name
from mixedfx.data.design import build_design
from mixedfx.errors import DataError, FormulaError, RankDeficiencyWarning
from mixedfx.spec.formula import parse_formula


def _design(formula, data, **kw):
    return build_design(parse_formula(formula), data, **kw)


def test_lme4_column_names(exam):
    d = _design("gcse ~ lrt_groupc * sex + (lrt_groupc | school)", exam)
    assert d.fixed_names == ["(Intercept)", "lrt_groupc", "sexM", "lrt_groupc:sexM"]
    assert d.blocks[0].names == ["(Intercept)", "lrt_groupc"]
    assert lme4_name("C(x, contr.treatment('b'))[T.a]") == "C(x, contr.treatment('b'))a"


def test_reference_level_is_selectable(exam):
    d = _design("gcse ~ C(schgend, contr.treatment('mixed')) + (1 | school)", exam)
    assert any(name.endswith("boys") for name in d.fixed_names)
    assert not any(name.endswith("mixed") for name in d.fixed_names)


def test_categorical_inside_random_term(exam):
    d = _design("gcse ~ sex + (0 + sex | school)", exam)
    assert d.blocks[0].names == ["sexF", "sexM"]


def test_terms_on_one_factor_share_a_block(sleepstudy):
    d = _design("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", sleepstudy)
    assert len(d.blocks) == 1 and d.blocks[0].q == 2 and len(d.blocks[0].terms) == 2


def test_missing_values_are_dropped_and_counted():
    data = simulate_two_level()
    data.loc[[0, 5, 9], "x"] = np.nan
    data.loc[12, "g"] = np.nan
    data.loc[20, "unused"] = np.nan  # a column the model does not use must not drop rows
    d = _design("y ~ x + (1 | g)", data)
    assert d.n_missing == 4 and d.nobs == len(data) - 4
    fit = mixedfx.fit("y ~ x + (1 | g)", data)
    assert fit.n_missing == 4
    assert "4 observation(s) with missing values dropped" in fit.summary()
    with pytest.raises(DataError, match="missing values"):
        _design("y ~ x + (1 | g)", data, missing="raise")


def test_aliased_columns_are_dropped_with_a_warning():
    data = simulate_two_level()
    data["x2"] = 2 * data["x"]
    data["zero"] = 0.0
    with pytest.warns(RankDeficiencyWarning, match="x2"):
        d = _design("y ~ x + x2 + zero + (1 | g)", data)
    assert d.fixed_names == ["(Intercept)", "x"]
    assert d.dropped_fixed == ["x2", "zero"]


@pytest.mark.parametrize(
    "formula, error, message",
    [
        (
            "y ~ xx + (1 | g)",
            DataError,
            "Unknown variable 'xx' in the fixed part: no such column in the data. Did you mean 'x'?",
        ),
        ("y ~ x + (1 | gg)", DataError, "Unknown variable 'gg'"),
        ("y ~ x + (1 + zz | g)", DataError, "Unknown variable 'zz' in random term"),
        ("y ~ x +", FormulaError, "Empty term"),
        ("y ~ x", FormulaError, "no random-effects term"),
    ],
)
def test_bad_formulas(formula, error, message):
    with pytest.raises(error, match=re.escape(message)):
        mixedfx.fit(formula, simulate_two_level())


def test_non_numeric_response(exam):
    with pytest.raises(DataError, match="response 'sex' must be one numeric column"):
        mixedfx.fit("sex ~ lrt + (1 | school)", exam)


def test_one_level_grouping_factor():
    data = simulate_two_level()
    data["one"] = "a"
    with pytest.raises(DataError, match="Grouping factor 'one' has only 1 level"):
        mixedfx.fit("y ~ x + (1 | one)", data)


def test_all_clusters_of_size_one():
    data = simulate_two_level()
    data["id"] = np.arange(len(data))
    with pytest.raises(DataError, match="every cluster has one observation"):
        mixedfx.fit("y ~ x + (1 | id)", data)


def test_empty_after_dropping_missing():
    data = simulate_two_level()
    data["x"] = np.nan
    with pytest.raises(DataError, match="No complete rows"):
        mixedfx.fit("y ~ x + (1 | g)", data)


def test_empty_data():
    with pytest.raises(DataError, match="empty"):
        mixedfx.fit("y ~ x + (1 | g)", simulate_two_level().iloc[:0])


def test_fewer_observations_than_parameters():
    data = simulate_two_level(n_groups=2, size=3)
    data["f"] = [f"l{i}" for i in range(len(data))]
    with pytest.raises(DataError, match="too few"):
        mixedfx.fit("y ~ x + f + (1 | g)", data)


def test_infinite_values_are_refused():
    data = simulate_two_level()
    data.loc[3, "x"] = np.inf
    with pytest.raises(DataError, match="Column 'x' has infinite values"):
        mixedfx.fit("y ~ x + (1 | g)", data)


def test_user_dataframe_is_not_modified():
    data = simulate_two_level()
    data.loc[0, "x"] = np.nan
    before = data.copy()
    mixedfx.fit("y ~ x + (1 | g)", data)
    pd.testing.assert_frame_equal(data, before)


def test_boolean_string_categorical_and_float_group_columns():
    data = simulate_two_level()
    data["flag"] = data["x"] > 0
    data["label"] = np.where(data["x"] > 0.5, "high", "low")
    data["cat"] = pd.Categorical(np.where(data["x"] > -0.5, "b", "a"), categories=["a", "b", "unused"])
    data["gf"] = data["g"] + 0.25
    fit = mixedfx.fit("y ~ flag + label + cat + (1 | gf)", data)
    assert fit.fixef.index.tolist() == ["(Intercept)", "flag", "labellow", "catb"]  # booleans enter as 0/1
    assert fit.ngroups == {"gf": 40} and "0.25" in fit.ranef()["gf"].index[0]


def test_duplicated_rows_are_used_as_given():
    data = simulate_two_level()
    once = mixedfx.fit("y ~ x + (1 | g)", data)
    twice = mixedfx.fit("y ~ x + (1 | g)", pd.concat([data, data]))
    assert twice.nobs == 2 * once.nobs
    np.testing.assert_allclose(twice.fixef, once.fixef, rtol=0.2)


def test_level_labels_are_formatted_on_first_use_like_r():
    from mixedfx.data.levels import LevelLabels

    labels = LevelLabels(np.array([3.0, 10.0, 2.5]))
    assert len(labels) == 3 and labels._labels is None  # nothing formatted yet
    assert list(labels) == ["3", "10", "2.5"]
    assert labels.index("10") == 1 and "2.5" in labels and labels == ["3", "10", "2.5"]
    assert list(LevelLabels(np.array([7, 1]))) == ["7", "1"]
    assert list(LevelLabels(np.array(["b", "a"], dtype=object))) == ["b", "a"]


def test_direct_numeric_matrices_equal_formulaic(monkeypatch):
    import mixedfx.data.columns as design_module

    rng = np.random.default_rng(4)
    n = 600
    data = pd.DataFrame(
        {
            "y": rng.normal(size=n),
            "x": rng.normal(size=n),
            "z": rng.integers(0, 5, n),  # integer column
            "s": rng.choice(["a", "b"], n),  # categorical: formulaic builds the fixed part
            "g": np.repeat(np.arange(60), 10),
        }
    )
    formulas = [
        "y ~ x * z + (1 + x | g)",
        "y ~ x + s + (1 + z | g)",
        "y ~ 0 + x + (0 + x | g)",
        "y ~ z:x:x + x + x:z + (1 | g)",  # interactions named and ordered as formulaic does
        "y ~ 1 + (z | g)",
        "y ~ x + I(x**2) + (1 + x | g)",  # a transformation: formulaic builds it
    ]
    for formula in formulas:
        monkeypatch.setattr(design_module, "DIRECT_ROWS", 10**9)
        reference = build_design(parse_formula(formula), data)
        monkeypatch.setattr(design_module, "DIRECT_ROWS", 100)
        direct = build_design(parse_formula(formula), data)
        assert direct.fixed_names == reference.fixed_names
        np.testing.assert_array_equal(direct.X, reference.X)
        np.testing.assert_array_equal(direct.y, reference.y)
        np.testing.assert_array_equal(direct.blocks[0].Z, reference.blocks[0].Z)
        assert direct.blocks[0].names == reference.blocks[0].names
        new = data.iloc[:7]  # the deferred specs rebuild the columns for new data as formulaic does
        np.testing.assert_array_equal(
            np.asarray(direct.fixed_spec.get_model_matrix(new)), np.asarray(reference.fixed_spec.get_model_matrix(new))
        )
        assert list(direct.fixed_spec.column_names) == list(reference.fixed_spec.column_names)
        term_spec = direct.blocks[0].terms[0].spec
        np.testing.assert_array_equal(
            np.asarray(term_spec.get_model_matrix(new)),
            np.asarray(reference.blocks[0].terms[0].spec.get_model_matrix(new)),
        )


def test_sorted_numeric_groups_are_coded_like_factorize():
    from mixedfx.data.levels import group_codes as _group_codes
    from mixedfx.data.levels import level_label

    for values in ([1, 1, 4, 4, 4, 9], [0.5, 0.5, 2.0, 3.0], [3, 1, 1, 2]):
        frame = pd.DataFrame({"g": values})
        codes, labels = _group_codes(frame, ("g",))
        expected, uniques = pd.factorize(frame["g"], sort=True)
        np.testing.assert_array_equal(codes, expected)
        assert list(labels) == [level_label(u) for u in uniques]


def test_nullable_integer_missing_values_are_dropped_and_counted():
    rng = np.random.default_rng(0)
    data = pd.DataFrame(
        {
            "y": rng.normal(size=100),
            "x": pd.array([1, 2, None, 4] * 25, dtype="Int64"),  # pandas' nullable integers
            "k": np.arange(100),  # numpy integers: never missing
            "g": np.repeat(np.arange(10), 10),
        }
    )
    design = build_design(parse_formula("y ~ x + k + (1 | g)"), data)
    assert design.n_missing == 25 and design.nobs == 75
    assert not np.isnan(design.X).any()
