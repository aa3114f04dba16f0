"""Shared fixtures: the R reference fits and the data preparation they used."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")  # figures are saved, never shown, in tests

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, settings

from mixedfx import datasets

REFERENCE_DIR = Path(__file__).parent / "reference"

# Property tests are reproducible: derandomised (a fixed seed per test), no example database,
# and a failing example is printed with the blob that replays it.  "ci" is the default;
# "long" explores more examples in CI's second job (HYPOTHESIS_PROFILE=long).
_PROPERTY = dict(deadline=None, derandomize=True, database=None, print_blob=True)
settings.register_profile("ci", max_examples=25, suppress_health_check=[HealthCheck.too_slow], **_PROPERTY)
settings.register_profile("long", max_examples=200, suppress_health_check=[HealthCheck.too_slow], **_PROPERTY)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def load_reference(name: str) -> dict:
    """One reference JSON (made in R; see tests/reference/README.md)."""
    return json.loads((REFERENCE_DIR / f"{name}.json").read_text())


def glmm_reference_names() -> list[str]:
    """Reference fits made with lme4's glmer (tests/reference/make_glmm.R)."""
    return [
        p.stem
        for p in sorted(REFERENCE_DIR.glob("*.json"))
        if "family" in json.loads(p.read_text()) and not p.stem.endswith("_margins")  # margins: test_margins.py
    ]


def lme4_reference_names() -> list[str]:
    """Reference fits made with lme4 (no nlme correlation/weights structures)."""
    names = []
    for path in sorted(REFERENCE_DIR.glob("*.json")):
        ref = json.loads(path.read_text())
        linear = "family" not in ref
        if linear and "theta" in ref and "data" in ref and not ref.get("correlation") and not ref.get("weights"):
            names.append(path.stem)
    return names


def reference_data(ref: dict) -> pd.DataFrame:
    """The data of a reference fit with the same derived variables as its R ``prep``."""
    loaders = {
        "exam.csv": datasets.load_exam,
        "asian.csv": datasets.load_asian,
        "sleepstudy.csv": datasets.load_sleepstudy,
        "pastes.csv": datasets.load_pastes,
        "penicillin.csv": datasets.load_penicillin,
        "cbpp.csv": datasets.load_cbpp,
        "verbagg.csv": datasets.load_verbagg,
        "grouseticks.csv": datasets.load_grouseticks,
        "contraception.csv": datasets.load_contraception,
        "poisson_exposure.csv": lambda: pd.read_csv(REFERENCE_DIR / "poisson_exposure.csv", dtype={"g": str}),
        "bacteria.csv": lambda: pd.read_csv(REFERENCE_DIR / "bacteria.csv"),
    }
    return loaders[ref["data"]]()


@pytest.fixture(scope="session")
def exam() -> pd.DataFrame:
    return datasets.load_exam()


@pytest.fixture(scope="session")
def sleepstudy() -> pd.DataFrame:
    return datasets.load_sleepstudy()


def simulate_two_level(n_groups: int = 40, size: int = 8, seed: int = 0, slope: bool = True) -> pd.DataFrame:
    """Random-intercept (and slope) data with known structure, for property tests."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), size)
    x = rng.normal(size=g.size)
    b0 = rng.normal(0, 1.0, n_groups)
    b1 = rng.normal(0, 0.5, n_groups) if slope else np.zeros(n_groups)
    y = 1.0 + 0.5 * x + b0[g] + b1[g] * x + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": g})
