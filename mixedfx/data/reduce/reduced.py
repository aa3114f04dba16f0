"""A model's data reduced to sufficient statistics, and its file format.

A :class:`ReducedData` holds the engine's statistics, the scaling back to the data's units,
and the model's metadata (formula, columns, grouping levels, counts, column moments), so
that it can be refitted (ML or REML, other covariance structures) without the rows.

Saved reductions are a NumPy ``.npz`` archive of plain arrays plus one JSON document:
loading reads numbers and text only (``allow_pickle=False``), so a file from anywhere can be
opened without running anything it contains.  formulaic's column specs are rebuilt on load
from the formula and the saved category levels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...engine.stats import Scaling, SufficientStats
from ...errors import DataError
from ...spec.formula import ParsedFormula, parse_formula, with_fixed_part
from ..design import Design, ReBlock, ReTerm, check_covariance_keys, check_distinct_effects, term_structure
from ..levels import LevelLabels
from .plan import ColumnPlan, plan_columns

#: Version of the file layout written by :meth:`ReducedData.save`.
FORMAT = "mixedfx-reduction-1"


@dataclass
class ReducedData:
    """A model's data reduced to sufficient statistics; fit it with :func:`mixedfx.fit_reduced`."""

    formula: ParsedFormula
    plan: ColumnPlan
    factors: list[str]  # grouping factors in engine order (most levels first)
    levels: dict[str, object]  # level labels per factor
    counts: dict[str, np.ndarray]  # observations per level
    moments: dict[str, tuple[np.ndarray, np.ndarray]]  # means and SDs of each factor's random-effect columns
    stats: SufficientStats  # standardised X and y; random-effect columns as in stats.column_transforms
    scaling: Scaling
    nobs: int
    n_missing: int
    dropped_fixed: list[str] = field(default_factory=list)
    weighted: bool = False
    weight_scale: float = 1.0  # the weights' geometric mean, divided out of the statistics

    def blocks(self, covariance: dict[str, str] | None = None) -> list[ReBlock]:
        """The grouping blocks (metadata, no rows) with the formula's or ``covariance``'s structures."""
        check_covariance_keys(covariance, [(":".join(f), f) for _, f, *_ in self.plan.terms])
        return make_blocks(self.plan, self.factors, self.levels, self.counts, self.moments, covariance)

    def save(self, path: str | Path) -> Path:
        """Write the reduction to ``path`` (a ``.npz`` archive); reload with :func:`load_reduced`."""
        path = Path(path)
        arrays, meta = _to_arrays(self)
        arrays["meta"] = np.array(json.dumps(meta))
        with open(path, "wb") as handle:  # to this exact path (np.savez would append .npz)
            np.savez_compressed(handle, **arrays)
        return path


def rowless_design(reduced, blocks: list[ReBlock]) -> Design:
    """A :class:`~mixedfx.data.design.Design` without rows for a reduction (:class:`ReducedData`, or
    :class:`~mixedfx.data.reduce.cells.ReducedCells`): names, blocks and counts for the fit's record."""
    return Design(
        formula=reduced.formula,
        y=None,
        X=None,
        fixed_names=list(reduced.plan.fixed_names),
        blocks=blocks,
        weights=None,
        n_missing=reduced.n_missing,
        dropped_fixed=list(reduced.dropped_fixed),
        row_index=None,
        fixed_spec=reduced.plan.fixed_spec,
        response_name=reduced.formula.response,
        n_rows=reduced.nobs,
    )


def make_blocks(
    plan: ColumnPlan, order: list[str], level_lists: dict, counts: dict, moments: dict, covariance: dict | None
) -> list[ReBlock]:
    """Metadata-only :class:`ReBlock` objects (no rows) in engine order."""
    blocks = []
    for name in order:
        factor = next(f for _, f, *_ in plan.terms if ":".join(f) == name)
        block = ReBlock(name, factor, None, level_lists[name], None, counts=counts[name], moments=moments[name])
        start = 0
        for expr, term_factor, kind, names, spec in plan.terms:
            if term_factor != factor:
                continue
            structure = term_structure(kind, name, factor, len(names), covariance)
            block.terms.append(ReTerm(expr, names, structure, slice(start, start + len(names)), spec))
            start += len(names)
        check_distinct_effects(block)
        blocks.append(block)
    return blocks


def _native(value):
    """A category level as a JSON value (numpy scalars to Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


def _to_arrays(reduced: ReducedData) -> tuple[dict[str, np.ndarray], dict]:
    s, scaling, plan = reduced.stats, reduced.scaling, reduced.plan
    arrays = {
        "XtX": s.XtX, "Xty": s.Xty, "first_ZtZ": s.first_ZtZ, "first_ZtX": s.first_ZtX, "first_Zty": s.first_Zty,
        "scaling_T": scaling.T,
    }  # fmt: skip
    if s.rest_Z1 is not None:
        Z1 = s.rest_Z1.tocsr()
        arrays.update(
            rest_Z1_data=Z1.data, rest_Z1_indices=Z1.indices, rest_Z1_indptr=Z1.indptr, rest_Z1_shape=np.array(Z1.shape)
        )
        ZtZ = sp.csr_matrix(s.rest_ZtZ)
        arrays.update(rest_ZtZ_data=ZtZ.data, rest_ZtZ_indices=ZtZ.indices, rest_ZtZ_indptr=ZtZ.indptr)
        arrays.update(rest_ZtZ_shape=np.array(ZtZ.shape), rest_ZtX=s.rest_ZtX, rest_Zty=s.rest_Zty)
    for k, T in enumerate(s.column_transforms or []):
        arrays[f"transform_{k}"] = T
    for k, name in enumerate(reduced.factors):
        levels = reduced.levels[name]
        values = levels._values if isinstance(levels, LevelLabels) else np.array(list(levels), dtype=str)
        arrays[f"levels_{k}"], arrays[f"counts_{k}"] = values, np.asarray(reduced.counts[name])
        arrays[f"mean_{k}"], arrays[f"sd_{k}"] = reduced.moments[name]
    if any(a.dtype == object for a in arrays.values()):
        raise DataError("This reduction holds values that cannot be saved as plain arrays (mixed-type levels).")
    meta = {
        "format": FORMAT,
        "formula": reduced.formula.text,
        "fixed": reduced.formula.fixed,  # with '.' expanded
        "plan": {
            "fixed_names": plan.fixed_names,
            "terms": [[expr, list(factor), kind, names] for expr, factor, kind, names, _ in plan.terms],
            "categorical_levels": {c: [_native(v) for v in values] for c, values in plan.categorical_levels.items()},
            "variables": plan.variables,
        },
        "factors": reduced.factors,
        "level_kinds": ["labels" if isinstance(reduced.levels[n], LevelLabels) else "list" for n in reduced.factors],
        "stats": {
            "n": s.n,
            "p": s.p,
            "yty": s.yty,
            "sum_log_weights": s.sum_log_weights,
            "first_q": s.first_q,
            "rest_sizes": [list(r) for r in s.rest_sizes],
            "n_transforms": len(s.column_transforms or []),
        },  # fmt: skip
        "scaling": {
            "y_shift": scaling.y_shift,
            "y_scale": scaling.y_scale,
            "intercept": scaling.intercept,
            "intercept_value": scaling.intercept_value,
        },  # fmt: skip
        "nobs": reduced.nobs,
        "n_missing": reduced.n_missing,
        "dropped_fixed": reduced.dropped_fixed,
        "weighted": reduced.weighted,
        "weight_scale": reduced.weight_scale,
    }
    return arrays, meta


def _prototype(plan_meta: dict) -> pd.DataFrame:
    """A few rows with every category level, to rebuild formulaic's specs (values do not matter)."""
    levels = plan_meta["categorical_levels"]
    rows = max([3] + [len(v) for v in levels.values()])
    frame = pd.DataFrame(index=range(rows))
    for name in plan_meta["variables"]:
        if name in levels:
            values = levels[name]
            frame[name] = [values[i % len(values)] for i in range(rows)]
        else:
            frame[name] = np.linspace(1.0, 2.0, rows)  # positive: log() and sqrt() are defined
    return frame


def load_reduced(path: str | Path) -> ReducedData:
    """Load a reduction saved with :meth:`ReducedData.save`; reads plain arrays and JSON only."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{str(path)!r} is not a saved mixedfx reduction ({type(exc).__name__}).") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{str(path)!r} is not a saved mixedfx reduction in the format {FORMAT!r}.")
    parsed = with_fixed_part(parse_formula(meta["formula"]), meta.get("fixed"))
    plan_meta = meta["plan"]
    plan = plan_columns(parsed, _prototype(plan_meta), plan_meta["categorical_levels"])
    saved_terms = [(t[0], tuple(t[1]), t[2], t[3]) for t in plan_meta["terms"]]
    if [(e, f, k, n) for e, f, k, n, _ in plan.terms] != saved_terms:
        raise DataError(f"{str(path)!r} was saved from a model this version of mixedfx builds differently.")
    plan.fixed_names = plan_meta["fixed_names"]
    sm = meta["stats"]
    stats = SufficientStats(
        n=sm["n"], p=sm["p"], XtX=arrays["XtX"], Xty=arrays["Xty"], yty=sm["yty"],
        sum_log_weights=sm["sum_log_weights"], first_q=sm["first_q"], first_ZtZ=arrays["first_ZtZ"],
        first_ZtX=arrays["first_ZtX"], first_Zty=arrays["first_Zty"], rest_sizes=[tuple(r) for r in sm["rest_sizes"]],
    )  # fmt: skip
    if "rest_Z1_data" in arrays:
        shape = tuple(int(v) for v in arrays["rest_Z1_shape"])
        stats.rest_Z1 = sp.csr_matrix(
            (arrays["rest_Z1_data"], arrays["rest_Z1_indices"], arrays["rest_Z1_indptr"]), shape=shape
        )
        if "rest_ZtZ_data" in arrays:
            parts = (arrays["rest_ZtZ_data"], arrays["rest_ZtZ_indices"], arrays["rest_ZtZ_indptr"])
            stats.rest_ZtZ = sp.csr_matrix(parts, shape=tuple(int(v) for v in arrays["rest_ZtZ_shape"]))
        else:  # written before the block was kept sparse
            stats.rest_ZtZ = sp.csr_matrix(arrays["rest_ZtZ"])
        stats.rest_ZtX, stats.rest_Zty = arrays["rest_ZtX"], arrays["rest_Zty"]
    if sm["n_transforms"]:
        stats.column_transforms = [arrays[f"transform_{k}"] for k in range(sm["n_transforms"])]
    sc = meta["scaling"]
    scaling = Scaling(arrays["scaling_T"], sc["y_shift"], sc["y_scale"], sc["intercept"], sc["intercept_value"])
    levels, counts, moments = {}, {}, {}
    for k, (name, kind) in enumerate(zip(meta["factors"], meta["level_kinds"])):
        values = arrays[f"levels_{k}"]
        levels[name] = LevelLabels(values) if kind == "labels" else [str(v) for v in values]
        counts[name] = arrays[f"counts_{k}"]
        moments[name] = (arrays[f"mean_{k}"], arrays[f"sd_{k}"])
    return ReducedData(
        parsed, plan, meta["factors"], levels, counts, moments, stats, scaling, meta["nobs"], meta["n_missing"],
        meta["dropped_fixed"], meta["weighted"], meta["weight_scale"],
    )  # fmt: skip
