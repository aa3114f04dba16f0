"""R's formula functions give R's model matrices, names, fits and predictions (tests/reference/make_formulas.R)."""

import warnings

import numpy as np
import pandas as pd
import pytest

import mixedfx
from conftest import load_reference
from mixedfx.data.transforms import ns, poly
from mixedfx.errors import FormulaError

REFERENCE = load_reference("sleepstudy_formulas")["fits"]
CASES = [name for name in REFERENCE if name != "dot"]


@pytest.fixture(scope="module")
def fits(sleepstudy_module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {rhs: mixedfx.fit(f"Reaction ~ {rhs} + (1 | Subject)", sleepstudy_module) for rhs in CASES}


@pytest.fixture(scope="module")
def sleepstudy_module():
    return mixedfx.datasets.load_sleepstudy()


@pytest.mark.parametrize("rhs", CASES)
def test_model_matrix_names_and_fit_equal_r(fits, rhs):
    ref, fit = REFERENCE[rhs], fits[rhs]
    assert list(fit.fixef.index) == ref["columns"]  # lme4's names: poly(Days, 2)1, bs(Days, df = 3)1, ...
    np.testing.assert_allclose(fit.record.design.X[:12], np.array(ref["X"]), atol=1e-12)
    assert fit.loglik == pytest.approx(ref["loglik"], abs=1e-7)
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(ref["fixef"].values()), rtol=1e-7, atol=1e-8)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-6)
    np.testing.assert_allclose(fit.fitted().to_numpy()[:12], ref["fitted"], rtol=1e-6)  # with offsets


@pytest.mark.parametrize("rhs", CASES)
def test_predictions_reuse_the_fitted_basis(fits, rhs):
    """New days (two outside the data's range) through the fitted state, as R's predict."""
    ref, fit = REFERENCE[rhs], fits[rhs]
    new = pd.DataFrame({"Days": ref["new_days"], "Subject": "308"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # extrapolated splines, an undefined log/sqrt: warned below
        got = fit.predict(new, level="population")["prediction"].to_numpy()
    want = np.array(ref["predict_new"], dtype=float)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-8)


def test_extrapolated_splines_and_undefined_values_warn(fits):
    new = pd.DataFrame({"Days": [-1.0, 4.0], "Subject": "308"})
    with pytest.warns(UserWarning, match=r"ns\(\): 1 value\(s\) beyond the boundary knots \[0, 9\]"):
        fits["ns(Days, df = 3)"].predict(new, level="population")
    with pytest.warns(UserWarning, match=r"undefined value of log\(Days \+ 1\).*predictions are NaN"):
        out = fits["log(Days + 1) + sqrt(Days)"].predict(new, level="population")
    assert np.isnan(out["prediction"].iloc[0]) and np.isfinite(out["prediction"].iloc[1])


def test_predicting_the_estimation_rows_from_a_subset_keeps_the_state(fits, sleepstudy_module):
    """poly's, scale's and ns's state is the fit's, not relearnt from the rows predicted."""
    for rhs in ("poly(Days, 2)", "scale(Days)", "ns(Days, df = 4)"):
        fit = fits[rhs]
        rows = sleepstudy_module.iloc[[3, 17, 40]]
        got = fit.predict(rows)["prediction"].to_numpy()
        np.testing.assert_allclose(got, fit.fitted().to_numpy()[[3, 17, 40]], rtol=1e-12)


def test_poly_and_ns_refuse_what_r_refuses():
    with pytest.raises(FormulaError, match="degree 10 must be less than the number of unique points"):
        poly(np.arange(10.0), 10)
    with pytest.raises(FormulaError, match="degree must be a whole number"):
        poly(np.arange(10.0), 0)
    with pytest.raises(FormulaError, match="df = 0 is too small"):
        ns(np.arange(10.0), df=0)


def test_dot_stands_for_the_other_columns(sleepstudy_module):
    ref = REFERENCE["dot"]  # R: Reaction ~ . - Subject (R's . would also enter the grouping factor)
    fit = mixedfx.fit("Reaction ~ . + (1 | Subject)", sleepstudy_module)
    assert list(fit.fixef.index) == list(ref["fixef"]) and fit.loglik == pytest.approx(ref["loglik"], abs=1e-7)
    data = sleepstudy_module.assign(w=1.0, extra=np.arange(180) % 7)
    fit = mixedfx.fit("Reaction ~ . - extra + (1 | Subject)", data, weights="w")
    assert list(fit.fixef.index) == ["(Intercept)", "Days"]  # weights and '- extra' left out
    assert mixedfx.fit("Reaction ~ . + (1 | Subject)", data.drop(columns="w")).fixef.index.tolist() == [
        "(Intercept)", "Days", "extra"
    ]  # fmt: skip
    with pytest.raises(FormulaError, match="stands for no column"):
        mixedfx.fit("Reaction ~ . + offset(Days) + (1 | Subject)", sleepstudy_module)


def test_offsets_are_known_parts_of_the_mean(sleepstudy_module):
    plain = mixedfx.fit("Reaction ~ Days + (1 | Subject)", sleepstudy_module)
    offset = mixedfx.fit("Reaction ~ Days + offset(2 * Days) + (1 | Subject)", sleepstudy_module)
    assert offset.fixef["Days"] == pytest.approx(plain.fixef["Days"] - 2, abs=1e-8)
    np.testing.assert_allclose(offset.residuals(), plain.residuals(), atol=1e-8)
    np.testing.assert_allclose(offset.predict(sleepstudy_module.head(3))["prediction"],
                               plain.predict(sleepstudy_module.head(3))["prediction"], rtol=1e-10)  # fmt: skip
    assert "2 * Days |          1  (offset)" in str(offset.summary()) and offset.to_dict()["offsets"] == ["2 * Days"]
    for bad, message in [
        ("Reaction ~ Days + offset(scale(Days)) + (1 | Subject)", "whose value depends on the whole column"),
        ("Reaction ~ Days + (offset(Days) | Subject)", "belongs to the fixed part"),
        ("Reaction ~ Days*offset(Days) + (1 | Subject)", "must be a term of its own"),
        ("Reaction ~ Days + offset(nope) + (1 | Subject)", "Unknown variable 'nope' in offset"),
    ]:
        with pytest.raises((FormulaError, mixedfx.errors.DataError), match=message):
            mixedfx.fit(bad, sleepstudy_module)
