"""Covariance structures for the random effects of one term (Stata's ``covariance()``).

Each structure maps a parameter vector ``theta`` to a *relative covariance factor*
``Lambda`` (q x q) with ``G = sigma^2 * Lambda @ Lambda.T``, where ``sigma^2`` is the
residual variance.  Working relative to ``sigma`` lets the likelihood profile ``sigma``
out, as lme4 and MixedModels.jl do.

=============  ===========================================  ======================
structure      G / sigma^2                                  parameters
=============  ===========================================  ======================
identity       t^2 I                                        1: t >= 0
independent    diag(t_1^2, ..., t_q^2)                      q: t_k >= 0
exchangeable   t^2 ((1 - r) I + r J)                        2: t >= 0, r in (-1/(q-1), 1)
unstructured   L L', L lower triangular                     q(q+1)/2, diag(L) >= 0
=============  ===========================================  ======================

The unstructured parameters are lme4's ``theta``: the lower triangle of ``L`` column by
column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

#: The structures this module implements (the spec layer maps Stata/lme4 spellings to these).
KINDS = ("identity", "independent", "exchangeable", "unstructured")


@dataclass(frozen=True)
class CovStructure:
    """A covariance structure of dimension ``q`` (see the module docstring)."""

    kind: str
    q: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown covariance structure {self.kind!r}")

    @property
    def n_params(self) -> int:
        """Number of free parameters in ``theta``."""
        return {
            "identity": 1,
            "independent": self.q,
            "exchangeable": 2 if self.q > 1 else 1,
            "unstructured": self.q * (self.q + 1) // 2,
        }[self.kind]

    def lower_bounds(self) -> np.ndarray:
        """Lower bounds of ``theta`` (``-inf`` where unbounded)."""
        if self.kind == "unstructured":
            rows, cols = _tril_indices_colwise(self.q)
            return np.where(rows == cols, 0.0, -np.inf)
        if self.kind == "exchangeable" and self.q > 1:
            return np.array([0.0, -1.0 / (self.q - 1) + 1e-8])
        return np.zeros(self.n_params)

    def upper_bounds(self) -> np.ndarray:
        """Upper bounds of ``theta`` (``+inf`` where unbounded)."""
        if self.kind == "exchangeable" and self.q > 1:
            return np.array([np.inf, 1.0 - 1e-8])
        return np.full(self.n_params, np.inf)

    def start(self) -> np.ndarray:
        """Starting values: ``Lambda = I`` (relative SDs one, no correlation), as lme4."""
        if self.kind == "unstructured":
            rows, cols = _tril_indices_colwise(self.q)
            return (rows == cols).astype(float)
        if self.kind == "exchangeable" and self.q > 1:
            return np.array([1.0, 0.0])
        return np.ones(self.n_params)

    def factor(self, theta: np.ndarray) -> np.ndarray:
        """Relative covariance factor ``Lambda`` (q x q) for parameters ``theta``."""
        q = self.q
        if self.kind == "identity":
            return theta[0] * np.eye(q)
        if self.kind == "independent":
            return np.diag(theta)
        if self.kind == "exchangeable":
            if q == 1:
                return np.array([[theta[0]]])
            # Symmetric square root of (1 - r) I + r J, from its two eigenvalues; it stays
            # defined (and continuous) as r reaches its bounds, where a Cholesky factor would not.
            t, r = theta
            a = np.sqrt(max(1.0 - r, 0.0))
            b = np.sqrt(max(1.0 + (q - 1) * r, 0.0))
            return t * (a * np.eye(q) + (b - a) / q * np.ones((q, q)))
        rows, cols = _tril_indices_colwise(q)
        lam = np.zeros((q, q))
        lam[rows, cols] = theta
        return lam

    def factor_jacobian(self, theta: np.ndarray) -> np.ndarray:
        """Derivatives ``dLambda / dtheta_k`` as an array (n_params, q, q).

        Identity, independent and unstructured factors are linear in theta, so the
        derivative is the factor of a unit vector; the exchangeable one is differentiated
        analytically.
        """
        if self.kind != "exchangeable" or self.q == 1:
            return _linear_jacobian(self)
        q = self.q
        t, r = theta
        a = np.sqrt(max(1.0 - r, 1e-300))
        b = np.sqrt(max(1.0 + (q - 1) * r, 1e-300))
        unit = a * np.eye(q) + (b - a) / q * np.ones((q, q))
        da, db = -0.5 / a, 0.5 * (q - 1) / b
        d_r = t * (da * np.eye(q) + (db - da) / q * np.ones((q, q)))
        return np.stack([unit, d_r])

    def theta_from_relative_covariance(self, Gr: np.ndarray) -> np.ndarray:
        """Parameters theta whose factor reproduces ``Gr = G / sigma^2`` (Gr of this structure's form)."""
        q = self.q
        if self.kind == "identity":
            return np.array([np.sqrt(max(Gr[0, 0], 0.0))])
        if self.kind == "independent":
            return np.sqrt(np.maximum(np.diag(Gr), 0.0))
        if self.kind == "exchangeable":
            if q == 1:
                return np.array([np.sqrt(max(Gr[0, 0], 0.0))])
            return np.array([np.sqrt(max(Gr[0, 0], 0.0)), Gr[1, 0] / Gr[0, 0] if Gr[0, 0] > 0 else 0.0])
        L = _safe_cholesky(Gr)
        rows, cols = _tril_indices_colwise(q)
        return L[rows, cols]

    def mirrors(self) -> dict[int, list[int]]:
        """For each diagonal parameter of an unstructured factor, the off-diagonal parameters of its
        column (whose sign a boundary probe flips; see :func:`mixedfx.engine.optimize.minimize_deviance`)."""
        if self.kind != "unstructured":
            return {}
        rows, cols = _tril_indices_colwise(self.q)
        return {
            int(k): [int(i) for i in np.flatnonzero((cols == cols[k]) & (rows > rows[k]))]
            for k in np.flatnonzero(rows == cols)
        }

    def boundary_alternatives(self, theta: np.ndarray) -> list[np.ndarray]:
        """Other starting points around a singular unstructured ``G`` (empty otherwise).

        A rank-deficient ``G`` lies where several faces of the Cholesky parameterisation meet
        (a zero diagonal of ``L`` in one column or another), and an optimiser that reached it
        along one face cannot see a better optimum on another.  The points returned, all
        functions of ``G`` itself (so the restarts do not depend on the path, row order or
        rounding, that led to ``G``), are: ``G``'s leading rank-one part ``u u'`` written in
        the first column of ``L`` (both signs of ``u`` when ``u_1 = 0``, where the covariances
        it creates can leave with either sign), and ``G`` inflated off the boundary
        (``G + 0.1 max(diag G) I``) with its mirror images (one effect's covariances flipped).
        """
        if self.kind != "unstructured" or self.q < 2 or not self.on_boundary(theta):
            return []
        L = self.factor(theta)
        G = L @ L.T
        values, vectors = np.linalg.eigh(G)
        u = vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
        u = -u if u[0] < 0 else u
        rank_one = []
        for sign in (1.0, -1.0) if abs(u[0]) < 1e-8 * max(np.abs(u).max(), 1e-300) else (1.0,):
            column = np.zeros((self.q, self.q))
            column[:, 0] = sign * u
            column[0, 0] = abs(u[0])
            rank_one.append(column)
        inflated = G + 0.1 * max(float(np.max(np.diag(G))), 1e-4) * np.eye(self.q)
        points = [inflated]
        for i in range(1, self.q):
            flip = np.ones(self.q)
            flip[i] = -1.0
            points.append(inflated * np.outer(flip, flip))
        rows, cols = _tril_indices_colwise(self.q)
        return [c[rows, cols] for c in rank_one] + [self.theta_from_relative_covariance(P) for P in points]

    def on_boundary(self, theta: np.ndarray, tol: float = 1e-4) -> bool:
        """True when the structure is singular at ``theta`` (lme4's ``isSingular`` rule)."""
        lower = self.lower_bounds()
        finite = np.isfinite(lower)
        if np.any(np.abs(theta[finite] - lower[finite]) < tol):
            return True
        if self.kind == "exchangeable" and self.q > 1:
            return bool(theta[1] > 1 - tol)
        return False


def _safe_cholesky(A: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a positive semi-definite matrix (zero columns where singular)."""
    q = A.shape[0]
    L = np.zeros_like(A, dtype=float)
    for j in range(q):
        d = A[j, j] - L[j, :j] @ L[j, :j]
        L[j, j] = np.sqrt(d) if d > 1e-14 * max(abs(A[j, j]), 1e-300) else 0.0
        for i in range(j + 1, q):
            L[i, j] = (A[i, j] - L[i, :j] @ L[j, :j]) / L[j, j] if L[j, j] > 0 else 0.0
    return L


@lru_cache(maxsize=64)
def _tril_indices_colwise(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a q x q lower triangle, column by column (lme4's order; cached)."""
    cols, rows = np.triu_indices(q)
    rows.flags.writeable = False
    cols.flags.writeable = False
    return rows, cols


@lru_cache(maxsize=64)
def _linear_jacobian(structure: CovStructure) -> np.ndarray:
    """dLambda/dtheta of a structure linear in theta: the factors of the unit vectors (constant)."""
    k = structure.n_params
    jac = np.stack([structure.factor(np.eye(k)[i]) for i in range(k)])
    jac.flags.writeable = False
    return jac


@dataclass
class BlockLayout:
    """The random effects on one grouping factor: q columns, split into terms with their structures.

    ``terms`` lists ``(columns, structure)`` in parameter order; the block's relative
    covariance factor is block diagonal over the terms and its parameters are the terms'
    parameters one after another.  ``names`` labels the q columns (lme4's names, such as
    ``(Intercept)``), which tells a random intercept apart.
    """

    terms: list[tuple[slice, CovStructure]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def q(self) -> int:
        """Number of random effects per level."""
        return sum(structure.q for _, structure in self.terms)

    @property
    def n_params(self) -> int:
        """Number of covariance parameters of the block."""
        return sum(structure.n_params for _, structure in self.terms)

    def add(self, structure: CovStructure, names: list[str]) -> slice:
        """Append a term of ``structure.q`` columns named ``names``; returns its columns."""
        start = self.q
        columns = slice(start, start + structure.q)
        self.terms.append((columns, structure))
        self.names.extend(names)
        return columns

    def _split(self, theta: np.ndarray):
        start = 0
        for columns, structure in self.terms:
            yield columns, structure, theta[start : start + structure.n_params]
            start += structure.n_params

    def factor_matrix(self, theta: np.ndarray) -> np.ndarray:
        """Block-diagonal relative covariance factor ``Lambda`` (q x q) for the block's ``theta``."""
        lam = np.zeros((self.q, self.q))
        for columns, structure, part in self._split(theta):
            lam[columns, columns] = structure.factor(part)
        return lam

    def factor_jacobian(self, theta: np.ndarray) -> np.ndarray:
        """Derivatives of the block's factor w.r.t. its parameters: (n_params, q, q)."""
        jac = np.zeros((self.n_params, self.q, self.q))
        start = 0
        for columns, structure, part in self._split(theta):
            k = structure.n_params
            jac[start : start + k, columns, columns] = structure.factor_jacobian(part)
            start += k
        return jac

    def theta_from_relative_covariance(self, Gr: np.ndarray) -> np.ndarray:
        """The block's parameters whose factor reproduces ``Gr = G / sigma^2`` (term by term)."""
        parts = [s.theta_from_relative_covariance(Gr[c, c]) for c, s in self.terms]
        return np.concatenate(parts) if parts else np.zeros(0)

    def on_boundary(self, theta: np.ndarray, tol: float = 1e-4) -> bool:
        """True when some term's structure is singular at ``theta`` (lme4's ``isSingular``)."""
        return any(structure.on_boundary(part, tol) for _, structure, part in self._split(theta))

    def start(self) -> np.ndarray:
        """lme4's starting values (``Lambda = I``)."""
        return _concatenate([s.start() for _, s in self.terms])

    def boundary_alternatives(self, theta: np.ndarray) -> list[np.ndarray]:
        """The block's parameters with one term moved to one of its :meth:`CovStructure.boundary_alternatives`."""
        out = []
        start = 0
        for _, structure in self.terms:
            k = structure.n_params
            for point in structure.boundary_alternatives(theta[start : start + k]):
                alternative = np.array(theta, dtype=float)
                alternative[start : start + k] = point
                out.append(alternative)
            start += k
        return out

    def mirrors(self) -> dict[int, list[int]]:
        """The terms' :meth:`CovStructure.mirrors`, in the block's parameter positions."""
        out, start = {}, 0
        for _, structure in self.terms:
            for k, flips in structure.mirrors().items():
                out[start + k] = [start + i for i in flips]
            start += structure.n_params
        return out

    def lower_bounds(self) -> np.ndarray:
        return _concatenate([s.lower_bounds() for _, s in self.terms])

    def upper_bounds(self) -> np.ndarray:
        return _concatenate([s.upper_bounds() for _, s in self.terms])

    def standardising_transform(self, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
        """``T`` (q x q, block diagonal by term) with ``Z T`` centred and scaled where the structure allows.

        ``mean`` and ``sd`` are the columns' means and (population) SDs.  The unstructured
        family is closed under any invertible change of the random-effect columns, so its
        non-intercept columns are centred on the intercept and scaled; independent (diagonal)
        terms are scaled only; identity and exchangeable ones are left alone.  Fitting with
        ``Z T`` and mapping back ``Lambda = T Lambda~`` gives the same model, but keeps
        calendar years or incomes from making the optimisation ill-conditioned.
        """
        T = np.eye(self.q)
        for columns, structure in self.terms:
            if structure.kind not in ("unstructured", "independent"):
                continue
            cols = list(range(self.q))[columns]
            intercept = next((c for c in range(len(cols)) if sd[cols[c]] == 0 and mean[cols[c]] == 1.0), None)
            for k, col in enumerate(cols):
                if k == intercept:
                    continue
                shift = float(mean[col]) if (intercept is not None and structure.kind == "unstructured") else 0.0
                scale = float(np.hypot(sd[col], mean[col] - shift))
                scale = scale if scale > 0 and np.isfinite(scale) else 1.0
                T[col, col] = 1.0 / scale
                if shift:
                    T[cols[intercept], col] = -shift / scale
        return T


def _concatenate(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)
