"""Stata's weight scalings and the checks on sampling weights (:mod:`mixedfx.data.sampling`)."""

import numpy as np
import pandas as pd
import pytest

from mixedfx.data.design import build_design
from mixedfx.data.sampling import nesting_order, sampling_weights
from mixedfx.errors import OptionError
from mixedfx.spec.formula import parse_formula


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    school = np.repeat(["a", "b", "c", "d"], [3, 5, 4, 6])
    klass = np.array([f"k{i % 2}" for i in range(school.size)])
    frame = pd.DataFrame({"y": rng.normal(size=school.size), "school": school, "klass": klass})
    frame["w1"] = rng.uniform(1, 5, school.size)
    frame["w2"] = frame.groupby(["school", "klass"])["y"].transform(lambda s: 1.0 + len(s))
    frame["w3"] = frame["school"].map({"a": 2.0, "b": 3.0, "c": 1.0, "d": 5.0})
    return frame


def _weights(frame, formula, pweights, pwscale):
    design = build_design(parse_formula(formula), frame)
    return design, sampling_weights(design, frame, pweights, pwscale)


def test_size_scales_observation_weights_to_the_cluster_size(data):
    design, w = _weights(data, "y ~ 1 + (1 | school)", {"": "w1", "school": "w3"}, "size")
    codes = design.blocks[0].codes
    np.testing.assert_allclose(np.bincount(codes, weights=w.row_weights), np.bincount(codes))
    np.testing.assert_allclose(w.level_weights[0], [2.0, 3.0, 1.0, 5.0])  # the top level is left as given
    ratio = w.row_weights / data["w1"].to_numpy()
    assert all(np.ptp(ratio[codes == c]) < 1e-12 for c in range(4))  # one factor per cluster


def test_effective_scales_observation_weights_to_the_effective_size(data):
    design, w = _weights(data, "y ~ 1 + (1 | school)", {"": "w1"}, "effective")
    codes = design.blocks[0].codes
    raw = data["w1"].to_numpy()
    effective = np.bincount(codes, weights=raw) ** 2 / np.bincount(codes, weights=raw**2)
    np.testing.assert_allclose(np.bincount(codes, weights=w.row_weights), effective)


def test_gk_moves_the_weight_to_the_cluster(data):
    design, w = _weights(data, "y ~ 1 + (1 | school)", {"": "w1", "school": "w3"}, "gk")
    assert np.all(w.row_weights == 1)
    expected = (data["w1"] * data["w3"]).groupby(data["school"]).mean()
    np.testing.assert_allclose(w.level_weights[0], expected.to_numpy())


def test_three_levels_scale_each_level_within_its_parent(data):
    formula = "y ~ 1 + (1 | school) + (1 | klass:school)"
    design, w = _weights(data, formula, {"": "w1", "klass:school": "w2", "school": "w3"}, "size")
    blocks = design.blocks
    inner, outer = w.order
    assert blocks[inner].name == "klass:school" and blocks[outer].name == "school"
    parent = w.parents[0]
    # the classes' weights sum to the number of classes in each school
    np.testing.assert_allclose(np.bincount(parent, weights=w.level_weights[inner]), np.bincount(parent))
    np.testing.assert_allclose(np.bincount(blocks[inner].codes, weights=w.row_weights), blocks[inner].level_counts)
    with pytest.raises(OptionError, match="two-level models only"):
        _weights(data, formula, {"": "w1"}, "gk")


def test_keys_may_name_the_innermost_variable(data):
    formula = "y ~ 1 + (1 | school) + (1 | klass:school)"
    design, by_variable = _weights(data, formula, {"klass": "w2"}, None)
    _, by_name = _weights(data, formula, {"klass:school": "w2"}, None)
    for a, b in zip(by_variable.level_weights, by_name.level_weights):
        np.testing.assert_array_equal(a, b)


def test_nesting_order_refuses_crossed_factors(data):
    design = build_design(parse_formula("y ~ 1 + (1 | school) + (1 | klass)"), data)
    with pytest.raises(OptionError, match="'klass' is not nested in 'school'|'school' is not nested in 'klass'"):
        nesting_order(design.blocks)


def test_an_empty_mapping_is_refused(data):
    with pytest.raises(OptionError, match="pweights is empty"):
        _weights(data, "y ~ 1 + (1 | school)", {}, None)


def test_nesting_order_breaks_ties_by_the_finer_factor():
    # one class per school: both factors have as many levels, class:school is still the finer one
    school, klass = np.repeat(list("abcd"), 3), np.repeat(list("wxyz"), 3)
    frame = pd.DataFrame({"y": np.arange(12.0), "school": school, "klass": klass})
    design = build_design(parse_formula("y ~ 1 + (1 | school) + (1 | klass:school)"), frame)
    order = nesting_order(design.blocks)
    assert [design.blocks[b].name for b in order] == ["klass:school", "school"]
