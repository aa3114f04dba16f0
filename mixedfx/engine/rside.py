"""Residual (R-side) covariance structures: ``e_i ~ N(0, sigma^2 R_i)`` within clusters.

``R_i = S_i C_i S_i`` with ``C_i`` a correlation matrix over the cluster's occasions and
``S_i`` a diagonal of relative SDs (1 for the reference level).  Structures (Stata's
``residuals()``, nlme's ``correlation=`` / ``weights=``):

=============  ====================================================  =========================
type           corr(e_s, e_t) (``d = |t_s - t_t|``)                   parameters
=============  ====================================================  =========================
independent    0                                                     none
exchangeable   rho                                                   rho
ar1            rho^d (``t`` integer occasions; gaps allowed)         rho
exponential    rho^d (``t`` continuous time; CAR(1))                 rho in [0, 1)
ma1            rho if d = 1, else 0                                  rho (|rho| < 0.5)
toeplitz K     rho_d for d <= K, else 0                              rho_1..rho_K
banded K       unstructured within lag K (own SD per occasion)       SDs, rho_st for d <= K
unstructured   own SD per occasion, rho_st for every pair            SDs, all rho_st
=============  ====================================================  =========================

``by(VAR)`` gives each level of VAR its own residual SD (relative to the first level) and,
for correlated types, its own correlation parameters (as Stata does).  Variance functions
of a covariate multiply the SD by ``|v|^delta`` (power) or ``exp(delta v)`` (exponential).
Without ``t()``, the occasion is the row's position within its cluster (1, 2, ...).

The exponential's ``rho`` is estimated through its log range, ``rho = exp(-1 / range)``
with ``range = s exp(u)`` and ``s`` the median gap between a cluster's consecutive times
(as nlme's ``corExp``): ``u`` in [-8, 8] then spans correlations at the typical gap from
``exp(-e^8)`` (none) to ``exp(-e^-8)`` (almost 1) whatever the unit of time, whereas a
logistic ``rho`` stops at ``rho = 3e-4``, which still correlates times 0.1 apart by 0.45.

Likelihood: for fixed R-parameters ``u`` each cluster's ``[Z X y]`` is whitened by the
Cholesky factor of ``R_i`` (clusters of equal size batched together); the per-cluster
cross-products of the whitened rows are the usual sufficient statistics, so the profiled
mixed-model deviance applies, plus ``sum_i log|R_i|`` (:class:`RSideModel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .covariance import BlockLayout
from .deviance import ProfiledDeviance
from .factory import make_deviance
from .stats import SufficientStats


# ---------------------------------------------------------------------------- parameters
@dataclass
class RParameters:
    """Layout of the unconstrained R-side parameter vector and its natural-scale labels."""

    labels: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # "rho", "log_range", "rho_ma", "pacf", "chol", "lsd", "delta"
    groups: list[int] = field(default_factory=list)  # by-level of each parameter (0 if none)
    band: int | None = None  # "chol" correlations: within this many occasions (None: all pairs)

    def add(self, label: str, kind: str, group: int = 0) -> None:
        self.labels.append(label)
        self.kinds.append(kind)
        self.groups.append(group)

    n_occasions: int = 0
    time_scale: float = 1.0  # "log_range": the median gap between consecutive times

    def natural(self, u: np.ndarray) -> np.ndarray:
        """Parameters on their natural scale: correlations, SD ratios, variance-function powers."""
        out = np.empty_like(u, dtype=float)
        for k, kind in enumerate(self.kinds):
            if kind == "rho":
                out[k] = np.tanh(u[k])
            elif kind == "log_range":  # rho = exp(-1 / range), range = time_scale * exp(u)
                out[k] = np.exp(-np.exp(-u[k]) / self.time_scale)
            elif kind == "rho_ma":
                out[k] = 0.5 * np.tanh(u[k])
            elif kind == "lsd":
                out[k] = np.exp(u[k])
            else:
                out[k] = u[k]
        for g in set(self.groups):
            idx = [k for k, kind in enumerate(self.kinds) if kind == "chol" and self.groups[k] == g]
            if idx:
                C = unstructured_correlation(u[idx], self.n_occasions, self.band)
                a, b = band_indices(self.n_occasions, self.band)
                out[idx] = C[a, b]
            idx = [k for k, kind in enumerate(self.kinds) if kind == "pacf" and self.groups[k] == g]
            if idx:
                out[idx] = ma_autocorrelation(np.tanh(u[idx]))
        return out


def band_indices(n: int, band: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the strictly-lower entries of an n x n matrix within ``band`` of the
    diagonal (all of them for ``band=None``), in the order of ``np.tril_indices(n, -1)``."""
    rows, cols = np.tril_indices(n, -1)
    if band is None:
        return rows, cols
    keep = rows - cols <= band
    return rows[keep], cols[keep]


def ma_autocorrelation(pacf: np.ndarray) -> np.ndarray:
    """Autocorrelations at lags 1..K of the invertible MA(K) process with these partial autocorrelations.

    The partial autocorrelations in (-1, 1) map, by the Durbin-Levinson recursion, one to one
    onto the invertible MA(K) coefficients ``theta`` (Monahan 1984; nlme's ``corARMA`` uses
    the same map), and ``rho_d = sum_i psi_i psi_{i+d} / sum_i psi_i^2`` with
    ``psi = (1, theta_1, ..., theta_K)``.  A banded Toeplitz correlation built from them is
    positive definite for any number of occasions.
    """
    K = pacf.size
    phi = np.zeros(0)
    for k in range(K):
        phi = np.append(phi - pacf[k] * phi[::-1], pacf[k])
    psi = np.append(1.0, -phi)
    return np.array([psi[: K + 1 - d] @ psi[d:] for d in range(1, K + 1)]) / (psi @ psi)


def unstructured_correlation(values: np.ndarray, n: int, band: int | None = None) -> np.ndarray:
    """Correlation matrix ``normalise(L L')`` from the strictly-lower entries of a unit-diagonal ``L``.

    Positive definite for every value of the parameters (an unconstrained parameterisation).
    Entries follow ``np.tril_indices(n, -1)``: (1,0), (2,0), (2,1), ...; with ``band`` only
    those within ``band`` of the diagonal, and ``L L'`` is banded too: every positive definite
    banded correlation matrix arises (its Cholesky factor is banded).
    """
    L = np.eye(n)
    L[band_indices(n, band)] = values
    S = L @ L.T
    d = 1.0 / np.sqrt(np.diag(S))
    return S * np.outer(d, d)


class RStructure:
    """The R-side model on the estimation rows: builds ``R_i`` for unconstrained parameters."""

    def __init__(
        self,
        spec,
        time: np.ndarray,
        by_codes: np.ndarray,
        by_levels: list[str],
        var_covariate: np.ndarray | None,
        clusters: np.ndarray,
        n_clusters: int,
    ):
        """``spec`` is the parsed ``residuals()`` (its kind, order, by, variance); ``time`` the
        occasion of every row, ``by_codes`` its level of ``by`` (0 without), ``var_covariate``
        the variance function's covariate, ``clusters`` each row's cluster code."""
        self.spec = spec
        self.clusters = clusters
        self.n_clusters = n_clusters
        self.time = time
        self.by_codes, self.by_levels = by_codes, by_levels
        self.var_covariate = var_covariate
        self.occasions = np.unique(self.time) if spec.kind in ("banded", "unstructured") else None
        if self.occasions is not None:
            self.occasion_index = np.searchsorted(self.occasions, self.time)
        self.params = self._layout()

    def _layout(self) -> RParameters:
        p = RParameters()
        spec = self.spec
        levels = self.by_levels if spec.by is not None else ["all"]
        for g, level in enumerate(levels):
            tag = f" ({spec.by}={level})" if spec.by is not None else ""
            if spec.kind in ("ar1", "exchangeable"):
                p.add(f"rho{tag}", "rho", g)
            elif spec.kind == "exponential":  # rho^d with continuous d needs rho in [0, 1)
                p.add(f"rho{tag}", "log_range", g)
                p.time_scale = typical_gap(self.time, self.clusters)
            elif spec.kind == "ma1":
                p.add(f"rho1{tag}", "rho_ma", g)
            elif spec.kind == "toeplitz":  # as MA(K): positive definite everywhere (see ma_autocorrelation)
                for d in range(1, spec.order + 1):
                    p.add(f"rho{d}{tag}", "pacf", g)
            elif spec.kind in ("banded", "unstructured"):
                occ = self.occasions
                for k in range(1, len(occ)):
                    p.add(f"sd(e{_fmt(occ[k])})/sd(e{_fmt(occ[0])}){tag}", "lsd", g)
                p.n_occasions = len(occ)
                p.band = spec.order if spec.kind == "banded" else None
                for a, b in zip(*band_indices(len(occ), p.band)):
                    p.add(f"corr(e{_fmt(occ[b])},e{_fmt(occ[a])}){tag}", "chol", g)
        for g, level in enumerate(levels[1:], start=1):
            p.add(f"sd(Residual: {spec.by}={level})/sd(Residual: {spec.by}={levels[0]})", "lsd", g)
        if spec.variance is not None:
            p.add(f"delta({spec.variance[0]}: {spec.variance[1]})", "delta", 0)
        return p

    @property
    def n_params(self) -> int:
        return len(self.params.labels)

    def start(self) -> np.ndarray:
        return np.zeros(self.n_params)

    #: The correlation of :meth:`weak_start`.
    WEAK_CORRELATION = 0.1

    def weak_start(self) -> np.ndarray:
        """Unconstrained parameters of weakly correlated residuals (correlations 0.1, equal SDs).

        A second starting point: from :meth:`start` (``rho = 0.5`` for the exponential) the
        residual correlation may absorb the random effects' share of the covariance and end at
        a boundary optimum (a variance of zero) that a start with weak correlation avoids.
        """
        r = self.WEAK_CORRELATION
        values = {"rho": np.arctanh(r), "log_range": -np.log(-np.log(r)), "rho_ma": np.arctanh(2 * r),
                  "pacf": np.arctanh(r), "chol": r}  # fmt: skip
        return np.array([values.get(kind, 0.0) for kind in self.params.kinds])

    # -------------------------------------------------------------- R_i
    def sd_multipliers(self, u: np.ndarray) -> np.ndarray:
        """Relative SD of every row (by-level ratio times the variance function)."""
        sd = np.ones(len(self.clusters))
        nat = self.params.natural(u)
        for k, label in enumerate(self.params.labels):
            if label.startswith("sd(Residual: "):
                sd[self.by_codes == self.params.groups[k]] *= nat[k]
            elif self.params.kinds[k] == "delta":
                v = self.var_covariate
                sd *= np.abs(v) ** nat[k] if self.spec.variance[0] == "power" else np.exp(nat[k] * v)
        if self.spec.kind in ("banded", "unstructured"):
            occ_sd = self._occasion_sds(nat)
            sd *= occ_sd[self.by_codes, self.occasion_index]
        return sd

    def _occasion_sds(self, nat: np.ndarray) -> np.ndarray:
        n_occ = len(self.occasions)
        out = np.ones((len(self.by_levels), n_occ))
        for k, label in enumerate(self.params.labels):
            if label.startswith("sd(e"):
                g = self.params.groups[k]
                occ = label[4 : label.index(")")]
                out[g, [_fmt(o) for o in self.occasions].index(occ)] = nat[k]
        return out

    def correlation(self, t: np.ndarray, group: np.ndarray, u: np.ndarray, occ: np.ndarray | None) -> np.ndarray:
        """Correlation matrices for a batch of clusters: t (k, n) times, group (k,) by-levels."""
        kind = self.spec.kind
        k, n = t.shape
        eye = np.broadcast_to(np.eye(n), (k, n, n)).copy()
        if kind == "independent":
            return eye
        nat = self.params.natural(u)
        d = np.abs(t[:, :, None] - t[:, None, :])
        correlations = ("rho", "log_range", "rho_ma", "pacf")
        mine = [i for i, kind in enumerate(self.params.kinds) if kind in correlations]
        per_group = {}
        for i in mine:  # the exponential's decay rate 1 / range, exact where rho underflows
            value = np.exp(-u[i]) / self.params.time_scale if self.params.kinds[i] == "log_range" else nat[i]
            per_group.setdefault(self.params.groups[i], []).append(value)
        rho = np.array([per_group.get(g, [0.0]) for g in group.tolist()] if per_group else [[0.0]] * k)
        off = ~np.eye(n, dtype=bool)[None]
        if kind == "exchangeable":
            return np.where(off, rho[:, :1, None], 1.0) * np.ones((k, n, n))
        if kind == "ar1":
            return np.power(rho[:, :1, None], d)
        if kind == "exponential":  # rho^d = exp(-d / range)
            return np.exp(-d * rho[:, :1, None])
        if kind == "ma1":
            return eye + np.where(d == 1, rho[:, :1, None], 0.0)
        if kind == "toeplitz":
            C = eye.copy()
            for lag in range(1, self.spec.order + 1):
                C += np.where(d == lag, rho[:, lag - 1 : lag, None], 0.0)
            return C
        # banded / unstructured: correlations by occasion pair
        n_occ = len(self.occasions)
        table = np.zeros((len(self.by_levels), n_occ, n_occ))
        for g in range(len(self.by_levels)):
            idx = [i for i, k_ in enumerate(self.params.kinds) if k_ == "chol" and self.params.groups[i] == g]
            table[g] = unstructured_correlation(u[idx], n_occ, self.params.band) - np.eye(n_occ)
        return eye + table[group[:, None, None], occ[:, :, None], occ[:, None, :]] * off


def typical_gap(time: np.ndarray, clusters: np.ndarray) -> float:
    """The median positive gap between consecutive times within clusters (1 when there is none)."""
    order = np.lexsort((time, clusters))
    t, c = time[order], clusters[order]
    gaps = np.diff(t)[np.diff(c) == 0]
    gaps = gaps[gaps > 0]
    return float(np.median(gaps)) if gaps.size else 1.0


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# ---------------------------------------------------------------------------- batched whitening
class ClusterBatches:
    """Rows grouped by cluster, clusters of equal size stacked for batched factorisation."""

    def __init__(self, clusters: np.ndarray, n_clusters: int, time: np.ndarray):
        order = np.lexsort((time, clusters))
        self.order = order
        sizes = np.bincount(clusters, minlength=n_clusters)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self.batches = []
        for size in np.unique(sizes):
            ids = np.flatnonzero(sizes == size)
            rows = order[(starts[ids][:, None] + np.arange(size)[None, :])]
            self.batches.append((ids, rows))

    def whiten(self, structure: RStructure, u: np.ndarray | None, columns: np.ndarray) -> tuple[list, float]:
        """Whitened ``columns`` per batch (ids, rows, L^{-1} W) and ``sum log|R_i|`` (``u=None``: R = I)."""
        if u is None:
            return [(ids, rows, columns[rows]) for ids, rows in self.batches], 0.0
        sd = structure.sd_multipliers(u)
        if structure.spec.kind == "independent":  # diagonal R: whitening is a rescaling of rows
            scaled = columns / sd[:, None]
            return [(ids, rows, scaled[rows]) for ids, rows in self.batches], 2.0 * float(np.log(sd).sum())
        logdet = 0.0
        out = []
        for ids, rows in self.batches:
            t = structure.time[rows]
            group = structure.by_codes[rows[:, 0]]
            occ = structure.occasion_index[rows] if structure.occasions is not None else None
            C = structure.correlation(t, group, u, occ)
            s = sd[rows]
            R = C * s[:, :, None] * s[:, None, :]
            L = np.linalg.cholesky(R)
            logdet += 2.0 * float(np.log(np.diagonal(L, axis1=1, axis2=2)).sum())
            W = np.linalg.solve(L, columns[rows])
            out.append((ids, rows, W))
        return out, logdet


# ---------------------------------------------------------------------------- the deviance over (theta, u)
@dataclass
class RSideModel:
    """Everything needed to evaluate the deviance for any (theta, u)."""

    structure: RStructure
    batches: ClusterBatches
    columns: np.ndarray  # n x (q + p + 1): standardised Z T, X~, y~
    q: int
    p: int
    n_clusters: int
    layouts: list[BlockLayout]
    transforms: list[np.ndarray]
    reml: bool

    def linear_deviance(self) -> float:
        """Deviance of the linear regression (no random effects, R = I), standardised scale."""
        stats, _ = self.stats_at(None)
        return make_deviance(stats, self.layouts, self.reml)(np.zeros(sum(lay.n_params for lay in self.layouts)))

    def stats_at(self, u: np.ndarray | None) -> tuple[SufficientStats, float]:
        """Sufficient statistics of the whitened data and ``sum log|R_i|`` (``u=None``: R = I)."""
        parts, logdet = self.batches.whiten(self.structure, u, self.columns)
        c = self.columns.shape[1]
        products = np.empty((c, c, self.n_clusters))
        for ids, _, W in parts:
            products[:, :, ids] = np.einsum("kia,kib->abk", W, W)
        q, p = self.q, self.p
        total = products.sum(axis=2)
        stats = SufficientStats(
            n=self.columns.shape[0],
            p=p,
            XtX=total[q : q + p, q : q + p],
            Xty=total[q : q + p, -1],
            yty=float(total[-1, -1]),
            sum_log_weights=0.0,
            first_q=q,
            first_ZtZ=np.ascontiguousarray(products[:q, :q]),
            first_ZtX=np.ascontiguousarray(products[:q, q : q + p]),
            first_Zty=np.ascontiguousarray(products[:q, -1]),
            rest_sizes=[],
        )
        return stats, logdet

    def inner(self, u: np.ndarray) -> ProfiledDeviance:
        """The profiled deviance of the whitened data at ``u`` (its offset holds ``sum log|R_i|``)."""
        stats, logdet = self.stats_at(u)
        stats.column_transforms = self.transforms  # built from the columns Z T already
        dev = make_deviance(stats, self.layouts, self.reml, column_transforms=self.transforms)
        dev.offset = logdet
        return dev

    def __call__(self, params: np.ndarray) -> float:
        k = len(params) - self.structure.n_params
        try:
            return self.inner(params[k:])(params[:k])
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            return np.inf
