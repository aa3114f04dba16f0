"""Design matrices of a mixed model: response, fixed effects X and random effects Z.

Builds everything the likelihood needs from a parsed formula and a DataFrame:

- listwise deletion of rows with missing values in any variable the model uses (counted);
- ``X`` through formulaic (treatment coding, interactions, transformations), with aliased
  columns dropped as lme4 does; formulas of plain numeric columns are built straight from
  formulaic's parse (no materialisation; the spec for new data is made on first use);
- one :class:`ReBlock` per grouping factor, holding the columns of every random term on
  that factor (so ``(1|g) + (0 + x|g)`` shares one block with a block-diagonal factor);
- optional observation weights ``w`` (residual variance ``sigma^2 / w``).

Column names follow lme4: ``(Intercept)``, ``sexM``, ``lrt:sexM``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
from formulaic import Formula, model_matrix
from formulaic.errors import FormulaicError

from .covariance import CovStructure, canonical_structure
from .errors import DataError, FormulaError, IdentifiabilityWarning, RankDeficiencyWarning, suggest
from .formula import ParsedFormula, RandomTerm
from .spec.expressions import evaluation_context, factor_variables

#: Relative tolerance for detecting aliased fixed-effect columns (lme4 uses 1e-7).
RANK_TOLERANCE = 1e-7


def column_moments(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and (population) SDs of an n x q matrix, from ``Z'1`` and ``Z'Z`` (two BLAS passes).

    The variance ``E[z^2] - mean^2`` is recomputed from centred values for a column whose
    mean dwarfs its spread (where that difference would cancel).  A column of ones gets
    exactly mean 1 and SD 0.
    """
    n = Z.shape[0]
    mean = Z.sum(axis=0) / n if Z.flags.f_contiguous else (Z.T @ np.ones(n)) / n
    second = np.einsum("ij,ij->j", Z, Z) / n
    var = second - mean**2
    for k in np.flatnonzero(var <= 1e-6 * second):
        centred = Z[:, k] - mean[k]
        var[k] = float(centred @ centred) / n
    return mean, np.sqrt(np.maximum(var, 0.0))


@dataclass
class ReTerm:
    """Columns of one random term inside its block, with their covariance structure."""

    expr: str
    names: list[str]
    structure: CovStructure
    columns: slice
    spec: object = None  # formulaic ModelSpec, to rebuild the columns for new data


@dataclass
class ReBlock:
    """All random effects on one grouping factor.

    ``Z`` is n x q (the columns of all the block's terms side by side), ``codes`` gives each
    row's level (0 .. n_levels-1) and ``levels`` the level labels.
    """

    name: str
    factor: tuple[str, ...]
    codes: np.ndarray | None
    levels: Sequence[str]  # a list or LevelLabels
    Z: np.ndarray | None
    terms: list[ReTerm] = field(default_factory=list)
    counts: np.ndarray | None = None  # rows per level, when the rows themselves are not kept
    moments: tuple[np.ndarray, np.ndarray] | None = None  # column means and SDs of Z, likewise

    @property
    def q(self) -> int:
        """Number of random effects per level."""
        if self.Z is not None:
            return self.Z.shape[1]
        return sum(len(t.names) for t in self.terms)

    @property
    def level_counts(self) -> np.ndarray:
        """Number of observations in each level."""
        if self.counts is not None:
            return self.counts
        return np.bincount(self.codes, minlength=self.n_levels)

    @property
    def n_levels(self) -> int:
        """Number of levels (clusters) of the grouping factor."""
        return len(self.levels)

    @property
    def names(self) -> list[str]:
        """Names of the block's random effects, term by term."""
        return [name for term in self.terms for name in term.names]

    def factor_matrix(self, theta: np.ndarray) -> np.ndarray:
        """Block-diagonal relative covariance factor of the block for its parameters ``theta``."""
        lam = np.zeros((self.q, self.q))
        start = 0
        for term in self.terms:
            k = term.structure.n_params
            lam[term.columns, term.columns] = term.structure.factor(theta[start : start + k])
            start += k
        return lam

    def factor_jacobian(self, theta: np.ndarray) -> np.ndarray:
        """Derivatives of the block's factor w.r.t. its parameters: (n_params, q, q)."""
        jac = np.zeros((self.n_params, self.q, self.q))
        start = 0
        for term in self.terms:
            k = term.structure.n_params
            jac[start : start + k, term.columns, term.columns] = term.structure.factor_jacobian(
                theta[start : start + k]
            )
            start += k
        return jac

    def standardising_transform(self) -> np.ndarray:
        """``T`` (q x q, block diagonal by term) with ``Z T`` centred and scaled where the structure allows.

        The unstructured family is closed under any invertible change of the random-effect
        columns, so its non-intercept columns are centred on the intercept and scaled;
        independent (diagonal) terms are scaled only; identity and exchangeable ones are
        left alone.  Fitting with ``Z T`` and mapping back ``Lambda = T Lambda~`` gives the
        same model, but keeps calendar years or incomes from making the optimisation
        ill-conditioned.
        """
        T = np.eye(self.q)
        if self.Z is not None:
            mean, sd = column_moments(self.Z)
        else:
            mean, sd = self.moments
        for term in self.terms:
            kind = term.structure.kind
            if kind not in ("unstructured", "independent"):
                continue
            cols = list(range(self.q))[term.columns]
            intercept = next((c for c in range(len(cols)) if sd[cols[c]] == 0 and mean[cols[c]] == 1.0), None)
            for k, col in enumerate(cols):
                if k == intercept:
                    continue
                shift = float(mean[col]) if (intercept is not None and kind == "unstructured") else 0.0
                scale = float(np.sqrt(sd[col] ** 2 + (mean[col] - shift) ** 2))
                scale = scale if scale > 0 else 1.0
                T[col, col] = 1.0 / scale
                if shift:
                    T[cols[intercept], col] = -shift / scale
        return T

    @property
    def n_params(self) -> int:
        """Number of covariance parameters of the block."""
        return sum(term.structure.n_params for term in self.terms)


@dataclass
class Design:
    """Numeric form of a mixed model on the rows that survive listwise deletion."""

    formula: ParsedFormula
    y: np.ndarray
    X: np.ndarray
    fixed_names: list[str]
    blocks: list[ReBlock]
    weights: np.ndarray | None
    n_missing: int
    dropped_fixed: list[str]
    row_index: pd.Index
    fixed_spec: object = None
    response_name: str = ""
    data: pd.DataFrame | None = None
    n_rows: int | None = None  # the number of observations when the rows are not kept (reduced data)
    X_gram: np.ndarray | None = None  # X'X from the aliasing check, reused for the standardisation

    @property
    def nobs(self) -> int:
        """Number of observations used in the fit."""
        return len(self.y) if self.y is not None else int(self.n_rows)


def lme4_name(name: str) -> str:
    """Translate a formulaic column name into lme4's: ``sex[T.M]`` -> ``sexM``."""
    if name == "Intercept":
        return "(Intercept)"
    name = re.sub(r"\[T\.([^\]]*)\]", r"\1", name)
    return re.sub(r"\[([^\]]*)\]", r"\1", name)


@lru_cache(maxsize=256)
def parsed_formula(expr: str) -> Formula:
    """formulaic's parse of a formula string, cached (parsing costs milliseconds; fits reuse it)."""
    return Formula(expr)


def formula_factors(parsed: Formula) -> list:
    """Every factor of a parsed formula (response and right-hand side)."""
    parts = [parsed.lhs, parsed.rhs] if hasattr(parsed, "rhs") else [parsed]
    return [factor for part in parts for term in part for factor in term.factors]


def _required_variables(expr: str, where: str) -> set[str]:
    """Variables an expression uses, after checking that it may be evaluated (:mod:`mixedfx.spec.expressions`)."""
    try:
        parsed = parsed_formula(expr)
    except (FormulaicError, SyntaxError, ValueError) as exc:
        raise FormulaError(f"Cannot parse {where} {expr!r}: {exc}") from exc
    return factor_variables(formula_factors(parsed))


def _check_columns(variables: set[str], columns, where: str) -> None:
    """Raise DataError for a variable that is not one of ``columns`` (a DataFrame or names), with suggestions."""
    columns = [str(c) for c in (columns.columns if isinstance(columns, pd.DataFrame) else columns)]
    for var in sorted(variables):
        if var in columns:
            continue
        raise DataError(f"Unknown variable {var!r} in {where}: no such column in the data.{suggest(var, columns)}")


def _complete_rows(data: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Boolean mask of rows with no missing value in ``columns``; errors on infinite values."""
    mask = pd.Series(True, index=data.index)
    for col in columns:
        values = data[col]
        if values.dtype == np.float64:  # the common case: no copies (NaN is the only missing value)
            numeric = values.to_numpy()
            # A finite sum means no NaN or infinity (both propagate); one pass, no temporary.
            if np.isfinite(np.add.reduce(numeric)) or np.isfinite(numeric).all():
                continue
            mask &= ~np.isnan(numeric)
            bad = np.isinf(numeric)
        elif isinstance(values.dtype, np.dtype) and values.dtype.kind in "iub":  # numpy ints/bools: never missing
            continue
        else:
            mask &= values.notna()
            if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                continue
            bad = np.isinf(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            row = data.index[np.argmax(bad)]
            raise DataError(f"Column {col!r} has infinite values (first at row {row!r}); remove or recode them.")
    return mask


def _level_label(value: object) -> str:
    """Label of a grouping level as R prints it (``3`` rather than ``3.0``)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _level_labels(uniques: object) -> list[str]:
    """Labels of many grouping levels at once, as :func:`_level_label` gives them (vectorised for numbers)."""
    values = np.asarray(uniques)
    if values.dtype.kind in "iub":
        return values.astype(str).tolist()
    if values.dtype.kind == "f":
        integral = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2.0**53)
        labels = values.astype(str).astype(object)
        labels[integral] = values[integral].astype(np.int64).astype(str)
        return labels.tolist()
    return [_level_label(u) for u in uniques]


class LevelLabels(Sequence):
    """Labels of a grouping factor's levels, formatted from the level values on first use.

    A list of millions of Python strings costs hundreds of MB and seconds to build; fits
    need only the number of levels, so the labels stay a compact array until asked for.
    """

    def __init__(self, values: object):
        self._values = np.asarray(values)
        self._labels: list[str] | None = None

    def _list(self) -> list[str]:
        if self._labels is None:
            self._labels = _level_labels(self._values)
        return self._labels

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index):
        return self._list()[index]

    def __iter__(self):
        return iter(self._list())

    def __contains__(self, label: object) -> bool:
        return label in self._list()

    def index(self, label: object, *args) -> int:
        return self._list().index(label, *args)

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, Sequence)) else NotImplemented

    def __repr__(self) -> str:
        return f"LevelLabels({len(self)} levels)"


def factor_labels(data: pd.DataFrame, factor: tuple[str, ...]) -> np.ndarray:
    """Level label of every row for a (possibly interaction) factor, ``"a:b"`` joined (vectorised)."""
    joined = None
    for name in factor:
        codes, uniques = pd.factorize(data[name], sort=True)
        names = np.array(_level_labels(uniques) + ["nan"], dtype=str)
        labels = names[codes]  # code -1 (missing) picks "nan"
        joined = labels if joined is None else np.char.add(np.char.add(joined, ":"), labels)
    return joined


def _group_codes(data: pd.DataFrame, factor: tuple[str, ...]) -> tuple[np.ndarray, Sequence[str]]:
    """Integer codes and labels of a (possibly interaction) grouping factor."""
    if len(factor) == 1:
        column = data[factor[0]]
        values = column.to_numpy() if pd.api.types.is_numeric_dtype(column) else None
        if values is not None and values.dtype.kind in "iuf" and values.size and np.all(values[1:] >= values[:-1]):
            # Rows sorted by a numeric cluster id (the usual layout): levels where the value changes.
            change = np.empty(values.size, dtype=bool)
            change[0] = True
            np.not_equal(values[1:], values[:-1], out=change[1:])
            codes = np.cumsum(change, dtype=np.int64)
            codes -= 1  # in place: one n-sized array, not two
            return codes, LevelLabels(values[change])
        codes, uniques = pd.factorize(column, sort=True)
        return codes.astype(np.int64), LevelLabels(uniques)
    codes, uniques = pd.factorize(factor_labels(data, factor), sort=True)
    return codes.astype(np.int64), [str(u) for u in uniques]


#: From this many rows on (that is, always), formulas of plain numeric columns are built
#: without formulaic's materialisation (formulaic still parses them; its model spec is made
#: on first use, for predictions on new data).  Tests set it high to compare with formulaic.
DIRECT_ROWS = 0


class DeferredSpec:
    """formulaic's model spec of a formula, materialised from a few rows when first used.

    The direct path (:func:`_direct_model_matrices`) needs no spec to fit; predictions on new
    data do, and building it costs a few milliseconds per formula, so it waits until then.
    """

    def __init__(self, formula: str, head: pd.DataFrame, part: str | None):
        self._formula, self._head, self._part = formula, head, part
        self._spec = None

    @property
    def spec(self):
        """The formulaic ModelSpec (of the right-hand side when ``part == "rhs"``)."""
        if self._spec is None:
            matrices = model_matrix(
                parsed_formula(self._formula), self._head, na_action="raise", context=evaluation_context()
            )
            self._spec = (getattr(matrices, self._part) if self._part else matrices).model_spec
        return self._spec

    def get_model_matrix(self, data: pd.DataFrame, **kwargs):
        """The model matrix of ``data`` (formulaic's ``ModelSpec.get_model_matrix``)."""
        kwargs.setdefault("context", evaluation_context())
        return self.spec.get_model_matrix(data, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("_"):  # never recurse through the spec during copying or unpickling
            raise AttributeError(name)
        return getattr(self.spec, name)


def _plain_numeric_layout(terms, data: pd.DataFrame) -> list[list[str]] | None:
    """Per term of a parsed formula, the numeric data columns whose product is its one column
    ([] for the intercept), or None if some term is anything else (a factor, a transformation)."""
    layout = []
    for term in terms:
        names = []
        for factor in term.factors:
            method = getattr(factor.eval_method, "value", factor.eval_method)
            if method == "literal" and factor.expr == "1":
                continue
            if method != "lookup" or factor.expr not in data.columns:
                return None
            column = data[factor.expr]
            if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
                return None
            names.append(factor.expr)
        layout.append(names)
    return layout


def _direct_matrix(layout: list[list[str]], data: pd.DataFrame) -> np.ndarray:
    """Column-major matrix of products of numeric data columns (see :func:`_plain_numeric_layout`)."""
    out = np.empty((len(data), len(layout)), order="F")
    for k, names in enumerate(layout):
        if not names:
            out[:, k] = 1.0
            continue
        out[:, k] = data[names[0]].to_numpy(dtype=float)
        for name in names[1:]:
            out[:, k] *= data[name].to_numpy(dtype=float)
    return out


def _direct_model_matrices(formula: str, data: pd.DataFrame):
    """``(lhs, rhs, rhs spec, rhs names)`` built directly for plain numeric formulas on many rows, else None.

    Each term of such a formula (as formulaic parses and orders it) is one column: the
    product of its numeric columns, ``Intercept`` for ``1``; formulaic's materialisation
    gives the same matrix (tested), and its spec is deferred to first use.
    """
    if len(data) < DIRECT_ROWS:
        return None
    parsed = parsed_formula(formula)
    lhs_terms, rhs_terms = (parsed.lhs, parsed.rhs) if hasattr(parsed, "rhs") else (None, parsed)
    layouts = [None if terms is None else _plain_numeric_layout(terms, data) for terms in (lhs_terms, rhs_terms)]
    if layouts[1] is None or (lhs_terms is not None and layouts[0] is None):
        return None
    rhs = _direct_matrix(layouts[1], data)
    lhs = None if lhs_terms is None else _direct_matrix(layouts[0], data)
    names = ["Intercept" if not cols else str(term) for term, cols in zip(rhs_terms, layouts[1])]
    spec = DeferredSpec(formula, data.iloc[:100].copy(), "rhs" if lhs_terms is not None else None)
    return lhs, rhs, spec, names


def _fixed_matrices(parsed: ParsedFormula, data: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str], object]:
    """Response vector, fixed-effects matrix, its lme4 column names and formulaic spec."""
    try:
        direct = _direct_model_matrices(parsed.fixed_formula, data)
        if direct is not None and direct[0] is not None and direct[0].shape[1] == 1:
            lhs, X, spec, names = direct
            return lhs[:, 0], X, [lme4_name(c) for c in names], spec
        matrices = model_matrix(
            parsed_formula(parsed.fixed_formula), data, na_action="raise", context=evaluation_context()
        )
    except (FormulaicError, SyntaxError, ValueError, TypeError, KeyError) as exc:
        raise FormulaError(f"Cannot build the fixed effects '{parsed.fixed_formula}': {exc}") from exc
    lhs = matrices.lhs
    if lhs.shape[1] != 1:
        raise DataError(
            f"The response {parsed.response!r} must be one numeric column, but it expands to "
            f"{lhs.shape[1]} columns ({', '.join(map(str, lhs.columns))}): is it a text/categorical column?"
        )
    y = np.asarray(lhs, dtype=float).ravel()
    rhs = matrices.rhs
    X = np.asarray(rhs, dtype=float)
    return y, X, [lme4_name(str(c)) for c in rhs.columns], rhs.model_spec


def aliased_columns(gram: np.ndarray, tolerance: float = RANK_TOLERANCE) -> np.ndarray:
    """Flags of columns that are (numerically) linear combinations of earlier ones.

    ``gram`` is ``X'X`` of columns scaled to unit norm.  Column j is aliased when its squared
    residual norm after projection on the kept earlier columns (the Schur complement, as in a
    Cholesky factorisation) is below ``tolerance^2``: the earlier columns are kept, as lme4 does.
    """
    p = gram.shape[0]
    aliased = np.zeros(p, dtype=bool)
    kept: list[int] = []
    for j in range(p):
        norm2 = gram[j, j]
        if kept:
            b = gram[kept, j]
            resid = norm2 - b @ np.linalg.solve(gram[np.ix_(kept, kept)], b)
        else:
            resid = norm2
        if norm2 > 0 and resid > tolerance**2 * norm2:
            kept.append(j)
        else:
            aliased[j] = True
    return aliased


def _drop_aliased(X: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    """Drop columns of X that are (numerically) linear combinations of earlier columns (with a warning).

    Returns the kept columns, their names, the dropped names and ``X'X`` of the kept columns.
    """
    if X.shape[1] == 0:
        return X, names, [], np.zeros((0, 0))
    gram = X.T @ X
    norms = np.sqrt(np.diag(gram))
    scale = np.where(norms > 0, norms, 1.0)
    aliased = aliased_columns(gram / np.outer(scale, scale)) | (norms == 0)
    if not aliased.any():
        return X, names, [], gram  # no copy: X is the largest array of a fit
    keep = ~aliased
    dropped = [n for n, k in zip(names, keep) if not k]
    if dropped:
        warnings.warn(
            f"Fixed-effects design is rank deficient: dropping {len(dropped)} column(s) "
            f"aliased with earlier ones: {', '.join(dropped)}.",
            RankDeficiencyWarning,
            stacklevel=3,
        )
    return X[:, keep], [n for n, k in zip(names, keep) if k], dropped, gram[np.ix_(keep, keep)]


def _term_columns(term: RandomTerm, data: pd.DataFrame) -> tuple[np.ndarray, list[str], object]:
    """Columns of a random term's expression (``1 + x`` etc.) and their lme4 names."""
    try:
        direct = _direct_model_matrices(term.expr, data)
        if direct is not None:
            _, Z, spec, names = direct
            if Z.shape[1] == 0:
                raise FormulaError(f"Random term ({term.expr} | {term.group_name}) has no columns.")
            return Z, [lme4_name(c) for c in names], spec
        mm = model_matrix(parsed_formula(term.expr), data, na_action="raise", context=evaluation_context())
    except (FormulaicError, SyntaxError, ValueError, TypeError, KeyError) as exc:
        raise FormulaError(f"Cannot build random term ({term.expr} | {term.group_name}): {exc}") from exc
    Z = np.asarray(mm, dtype=float)
    if Z.shape[1] == 0:
        raise FormulaError(f"Random term ({term.expr} | {term.group_name}) has no columns.")
    return Z, [lme4_name(str(c)) for c in mm.columns], mm.model_spec


def _resolve_structure(term: RandomTerm, q: int, covariance: dict[str, str] | None) -> CovStructure:
    """Covariance structure of a term: the user's choice for its factor, else the formula's."""
    kind = term.covariance
    if covariance:
        for key in (term.group_name, term.factor[0]):
            if key in covariance:
                kind = canonical_structure(covariance[key])
                break
    return CovStructure(kind, q)


def _build_blocks(
    parsed: ParsedFormula, data: pd.DataFrame, nobs: int, covariance: dict[str, str] | None
) -> list[ReBlock]:
    """Group the random terms by grouping factor and build each block's Z and codes."""
    blocks: dict[str, ReBlock] = {}
    for term in parsed.random:
        Z, names, spec = _term_columns(term, data)
        block = blocks.get(term.group_name)
        if block is None:
            codes, levels = _group_codes(data, term.factor)
            block = ReBlock(term.group_name, term.factor, codes, levels, np.empty((nobs, 0)))
            blocks[term.group_name] = block
        start = block.q
        block.Z = Z if start == 0 else np.hstack([block.Z, Z])  # no copy for a block's first term
        structure = _resolve_structure(term, Z.shape[1], covariance)
        block.terms.append(ReTerm(term.expr, names, structure, slice(start, start + Z.shape[1]), spec))
    ordered = sorted(blocks.values(), key=lambda b: -b.n_levels)  # lme4's order: most levels first
    for block in ordered:
        _check_block(block, nobs)
        _warn_constant_slopes(block)
    return ordered


def _warn_constant_slopes(block: ReBlock) -> None:
    """Warn when a random slope does not vary within any cluster (it then only shifts the intercept)."""
    intercept = any(np.all(block.Z[:, k] == 1.0) for k in range(block.q))
    codes = block.codes
    starts = None
    if codes.size and np.all(codes[1:] >= codes[:-1]):  # rows grouped by cluster: per-cluster ranges
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    for k, name in enumerate(block.names):
        col = block.Z[:, k]
        if not intercept or np.all(col == 1.0):
            continue
        if starts is not None:
            spread = (np.maximum.reduceat(col, starts) - np.minimum.reduceat(col, starts)).max()
        else:
            counts = np.bincount(codes, minlength=block.n_levels)
            means = np.bincount(codes, weights=col, minlength=block.n_levels) / np.maximum(counts, 1)
            spread = np.abs(col - means[codes]).max()
        if spread <= 1e-12 * max(np.abs(col).max(), 1.0):
            warnings.warn(
                f"The random slope of {name!r} on {block.name!r} is constant within every cluster: it is "
                "confounded with the random intercept and identified only through differences in variance "
                "between clusters. Consider dropping it from the random part.",
                IdentifiabilityWarning,
                stacklevel=4,
            )


def _check_block(block: ReBlock, nobs: int) -> None:
    """Refuse grouping factors that cannot be estimated (one level, or as many levels as rows)."""
    if block.n_levels < 2:
        raise DataError(
            f"Grouping factor {block.name!r} has only {block.n_levels} level in the data used: "
            "a random effect needs at least two clusters."
        )
    if block.n_levels >= nobs:
        raise DataError(
            f"Grouping factor {block.name!r} has {block.n_levels} levels for {nobs} observations "
            "(every cluster has one observation): its variance cannot be separated from the residual."
        )
    if block.q * block.n_levels >= nobs:
        raise DataError(
            f"{nobs} observations are not more than the {block.q * block.n_levels} random effects of "
            f"({' + '.join(block.names)} | {block.name}): the random-effects parameters and the residual "
            "variance are unidentifiable."
        )


def _check_enough_rows(nobs: int, n_fixed: int) -> None:
    """Refuse designs with no residual degrees of freedom."""
    if nobs <= n_fixed + 1:
        raise DataError(f"{nobs} observations are too few for {n_fixed} fixed-effect and residual parameters.")


def _weights_vector(weights: object, data: pd.DataFrame, mask: pd.Series) -> np.ndarray | None:
    """Observation weights on the used rows (a column name or an array), validated positive."""
    if weights is None:
        return None
    if isinstance(weights, str):
        w = pd.to_numeric(data.loc[mask, weights], errors="coerce").to_numpy(dtype=float)
        label = f"weights column {weights!r}"
    else:
        w_all = np.asarray(weights, dtype=float)
        if w_all.shape != (len(data),):
            raise DataError(f"weights has {w_all.size} values for {len(data)} rows of data.")
        w = w_all[mask.to_numpy()]
        label = "weights"
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise DataError(f"{label} must be positive and finite for every row used.")
    return w


def build_design(
    parsed: ParsedFormula,
    data: pd.DataFrame,
    weights: object = None,
    covariance: dict[str, str] | None = None,
    missing: str = "drop",
) -> Design:
    """Build the :class:`Design` of ``parsed`` on ``data``.

    ``missing="drop"`` deletes incomplete rows listwise (and counts them);
    ``missing="raise"`` refuses data with missing values in the model's variables.
    """
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame or a file path, not {type(data).__name__}.")
    if len(data) == 0:
        raise DataError("The data set is empty.")
    data = data.rename(columns=str) if not all(isinstance(c, str) for c in data.columns) else data
    fixed_vars = _required_variables(parsed.fixed_formula, "the fixed part")
    _check_columns(fixed_vars, data, "the fixed part")
    variables = set(fixed_vars)
    for term in parsed.random:
        term_vars = _required_variables(term.expr, f"random term ({term.expr} | {term.group_name})")
        _check_columns(term_vars | set(term.factor), data, f"random term ({term.expr} | {term.group_name})")
        variables |= term_vars | set(term.factor)
    if isinstance(weights, str):
        _check_columns({weights}, data, "weights")
        variables.add(weights)
    used = [c for c in data.columns if c in variables]
    mask = _complete_rows(data, used)
    n_missing = int((~mask).sum())
    if n_missing and missing == "raise":
        raise DataError(f"{n_missing} rows have missing values in the model's variables (missing='raise').")
    if not mask.any():
        raise DataError(
            "No complete rows: every row has a missing value in one of " + ", ".join(repr(c) for c in used) + "."
        )
    complete = n_missing == 0
    # Select by position: label selection compares the column Index, which for pandas' Arrow
    # strings loads pyarrow's compute kernels (~0.1 s on a cold start) for nothing.
    positions = [i for i, c in enumerate(data.columns) if c in variables]
    rows = slice(None) if complete else mask.to_numpy()  # no row copy when nothing is dropped
    frame = data if (complete and len(positions) == data.shape[1]) else data.iloc[rows, positions]
    if frame.select_dtypes(include="category").shape[1]:
        frame = frame.copy()
        for col in frame.select_dtypes(include="category"):
            frame[col] = frame[col].cat.remove_unused_categories()
    y, X, names, spec = _fixed_matrices(parsed, frame)
    _check_enough_rows(len(y), X.shape[1])
    X, names, dropped, gram = _drop_aliased(X, names)
    blocks = _build_blocks(parsed, frame, len(y), covariance)
    return Design(
        formula=parsed,
        y=y,
        X=X,
        fixed_names=names,
        blocks=blocks,
        weights=_weights_vector(weights, data, mask),
        n_missing=n_missing,
        dropped_fixed=dropped,
        row_index=frame.index,
        fixed_spec=spec,
        response_name=parsed.response,
        data=data if complete else data.loc[mask],
        X_gram=gram,
    )
