"""Data sets bundled with mixedfx (the lecture's two case studies and lme4 classics).

Each loader returns a fresh DataFrame; files live inside the package, so they work
without network access.

- :func:`load_exam`: Inner-London schools, 4,059 students in 65 schools (mlmRev ``Exam``),
  with the lecture's ``gcse = 10 * normexam``, ``lrt = 10 * standLRT`` and
  ``lrt_groupc = lrt - mean(lrt within school)``.
- :func:`load_asian`: growth of 568 Asian children weighed at up to five visits, with
  ``age_c = age - 1``, ``age_sp = max(age_c, 0)`` (spline knot at one year), ``girl``,
  ``age_c_girl`` and ``age_sp_girl``.  Age in years, weight in kg.
- :func:`load_sleepstudy`, :func:`load_pastes`, :func:`load_penicillin`: lme4's data sets.
- :func:`load_pisa2000`: Stata's ``pisa2000`` (PISA 2000, 2,069 US students in 148 schools) with
  the student (``w_fstuwt``) and school (``wnrschbw``) sampling weights.
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pandas as pd

from ..errors import DataError, suggest

__all__ = [
    "add_spline_terms",
    "load_exam",
    "load_asian",
    "load_sleepstudy",
    "load_pastes",
    "load_penicillin",
    "load_pisa2000",
    "load",
    "NAMES",
]


def _read(name: str, **kwargs: object) -> pd.DataFrame:
    with files(__name__).joinpath(name).open("rb") as handle:
        return pd.read_csv(handle, **kwargs)


def load_exam() -> pd.DataFrame:
    """The schools data with the lecture's derived variables (see the module docstring)."""
    d = _read("exam.csv", dtype={"school": str, "student": str})
    d["school"] = pd.Categorical(d["school"], categories=sorted(d["school"].unique(), key=int))
    d["gcse"] = 10 * d["normexam"]
    d["lrt"] = 10 * d["standLRT"]
    d["lrt_groupc"] = d["lrt"] - d.groupby("school", observed=True)["lrt"].transform("mean")
    return d


def add_spline_terms(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with the lecture's spline variables computed from ``age`` and ``girl``.

    ``age_c = age - 1``, ``age_sp = max(age_c, 0)`` (knot at one year), ``age_c_girl`` and
    ``age_sp_girl``; use it as ``derive=`` of ``fit.predict_grid`` for growth curves.
    """
    d = frame.copy()
    d["age_c"] = d["age"] - 1
    d["age_sp"] = np.maximum(d["age_c"], 0.0)
    d["age_c_girl"] = d["age_c"] * d["girl"]
    d["age_sp_girl"] = d["age_sp"] * d["girl"]
    return d


def load_asian() -> pd.DataFrame:
    """The children's growth data with the lecture's spline variables."""
    d = _read("asian.csv")
    d["girl"] = (d["gender"] == 2).astype(float)
    return add_spline_terms(d)


def load_sleepstudy() -> pd.DataFrame:
    """Reaction times (ms) of 18 subjects over 10 days of sleep deprivation."""
    return _read("sleepstudy.csv", dtype={"Subject": str})


def load_pastes() -> pd.DataFrame:
    """Paste strength: 3 casks nested in each of 10 batches, 2 samples per cask."""
    return _read("pastes.csv")


def load_penicillin() -> pd.DataFrame:
    """Penicillin assay: 24 plates crossed with 6 samples."""
    return _read("penicillin.csv")


def load_cbpp() -> pd.DataFrame:
    """Contagious bovine pleuropneumonia (lme4's ``cbpp``): new cases (``incidence``) among ``size``
    cattle of 15 herds in 4 periods."""
    return _read("cbpp.csv", dtype={"herd": str, "period": str})


def load_verbagg() -> pd.DataFrame:
    """Verbal aggression (lme4's ``VerbAgg``): 316 persons (``id``) answer 24 items; ``r2`` is "Y"
    when the answer is yes or perhaps."""
    return _read("verbagg.csv", dtype={"id": str, "item": str})


def load_grouseticks() -> pd.DataFrame:
    """Ticks on red grouse chicks (lme4's ``grouseticks``): ``TICKS`` per chick (``INDEX``) in
    broods, locations and years; ``cHEIGHT`` is the centred altitude."""
    return _read("grouseticks.csv", dtype={"INDEX": str, "BROOD": str, "YEAR": str, "LOCATION": str})


def load_contraception() -> pd.DataFrame:
    """Contraceptive use in Bangladesh (mlmRev's ``Contraception``): ``use`` ("Y"/"N") of 1934
    women in 60 districts, with living children ``livch``, centred ``age`` and ``urban``."""
    return _read("contraception.csv", dtype={"woman": str, "district": str, "livch": str})


def load_pisa2000() -> pd.DataFrame:
    """PISA 2000, US: ``isei`` (socio-economic index of the parents' occupation), ``female``,
    ``high_school``/``college`` (parents' education), ``one_for``/``both_for`` (parents foreign-born),
    ``test_lang`` (tested in the language spoken at home), ``pass_read``, the student weight
    given the school ``w_fstuwt``, the school weight ``wnrschbw`` and ``id_school``
    (Rabe-Hesketh & Skrondal 2006, as shipped by Stata and R's svylme)."""
    return _read("pisa2000.csv", dtype={"id_school": str})


NAMES = {
    "exam": load_exam,
    "asian": load_asian,
    "sleepstudy": load_sleepstudy,
    "pastes": load_pastes,
    "penicillin": load_penicillin,
    "cbpp": load_cbpp,
    "verbagg": load_verbagg,
    "grouseticks": load_grouseticks,
    "contraception": load_contraception,
    "pisa2000": load_pisa2000,
}


def load(name: str) -> pd.DataFrame:
    """Load a bundled data set by name (see :data:`NAMES`)."""
    if name not in NAMES:
        raise DataError(f"No bundled data set {name!r}; choose one of {', '.join(NAMES)}.{suggest(name, NAMES)}")
    return NAMES[name]()
