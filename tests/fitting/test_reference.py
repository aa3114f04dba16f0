"""Every lme4 reference fit reproduced within the tolerances of tests/reference/README.md."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import mixedfx
from conftest import REFERENCE_DIR, lme4_reference_names, load_reference, reference_data

LOGLIK_ABS = 1e-4
FIXEF_REL = 1e-4
VARCOMP_REL = 1e-3
BLUP_REL = 1e-3


def _rel(a: float, b: float, floor: float = 0.0) -> float:
    return abs(a - b) / max(abs(b), floor)


@pytest.fixture(scope="module", params=lme4_reference_names())
def case(request):
    ref = load_reference(request.param)
    fit = mixedfx.fit(ref["formula"], reference_data(ref), method=ref["method"].lower())
    return ref, fit


def test_loglik_matches_or_beats_lme4(case):
    ref, fit = case
    assert fit.converged
    # a better optimum than R's is allowed, a worse one is not
    assert fit.loglik > ref["loglik"] - LOGLIK_ABS
    assert abs(fit.loglik - ref["loglik"]) < LOGLIK_ABS


def test_counts(case):
    ref, fit = case
    assert fit.nobs == ref["nobs"]
    assert fit.ngroups == ref["ngroups"]


def test_fixed_effects_and_standard_errors(case):
    ref, fit = case
    assert list(fit.fixef.index) == list(ref["fixef"])
    for name, value in ref["fixef"].items():
        assert _rel(fit.fixef[name], value, floor=1e-3) < FIXEF_REL, name
        assert _rel(fit.se[name], ref["se"][name]) < FIXEF_REL, name


def test_sigma_theta_aic_bic(case):
    ref, fit = case
    assert _rel(fit.sigma, ref["sigma"]) < VARCOMP_REL
    np.testing.assert_allclose(fit.theta, np.atleast_1d(ref["theta"]), rtol=VARCOMP_REL, atol=1e-5)
    assert abs(fit.aic - ref["aic"]) < 1e-3
    assert abs(fit.bic - ref["bic"]) < 1e-3


def _varcorr_key(row: dict) -> tuple:
    group = re.sub(r"\.\d+$", "", row["grp"])  # lme4 names (x || g) terms g, g.1, ...
    return group, row.get("var1"), row.get("var2")


def test_variance_components(case):
    ref, fit = case
    ours = {
        (
            r["group"],
            r["var1"] if isinstance(r["var1"], str) else None,
            r["var2"] if isinstance(r["var2"], str) else None,
        ): r
        for r in fit.varcorr.to_dict(orient="records")
    }
    assert len(ours) == len(ref["varcorr"])
    for row in ref["varcorr"]:
        key = _varcorr_key(row)
        mine = ours[key]
        assert _rel(mine["vcov"], row["vcov"], floor=1e-3) < VARCOMP_REL, key
        assert _rel(mine["sdcor"], row["sdcor"], floor=1e-3) < VARCOMP_REL, key


def test_blups_and_conditional_sds(case):
    ref, fit = case
    effects = fit.ranef(condvar=True)
    for group, levels in ref["ranef"].items():
        frame = effects[group]
        scale = {term: frame[term].abs().max() for term in levels[0]["value"]}
        for entry in levels:
            for term, value in entry["value"].items():
                mine = frame.loc[entry["level"], term]
                assert abs(mine - value) <= BLUP_REL * max(abs(value), 1e-2 * scale[term]), (
                    group,
                    entry["level"],
                    term,
                )
                se = entry["se"][term]
                assert _rel(frame.loc[entry["level"], f"se_{term}"], se) < BLUP_REL, (group, entry["level"], term)


def test_weighted_fit_matches_lme4():
    ref = load_reference("weighted_lme4")
    data = pd.read_csv(REFERENCE_DIR / "weighted_data.csv")
    for method in ("REML", "ML"):
        fit = mixedfx.fit("y ~ x + (x | g)", data, method=method, weights="w")
        expected = ref[method]
        assert abs(fit.loglik - expected["loglik"]) < LOGLIK_ABS
        np.testing.assert_allclose(fit.theta, expected["theta"], rtol=VARCOMP_REL)
        np.testing.assert_allclose(fit.se.to_numpy(), list(expected["se"].values()), rtol=FIXEF_REL)
        np.testing.assert_allclose(fit.fixef.to_numpy(), list(expected["fixef"].values()), rtol=FIXEF_REL)
        assert _rel(fit.sigma, expected["sigma"]) < VARCOMP_REL


def test_weights_array_equals_weights_column():
    data = pd.read_csv(REFERENCE_DIR / "weighted_data.csv")
    by_name = mixedfx.fit("y ~ x + (x | g)", data, weights="w")
    by_array = mixedfx.fit("y ~ x + (x | g)", data, weights=data["w"].to_numpy())
    assert by_name.loglik == pytest.approx(by_array.loglik, abs=1e-10)


def test_unit_weights_change_nothing(sleepstudy):
    plain = mixedfx.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    weighted = mixedfx.fit("Reaction ~ Days + (Days | Subject)", sleepstudy, weights=np.ones(len(sleepstudy)))
    assert weighted.loglik == pytest.approx(plain.loglik, abs=1e-8)
