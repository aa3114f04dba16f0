"""The marginal likelihood of a generalized linear mixed model: PIRLS, Laplace and adaptive quadrature.

For ``eta = offset + X beta + Z Lambda u`` with spherical random effects ``u ~ N(0, I)``
(``b = Lambda u``, ``G = Lambda Lambda'`` per grouping factor, as lme4), the deviance is

    D(beta, theta) = -2 log  integral prod_j f(y_j | eta_j) phi(u) du.

Penalised iteratively reweighted least squares (PIRLS, Newton steps with the IRLS weights
and step-halving) finds the conditional mode ``u*`` maximising
``sum_j log f(y_j | eta_j) - |u|^2 / 2``.  The Laplace approximation (``nagq = 1``) is

    D = -2 sum_j log f(y_j | eta_j*) + |u*|^2 + log det(Lambda'Z'W Z Lambda + I),

with ``W`` the IRLS weights at the mode (lme4's definition, constants of ``f`` included).
With one scalar random effect per cluster, adaptive Gauss-Hermite quadrature with ``K``
nodes replaces each cluster's Laplace term by ``-2 log(s_i sum_k w_k e^{z_k^2/2}
exp(h_i(u_i* + s_i z_k)))``, ``s_i = H_i^{-1/2}``; one node is the Laplace approximation.

Two evaluators share this interface: :class:`ClusteredLaplace` for one grouping factor (every
cluster's ``q x q`` system solved in a batch; one pass over the rows per PIRLS iteration,
with an analytic gradient for a scalar random effect and a canonical link) and
:class:`SparseLaplace` for several factors, nested or crossed (one partitioned system, with an
analytic gradient when every factor is a scalar random effect and the link canonical).  Both keep
the last mode and start the next PIRLS from it, so that nearby evaluations (an optimiser's
steps, finite differences) cost one or two iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp
from numpy.polynomial.hermite_e import hermegauss
from scipy.sparse.linalg import splu

from .covariance import BlockLayout
from .family import Family
from .optimize import OptimumReport

#: PIRLS stops when a Newton step changes the penalised deviance by less than this (relative).
PIRLS_TOLERANCE = 1e-12
#: ... and no mode moves by more than this (the deviance must be smooth to 1e-12 or so for
#: finite differences; non-canonical links converge only linearly with the IRLS weights).
STEP_TOLERANCE = 1e-10
#: ... or after this many iterations (reported: the evaluation is then not exact).
PIRLS_ITERATIONS = 200
#: Step-halvings tried per PIRLS iteration.
HALVINGS = 30
#: Above this many random effects the joint system is factorised sparsely.
DENSE_LIMIT = 2000
#: The first factor's cross-tabulation with the others is held densely up to this many entries.
DENSE_CROSS_LIMIT = 4_000_000


@dataclass
class GLMMData:
    """The numeric model: ``X`` (n x p, standardised), response ``y`` (proportions or counts),
    trials or prior weights ``m``, ``offset``, and per grouping factor its level ``codes``,
    random-effect columns ``Z`` (n x q) and :class:`BlockLayout`."""

    X: np.ndarray
    y: np.ndarray
    m: np.ndarray
    offset: np.ndarray
    codes: list[np.ndarray]
    Zs: list[np.ndarray]
    layouts: list[BlockLayout]
    n_levels: list[int]
    family: Family

    @cached_property
    def constant(self) -> float:
        """The log-likelihood's terms free of the parameters, summed (added once, not per evaluation)."""
        return float(np.sum(self.family.constant(self.y, self.m)))

    def kernel(self, eta: np.ndarray) -> np.ndarray:
        """Each row's log-likelihood without its constant."""
        return self.family.kernel(self.y, eta, self.m)

    @property
    def n_theta(self) -> int:
        return sum(layout.n_params for layout in self.layouts)

    def split_theta(self, theta: np.ndarray) -> list[np.ndarray]:
        out, start = [], 0
        for layout in self.layouts:
            out.append(theta[start : start + layout.n_params])
            start += layout.n_params
        return out

    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        """Each factor's relative covariance factor ``Lambda`` (q x q)."""
        return [layout.factor_matrix(part) for layout, part in zip(self.layouts, self.split_theta(theta))]


@dataclass
class Mode:
    """The conditional mode at one ``(beta, theta)``: ``u`` (per factor, levels x q), the
    linear predictor, and the pieces of the Laplace deviance."""

    u: list[np.ndarray]
    eta: np.ndarray
    loglik: float  # sum_j log f(y_j | eta_j)
    penalty: float  # |u|^2
    log_det: float  # log det(Lambda'Z'WZ Lambda + I)
    converged: bool

    @property
    def laplace(self) -> float:
        return -2.0 * self.loglik + self.penalty + self.log_det


def gauss_hermite(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``z_k`` and log-weights of ``integral g(z) dz ~ sum_k w_k e^{z_k^2/2} g(z_k)`` (for
    ``g`` near a standard normal density: probabilists' Gauss-Hermite rule)."""
    z, w = hermegauss(nodes)
    return z, np.log(w) + 0.5 * z**2


@dataclass
class GLM:
    """A generalized linear model without random effects (the start, and the LR test's null)."""

    beta: np.ndarray  # standardised scale
    loglik: float
    converged: bool


@dataclass
class GLMMOptimum:
    """The optimum of the (approximate) deviance in ``(theta, beta)`` and what it took."""

    theta: np.ndarray
    beta: np.ndarray  # standardised scale
    deviance: float
    nagq: int
    report: OptimumReport
    hessian: np.ndarray | None  # of the deviance in the free (theta, beta) coordinates
    free: np.ndarray  # which coordinates of (theta, beta) the Hessian covers
    mode: Mode
    glm: GLM
    pirls_iterations: int


# ---------------------------------------------------------------------------- one factor
@dataclass
class _ModeSensitivity:
    """Derivatives at a mode, one scalar random effect, canonical link (observed information
    = IRLS weight ``w``, ``w' = dw/deta``), per cluster ``i``:

    - ``H_i = 1 + lambda^2 sum_j w_j z_j^2`` (the curvature; ``s_i = H_i^{-1/2}``);
    - ``du_i/dbeta = -lambda sum_j w_j z_j x_j / H_i`` and ``du_i/dlambda = (sum_j s_j z_j -
      lambda u_i sum_j w_j z_j^2) / H_i``, from the mode's stationarity;
    - ``dH_i = lambda^2 sum_j w'_j z_j^2 d eta_j + 2 lambda sum_j w_j z_j^2 d lambda`` with
      ``d eta_j = x_j d beta + z_j (u_i d lambda + lambda d u_i)``.
    """

    lam: float
    score: np.ndarray  # per row, at the mode
    score_z: np.ndarray  # sum_j s_j z_j per cluster
    H: np.ndarray
    du_dbeta: np.ndarray  # (L, p)
    du_dlam: np.ndarray
    dH_dbeta: np.ndarray  # (L, p)
    dH_dlam: np.ndarray


class ClusteredLaplace:
    """The Laplace / AGQ deviance with one grouping factor: block-diagonal systems, batched."""

    def __init__(self, data: GLMMData):
        if len(data.codes) != 1:
            raise ValueError("ClusteredLaplace needs exactly one grouping factor")
        self.data = data
        self.codes = data.codes[0]
        self.Z = data.Zs[0]
        self.L = data.n_levels[0]
        self.q = self.Z.shape[1]
        self.u = np.zeros((self.L, self.q))
        self.iterations = 0  # PIRLS iterations done in total (a measure of cost)
        # cluster sums as a sparse (clusters x rows) product: 3x faster than np.bincount
        n = self.codes.size
        self._indicator = sp.csr_matrix((np.ones(n), (self.codes, np.arange(n))), shape=(self.L, n))
        self._XT = np.ascontiguousarray(data.X.T)  # columns of X contiguous (2x faster products)
        self._unit_z = self.q == 1 and bool(np.all(self.Z == 1.0))  # a random intercept

    # -------------------------------------------------------------- per-cluster sums
    def _sum(self, values: np.ndarray) -> np.ndarray:
        return self._indicator @ values

    def _sum_times_x(self, values: np.ndarray) -> np.ndarray:
        """``sum_j values_j x_j`` per cluster: (L, p), one sparse product per contiguous column."""
        return np.column_stack([self._indicator @ (values * column) for column in self._XT])

    def _zu(self, ZL: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``Z_j Lambda u_{c(j)}`` for every row."""
        if self.q == 1:
            return ZL[:, 0] * u[self.codes, 0]
        return np.einsum("ja,ja->j", ZL, u[self.codes])

    def _hessians(self, ZL: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``Lambda'Z_i'W Z_i Lambda + I`` per cluster: (L, q, q)."""
        q = self.q
        H = np.empty((self.L, q, q))
        for a in range(q):
            for b in range(a, q):
                H[:, a, b] = H[:, b, a] = self._sum(w * ZL[:, a] * ZL[:, b])
        H[:, np.arange(q), np.arange(q)] += 1.0
        return H

    def _scores(self, ZL: np.ndarray, s: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Gradient of the penalised log-likelihood in ``u`` per cluster: (L, q)."""
        return np.column_stack([self._sum(s * ZL[:, a]) for a in range(self.q)]) - u

    def _objective(self, eta: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Per cluster ``-2 sum_j log f + |u_i|^2``."""
        d = self.data
        return -2.0 * self._sum(d.kernel(eta)) + np.sum(u * u, axis=1)

    # -------------------------------------------------------------- PIRLS
    def mode(self, beta: np.ndarray, theta: np.ndarray, u0: np.ndarray | None = None) -> Mode:
        """PIRLS for the conditional modes at ``(beta, theta)``, from ``u0`` (default: the last mode)."""
        d = self.data
        lam = d.lambdas(theta)[0]
        ZL = self.Z @ lam
        fixed = d.offset + d.X @ beta
        u = (self.u if u0 is None else u0).copy()
        eta = fixed + self._zu(ZL, u)
        f = self._objective(eta, u)
        converged = False
        for _ in range(PIRLS_ITERATIONS):
            self.iterations += 1
            s, w = d.family.score_and_weight(d.y, eta, d.m)
            H, g = self._hessians(ZL, w), self._scores(ZL, s, u)
            step = _batched_solve(H, g)
            step_size = np.ones(self.L)
            for _ in range(HALVINGS):
                trial = u + step_size[:, None] * step
                eta_trial = fixed + self._zu(ZL, trial)
                f_trial = self._objective(eta_trial, trial)
                worse = ~(f_trial <= f + 1e-12 * (np.abs(f) + 1.0))
                if not worse.any():
                    break
                step_size = np.where(worse, 0.5 * step_size, step_size)
            better = ~worse
            if better.all():
                u, eta = trial, eta_trial
            else:
                u = np.where(better[:, None], trial, u)
                eta = fixed + self._zu(ZL, u)
            f_new = np.where(better, f_trial, f)
            change = float(np.sum(f - f_new))
            f = f_new
            moved = float(np.max(np.abs(step * step_size[:, None])))
            if change <= PIRLS_TOLERANCE * (float(np.sum(np.abs(f))) + 1.0) and moved < STEP_TOLERANCE:
                converged = True
                break
        w = d.family.weight(eta, d.m)
        H = self._hessians(ZL, w)
        self.u = u
        loglik = float(np.sum(d.kernel(eta))) + d.constant
        return Mode([u], eta, loglik, float(np.sum(u * u)), float(np.sum(_batched_logdet(H))), converged)

    # -------------------------------------------------------------- deviances
    def deviance(self, beta: np.ndarray, theta: np.ndarray, nagq: int = 1) -> float:
        """The Laplace (``nagq=1``) or adaptive Gauss-Hermite deviance at ``(beta, theta)``."""
        mode = self.mode(beta, theta)
        if nagq <= 1:
            return mode.laplace
        return self.quadrature(beta, theta, mode, nagq)

    def quadrature(self, beta: np.ndarray, theta: np.ndarray, mode: Mode, nagq: int) -> float:
        """Adaptive Gauss-Hermite deviance around ``mode`` (one scalar random effect per cluster)."""
        if self.q != 1:
            raise ValueError("adaptive quadrature needs one scalar random effect per cluster")
        d = self.data
        lam = d.lambdas(theta)[0]
        zl = (self.Z @ lam)[:, 0]
        u = mode.u[0][:, 0]
        H = self._hessians(zl[:, None], d.family.weight(mode.eta, d.m))[:, 0, 0]
        scale = 1.0 / np.sqrt(H)
        nodes, log_w = gauss_hermite(nagq)
        fixed = d.offset + d.X @ beta
        terms = np.empty((self.L, nagq))
        for k, z in enumerate(nodes):
            uk = u + scale * z
            eta = fixed + zl * uk[self.codes]
            terms[:, k] = log_w[k] + self._sum(d.kernel(eta)) - 0.5 * uk**2
        log_integral = np.log(scale) - 0.5 * np.log(2.0 * np.pi) + _logsumexp_rows(terms)
        return float(-2.0 * (np.sum(log_integral) + d.constant))

    @property
    def has_gradient(self) -> bool:
        """Whether :meth:`laplace_gradient` is analytic here: one scalar effect, a canonical link."""
        return self.q == 1 and self.data.family.canonical and self.data.n_theta == 1

    def laplace_gradient(self, beta: np.ndarray, theta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray] | None:
        """``(D, dD/dtheta, dD/dbeta)`` of the Laplace deviance, analytically, for one scalar
        random effect and a canonical link (None otherwise).

        By the envelope theorem the mode's own dependence drops out of ``-2 sum log f + u^2``,
        so ``dD = -2 sum_j s_j d eta_j|_u + sum_i dH_i / H_i`` (see :class:`_ModeSensitivity`).
        """
        if not self.has_gradient:
            return None
        mode = self.mode(beta, theta)
        sens = self._sensitivity(mode, theta)
        u = mode.u[0][:, 0]
        grad_beta = -2.0 * (sens.score @ self.data.X) + np.sum(sens.dH_dbeta / sens.H[:, None], axis=0)
        grad_lam = -2.0 * float(u @ sens.score_z) + float(np.sum(sens.dH_dlam / sens.H))
        # theta -> lambda: the intercept's factor is theta itself (lme4's parameterisation)
        return mode.laplace, np.array([grad_lam]), grad_beta

    def _sensitivity(self, mode: Mode, theta: np.ndarray) -> _ModeSensitivity:
        """The mode's and the curvature's derivatives in ``(beta, lambda)`` at ``mode``."""
        d = self.data
        lam = float(d.lambdas(theta)[0][0, 0])
        z = self.Z[:, 0]
        u = mode.u[0][:, 0]
        s, w, dw = d.family.score_weight_derivative(d.y, mode.eta, d.m)
        z2 = z * z
        wz2 = self._sum(w * z2)
        score_z = self._sum(s * z)
        H = 1.0 + lam**2 * wz2
        du_dbeta = -lam * self._sum_times_x(w * z) / H[:, None]
        du_dlam = (score_z - lam * u * wz2) / H
        dwz2 = dw * z2
        dwz3 = self._sum(dwz2 * z)
        dH_dbeta = lam**2 * (self._sum_times_x(dwz2) + (lam * dwz3)[:, None] * du_dbeta)
        dH_dlam = 2.0 * lam * wz2 + lam**2 * dwz3 * (u + lam * du_dlam)
        return _ModeSensitivity(lam, s, score_z, H, du_dbeta, du_dlam, dH_dbeta, dH_dlam)

    def deviance_gradient(self, beta: np.ndarray, theta: np.ndarray, nagq: int = 1):
        """``(D, dD/dtheta, dD/dbeta)`` of the Laplace (``nagq <= 1``) or AGQ deviance where
        :attr:`has_gradient` (None otherwise)."""
        if nagq <= 1:
            return self.laplace_gradient(beta, theta)
        return self.quadrature_gradient(beta, theta, nagq)

    def quadrature_gradient(
        self, beta: np.ndarray, theta: np.ndarray, nagq: int
    ) -> tuple[float, np.ndarray, np.ndarray] | None:
        """``(D, dD/dtheta, dD/dbeta)`` of the adaptive Gauss-Hermite deviance, analytically,
        under the conditions of :meth:`laplace_gradient` (None otherwise).

        ``D = -2 sum_i [log s_i + log sum_k exp T_ik]`` with ``T_ik = log w_k + sum_j
        log f(eta_jk) - u_ik^2 / 2``, nodes ``u_ik = u_i + s_i z_k``, ``s_i = H_i^{-1/2}``,
        ``eta_jk = x_j beta + z_j lambda u_ik``.  The nodes move with the parameters through
        the mode ``u_i`` and the scale ``s_i`` (``d s_i = -s_i^3 dH_i / 2``), so
        ``dT_ik = sum_j sigma_jk d eta_jk|_u + a_ik du_ik`` with ``sigma_jk`` the score at the
        node and ``a_ik = lambda sum_j sigma_jk z_j - u_ik``; the sum over ``k`` is weighted by
        ``p_ik = softmax_k T_ik``.  One pass over the rows per node.
        """
        d = self.data
        if not self.has_gradient:
            return None
        mode = self.mode(beta, theta)
        sens = self._sensitivity(mode, theta)
        lam, H, z, X, codes = sens.lam, sens.H, self.Z[:, 0], d.X, self.codes
        u = mode.u[0][:, 0]
        scale = 1.0 / np.sqrt(H)
        ds_dbeta = -0.5 * (scale**3)[:, None] * sens.dH_dbeta
        ds_dlam = -0.5 * scale**3 * sens.dH_dlam
        # the nodes: eta_jk = base_j + z_k spread_j
        nodes, log_w = gauss_hermite(nagq)
        zl = lam * z
        base = d.offset + X @ beta + zl * u[codes]
        spread = zl * scale[codes]
        U = u[:, None] + scale[:, None] * nodes[None, :]
        T = np.empty((self.L, nagq))
        C = np.empty((self.L, nagq))  # sum_j sigma_jk z_j per cluster
        sigma = np.empty((nagq, codes.size))
        for k in range(nagq):
            eta = base + nodes[k] * spread
            sigma[k] = d.family.score(d.y, eta, d.m)
            T[:, k] = log_w[k] + self._sum(d.kernel(eta)) - 0.5 * U[:, k] ** 2
            C[:, k] = self._sum(sigma[k] if self._unit_z else sigma[k] * z)
        top = np.max(T, axis=1)
        P = np.exp(T - top[:, None])
        total = np.sum(P, axis=1)
        P /= total[:, None]
        a = lam * C - U
        A, B = np.sum(P * a, axis=1), np.sum(P * a * nodes[None, :], axis=1)
        row_score = np.zeros(codes.size)  # sum_k p_ik sigma_jk
        for k, p_k in enumerate(np.ascontiguousarray(P.T)):
            row_score += p_k[codes] * sigma[k]
        grad_beta = np.sum(sens.dH_dbeta / H[:, None], axis=0) - 2.0 * (
            row_score @ X + A @ sens.du_dbeta + B @ ds_dbeta
        )
        grad_lam = float(np.sum(sens.dH_dlam / H)) - 2.0 * float(np.sum(P * U * C) + A @ sens.du_dlam + B @ ds_dlam)
        log_integral = np.log(scale) - 0.5 * np.log(2.0 * np.pi) + top + np.log(total)
        value = float(-2.0 * (np.sum(log_integral) + d.constant))
        return value, np.array([grad_lam]), grad_beta

    def conditional_variances(self, beta: np.ndarray, theta: np.ndarray) -> list[np.ndarray]:
        """``Var(u_i | y)`` approximated by ``H_i^{-1}`` at the mode: (L, q, q) for the factor."""
        d = self.data
        mode = self.mode(beta, theta)
        ZL = self.Z @ d.lambdas(theta)[0]
        H = self._hessians(ZL, d.family.weight(mode.eta, d.m))
        return [np.linalg.inv(H)]

    # -------------------------------------------------------------- nAGQ = 0
    def joint_mode(self, beta0: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, Mode]:
        """PIRLS over ``(beta, u)`` together at ``theta`` (lme4's ``nAGQ = 0`` stage), from ``beta0``."""
        d = self.data
        lam = d.lambdas(theta)[0]
        ZL = self.Z @ lam
        beta = beta0.copy()
        u = self.u.copy()
        p = d.X.shape[1]

        def objective(beta, u):
            eta = d.offset + d.X @ beta + self._zu(ZL, u)
            return float(np.sum(self._objective(eta, u))), eta

        f, eta = objective(beta, u)
        for _ in range(PIRLS_ITERATIONS):
            self.iterations += 1
            s, w = d.family.score(d.y, eta, d.m), d.family.weight(eta, d.m)
            A = self._hessians(ZL, w)
            gu = self._scores(ZL, s, u)
            B = np.stack(
                [np.column_stack([self._sum(w * ZL[:, a] * d.X[:, k]) for k in range(p)]) for a in range(self.q)],
                axis=1,
            )  # fmt: skip  (L, q, p)
            C = (d.X * w[:, None]).T @ d.X
            gb = s @ d.X
            Ainv_B = _batched_solve(A, B)
            Ainv_g = _batched_solve(A, gu)
            S = C - np.einsum("laq,lap->qp", B, Ainv_B)
            rhs = gb - np.einsum("lap,la->p", B, Ainv_g)
            db = np.linalg.solve(S + 1e-12 * np.eye(p), rhs)
            du = Ainv_g - np.einsum("lap,p->la", Ainv_B, db)
            size = 1.0
            for _ in range(HALVINGS):
                f_trial, eta_trial = objective(beta + size * db, u + size * du)
                if f_trial <= f + 1e-12 * (abs(f) + 1.0):
                    break
                size *= 0.5
            else:
                break
            beta, u, eta = beta + size * db, u + size * du, eta_trial
            change, f = f - f_trial, f_trial
            if change <= PIRLS_TOLERANCE * (abs(f) + 1.0):
                break
        self.u = u
        return beta, self.mode(beta, theta, u)


# ---------------------------------------------------------------------------- several factors
class SparseLaplace:
    """The Laplace deviance with several grouping factors (nested or crossed): one joint system.

    The random effects of all factors form one vector ``u``: the first factor's (the one with
    most levels) level by level, each other factor's effect by effect.  The system
    ``H = Lambda'Z'W Z Lambda + I`` is partitioned as ``[[A, B], [B', C]]`` with ``A``
    block-diagonal (the first factor's ``q x q`` blocks, factorised in a batch) and the Schur
    complement ``C - B'A^-1 B`` of the other factors factorised densely (up to
    :data:`DENSE_LIMIT` effects; beyond it ``H`` is factorised by sparse LU).  So a crossed
    model with 10^5 persons and 24 items costs one pass over the rows and a 24 x 24
    factorisation per PIRLS iteration.  The ``nAGQ = 0`` stage appends X to the dense part.
    """

    def __init__(self, data: GLMMData):
        self.data = data
        self.n = data.X.shape[0]
        self.qs = [Z.shape[1] for Z in data.Zs]
        self.sizes = [L * q for L, q in zip(data.n_levels, self.qs)]
        self.Q = sum(self.sizes)
        self.L1, self.q1 = data.n_levels[0], self.qs[0]
        self.u = np.zeros(self.Q)
        self.iterations = 0
        self._mode_system: _SchurSystem | None = None  # H at the last mode

    # -------------------------------------------------------------- the linear predictor
    def _zl(self, theta: np.ndarray) -> list[np.ndarray]:
        return [Z @ lam for Z, lam in zip(self.data.Zs, self.data.lambdas(theta))]

    def split(self, u: np.ndarray) -> list[np.ndarray]:
        """The effect vector as one (levels x q) array per factor."""
        out = [u[: self.sizes[0]].reshape(self.L1, self.q1)]
        start = self.sizes[0]
        for L, q, size in zip(self.data.n_levels[1:], self.qs[1:], self.sizes[1:]):
            out.append(u[start : start + size].reshape(q, L).T)
            start += size
        return out

    def _random_eta(self, ZLs: list[np.ndarray], u: np.ndarray) -> np.ndarray:
        total = np.zeros(self.n)
        for ZL, codes, uf in zip(ZLs, self.data.codes, self.split(u)):
            total += np.einsum("ja,ja->j", ZL, uf[codes]) if ZL.shape[1] > 1 else ZL[:, 0] * uf[codes, 0]
        return total

    def _gradient(self, ZLs: list[np.ndarray], s: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``Lambda'Z's - u`` in the order of ``u``."""
        parts = []
        for k, (ZL, codes, L) in enumerate(zip(ZLs, self.data.codes, self.data.n_levels)):
            sums = np.column_stack([np.bincount(codes, weights=s * ZL[:, a], minlength=L) for a in range(ZL.shape[1])])
            parts.append(sums.ravel() if k == 0 else sums.T.ravel())
        return np.concatenate(parts) - u

    # -------------------------------------------------------------- the system
    def _system(self, ZLs: list[np.ndarray], w: np.ndarray, X: np.ndarray | None = None) -> _SchurSystem:
        """``H`` (with X's columns appended, unpenalised, when given) in its partitioned form.

        Every block is a weighted cross-tabulation of two factors' levels (``np.bincount``
        over the rows), so building ``H`` costs one pass over the rows per pair of columns.
        """
        d = self.data
        codes1, ZL1 = d.codes[0], ZLs[0]
        A = np.empty((self.L1, self.q1, self.q1))
        for a in range(self.q1):
            for b in range(a, self.q1):
                A[:, a, b] = A[:, b, a] = np.bincount(codes1, weights=w * ZL1[:, a] * ZL1[:, b], minlength=self.L1)
        A[:, np.arange(self.q1), np.arange(self.q1)] += 1.0
        # the dense part's columns: (codes or None, column values, levels, offset in the dense part)
        columns, offset = [], 0
        for k in range(1, len(ZLs)):
            for a in range(self.qs[k]):
                columns.append((d.codes[k], ZLs[k][:, a], d.n_levels[k], offset))
                offset += d.n_levels[k]
        n_rest = offset
        if X is not None:
            for j in range(X.shape[1]):
                columns.append((None, X[:, j], 1, offset))
                offset += 1
        cells = self.L1 * self.q1 * offset
        if cells <= DENSE_CROSS_LIMIT and self.n * len(columns) >= 0.25 * cells:  # B mostly filled: dense
            B = np.zeros((self.L1 * self.q1, offset))
            for a in range(self.q1):
                wz = w * ZL1[:, a]
                for codes, values, levels, start in columns:
                    B[a :: self.q1, start : start + levels] = _cross_tabulate(
                        codes1, self.L1, codes, levels, wz * values
                    )
        else:
            B_rows, B_cols, B_vals = [], [], []
            for a in range(self.q1):
                wz = w * ZL1[:, a]
                for codes, values, _, start in columns:
                    B_rows.append(codes1 * self.q1 + a)
                    B_cols.append(start + codes if codes is not None else np.full(self.n, start))
                    B_vals.append(wz * values)
            B = sp.csr_matrix(
                (np.concatenate(B_vals), (np.concatenate(B_rows), np.concatenate(B_cols))),
                shape=(self.L1 * self.q1, offset),
            )
        C = np.zeros((offset, offset))
        for i, (codes_g, values_g, levels_g, start_g) in enumerate(columns):
            wv = w * values_g
            for codes_h, values_h, levels_h, start_h in columns[i:]:
                block = _cross_tabulate(codes_g, levels_g, codes_h, levels_h, wv * values_h)
                C[start_g : start_g + levels_g, start_h : start_h + levels_h] = block
                C[start_h : start_h + levels_h, start_g : start_g + levels_g] = block.T
        C[np.arange(n_rest), np.arange(n_rest)] += 1.0
        return _SchurSystem(A, B, C)

    def _objective(self, eta: np.ndarray, u: np.ndarray) -> float:
        d = self.data
        return float(-2.0 * np.sum(d.kernel(eta)) + u @ u)

    # -------------------------------------------------------------- PIRLS
    def mode(self, beta: np.ndarray, theta: np.ndarray, u0: np.ndarray | None = None) -> Mode:
        d = self.data
        ZLs = self._zl(theta)
        fixed = d.offset + d.X @ beta
        u = (self.u if u0 is None else u0).copy()
        eta = fixed + self._random_eta(ZLs, u)
        f = self._objective(eta, u)
        converged = False
        system = None
        for _ in range(PIRLS_ITERATIONS):
            self.iterations += 1
            s, w = d.family.score(d.y, eta, d.m), d.family.weight(eta, d.m)
            system = self._system(ZLs, w)
            step = system.solve(self._gradient(ZLs, s, u))
            size = 1.0
            for _ in range(HALVINGS):
                trial = u + size * step
                eta_trial = fixed + self._random_eta(ZLs, trial)
                f_trial = self._objective(eta_trial, trial)
                if f_trial <= f + 1e-12 * (abs(f) + 1.0):
                    break
                size *= 0.5
            else:
                break
            u, eta = trial, eta_trial
            change, f = f - f_trial, f_trial
            if change <= PIRLS_TOLERANCE * (abs(f) + 1.0) and np.max(np.abs(size * step)) < STEP_TOLERANCE:
                converged = True
                break
        self.u = u
        if not converged or system is None:  # after a converged step (< 1e-10) the weights are those of the mode
            system = self._system(ZLs, d.family.weight(eta, d.m))
        self._mode_system = system  # the system of the last mode (its gradient needs H^-1)
        loglik = float(np.sum(d.kernel(eta))) + d.constant
        return Mode(self.split(u), eta, loglik, float(u @ u), system.log_det, converged)

    def deviance(self, beta: np.ndarray, theta: np.ndarray, nagq: int = 1) -> float:
        if nagq > 1:
            raise ValueError("adaptive quadrature needs one grouping factor with one scalar random effect")
        return self.mode(beta, theta).laplace

    @cached_property
    def has_gradient(self) -> bool:
        """Whether :meth:`laplace_gradient` is analytic: every factor a scalar random effect, a
        canonical link, and the first factor's cross-tabulation with the others small enough
        to hold ``(A^-1 B) S^-1`` densely."""
        return (
            all(q == 1 for q in self.qs)
            and self.data.family.canonical
            and self.L1 * (self.Q - self.sizes[0]) <= DENSE_CROSS_LIMIT
        )

    def deviance_gradient(self, beta: np.ndarray, theta: np.ndarray, nagq: int = 1):
        """``(D, dD/dtheta, dD/dbeta)`` of the Laplace deviance where :attr:`has_gradient`."""
        if nagq > 1:
            raise ValueError("adaptive quadrature needs one grouping factor with one scalar random effect")
        return self.laplace_gradient(beta, theta)

    def laplace_gradient(self, beta: np.ndarray, theta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray] | None:
        """``(D, dD/dtheta, dD/dbeta)`` of the Laplace deviance, analytically (None unless
        :attr:`has_gradient`).

        With ``M = Z Lambda`` (row ``j``: ``m_jk = lambda_k z_jk`` at level ``c_k(j)`` of factor
        ``k``) and ``H = M'WM + I``, the envelope theorem leaves
        ``dD = -2 s' d eta|_u + tr(H^-1 dH)``, where
        ``tr(H^-1 M' diag(v) M) = sum_j v_j h_j`` (``h_j = m_j' H^-1 m_j``) and, for
        ``lambda_k``, ``2 tr(H^-1 M'W dM) = 2 sum_j w_j z_jk (H^-1 m_j)_{k, c_k(j)}``.  The weights
        move with the total ``d eta = d eta|_u + M du``, ``H du = (dM)'s - M'W d eta|_u``
        (stationarity of the mode; observed information = IRLS weight).  The entries of
        ``H^-1`` at each row's levels come from the Schur system: ``A^-1 + diag((A^-1B) S^-1
        (A^-1B)')``, ``-(A^-1 B) S^-1`` and ``S^-1``.
        """
        if not self.has_gradient:
            return None
        d = self.data
        mode = self.mode(beta, theta)
        system = self._mode_system
        ZLs = self._zl(theta)
        zs = [Z[:, 0] for Z in d.Zs]
        eta = mode.eta
        s, w, dw = d.family.score_weight_derivative(d.y, eta, d.m)
        P = self._inverse_at_rows(system)  # (n, K, K): H^-1 at each row's levels
        M_rows = np.column_stack([ZL[:, 0] for ZL in ZLs])  # (n, K): m_jk
        R = np.einsum("jkl,jl->jk", P, M_rows)  # (H^-1 m_j)_{k, c_k(j)}
        h = np.sum(M_rows * R, axis=1)
        # partial derivatives of eta at fixed u: X for beta, t_k = z_k u_k[c_k] for lambda_k
        u_parts = mode.u
        partial = np.column_stack([d.X] + [z * uk[codes, 0] for z, uk, codes in zip(zs, u_parts, d.codes)])
        p, K = d.X.shape[1], len(zs)
        rhs = -np.column_stack([self._gradient(ZLs, w * partial[:, i], np.zeros(self.Q)) for i in range(p + K)])
        for k in range(K):  # (dM/dlambda_k)' s: factor k's level sums of s z_k
            start = sum(self.sizes[:k])
            rhs[start : start + self.sizes[k], p + k] += np.bincount(
                d.codes[k], weights=s * zs[k], minlength=d.n_levels[k]
            )
        du = system.solve(rhs)  # (Q, p + K)
        total = partial + np.column_stack([self._random_eta(ZLs, du[:, i]) for i in range(p + K)])
        curvature = (dw * h) @ total  # sum_j w'_j h_j d eta_j / d phi
        grad = -2.0 * (s @ partial) + curvature
        grad[p:] += 2.0 * np.array([float(np.sum(w * zs[k] * R[:, k])) for k in range(K)])
        # theta -> lambda: a scalar factor is theta itself
        return mode.laplace, grad[p:], grad[:p]

    def _inverse_at_rows(self, system: _SchurSystem) -> np.ndarray:
        """``(H^-1)[(k, c_k(j)), (l, c_l(j))]`` for every row ``j``: (n, K, K)."""
        d = self.data
        K = len(d.codes)
        S_inverse = la.cho_solve(system.S, np.eye(system.S[0].shape[0]))
        AinvB = system.AinvB.toarray() if sp.issparse(system.AinvB) else np.asarray(system.AinvB)
        cross = AinvB @ S_inverse  # (A^-1 B) S^-1: (L1, R)
        first = system.A_inverse[:, 0, 0] + np.sum(cross * AinvB, axis=1)
        offsets = np.cumsum([0] + list(d.n_levels[1:]))
        columns = [None] + [offsets[k - 1] + d.codes[k] for k in range(1, K)]  # dense-part index per row
        P = np.empty((self.n, K, K))
        c1 = d.codes[0]
        P[:, 0, 0] = first[c1]
        for k in range(1, K):
            P[:, 0, k] = P[:, k, 0] = -cross[c1, columns[k]]
            for other in range(1, k + 1):
                P[:, k, other] = P[:, other, k] = S_inverse[columns[k], columns[other]]
        return P

    def conditional_variances(self, beta: np.ndarray, theta: np.ndarray) -> list[np.ndarray]:
        """Diagonal blocks of ``H^{-1}`` per factor and level: (L, q, q) per factor."""
        d = self.data
        mode = self.mode(beta, theta)
        ZLs = self._zl(theta)
        system = self._system(ZLs, d.family.weight(mode.eta, d.m))
        diagonal = system.inverse_diagonal_blocks()
        out = [diagonal[0]]
        start = 0
        for L, q in zip(d.n_levels[1:], self.qs[1:]):
            V = np.empty((L, q, q))
            for a in range(q):
                for b in range(q):
                    V[:, a, b] = diagonal[1][start + a * L + np.arange(L), start + b * L + np.arange(L)]
            out.append(V)
            start += L * q
        return out

    # -------------------------------------------------------------- nAGQ = 0
    def joint_mode(self, beta0: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, Mode]:
        """PIRLS over ``(u, beta)`` together at ``theta`` (lme4's ``nAGQ = 0`` stage)."""
        d = self.data
        ZLs = self._zl(theta)
        beta, u = beta0.copy(), self.u.copy()
        eta = d.offset + d.X @ beta + self._random_eta(ZLs, u)
        f = self._objective(eta, u)
        for _ in range(PIRLS_ITERATIONS):
            self.iterations += 1
            s, w = d.family.score(d.y, eta, d.m), d.family.weight(eta, d.m)
            g = np.concatenate([self._gradient(ZLs, s, u), s @ d.X])
            step = self._system(ZLs, w, d.X).solve(g)
            size = 1.0
            for _ in range(HALVINGS):
                ut, bt = u + size * step[: self.Q], beta + size * step[self.Q :]
                eta_trial = d.offset + d.X @ bt + self._random_eta(ZLs, ut)
                f_trial = self._objective(eta_trial, ut)
                if f_trial <= f + 1e-12 * (abs(f) + 1.0):
                    break
                size *= 0.5
            else:
                break
            u, beta, eta = ut, bt, eta_trial
            change, f = f - f_trial, f_trial
            if change <= PIRLS_TOLERANCE * (abs(f) + 1.0):
                break
        self.u = u
        return beta, self.mode(beta, theta, u)


class _SchurSystem:
    """``H = [[A, B], [B', C]]``: ``A`` block-diagonal (L, q, q), ``B`` dense or sparse, ``C`` dense;
    solves through the Schur complement ``S = C - B'A^-1 B`` and gives
    ``log det H = log det A + log det S``."""

    def __init__(self, A: np.ndarray, B, C: np.ndarray):
        self.L, self.q = A.shape[0], A.shape[1]
        self.A_inverse = np.linalg.inv(A) if self.q > 1 else 1.0 / A
        self.B = B
        self.AinvB = self._apply_A_inverse(B)
        if C.size:
            BtAinvB = B.T @ self.AinvB
            S = C - (BtAinvB.toarray() if sp.issparse(BtAinvB) else BtAinvB)
            self.S = la.cho_factor(S, lower=True)
            log_det_S = float(2.0 * np.sum(np.log(np.diag(self.S[0]))))
        else:
            self.S, log_det_S = None, 0.0
        self.log_det = float(np.sum(_batched_logdet(A))) + log_det_S

    def _apply_A_inverse(self, M):
        """``A^-1 M`` for a dense or sparse ``M`` with ``L q`` rows (a vector too)."""
        if sp.issparse(M):
            if self.q == 1:
                return sp.csr_matrix(M.multiply(self.A_inverse[:, 0, :]))
            blocks = sp.bsr_matrix(
                (self.A_inverse, np.arange(self.L), np.arange(self.L + 1)), shape=(self.L * self.q, self.L * self.q)
            )
            return (blocks @ M).tocsr()
        if self.q == 1:
            return M * (self.A_inverse[:, 0, 0] if M.ndim == 1 else self.A_inverse[:, 0, :])
        shaped = M.reshape(self.L, self.q, -1)
        return np.einsum("lab,lbk->lak", self.A_inverse, shaped).reshape(M.shape)

    def solve(self, r: np.ndarray) -> np.ndarray:
        k = self.L * self.q
        y1 = self._apply_A_inverse(r[:k])
        if self.S is None:
            return y1
        x2 = la.cho_solve(self.S, r[k:] - self.B.T @ y1)
        return np.concatenate([y1 - self.AinvB @ x2, x2])

    def inverse_diagonal_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """The (L, q, q) diagonal blocks of ``H^-1`` for the first factor, and the dense part of ``H^-1``.

        ``(H^-1)_11 = A^-1 + (A^-1 B) S^-1 (A^-1 B)'`` and ``(H^-1)_22 = S^-1``.
        """
        if self.S is None:
            return self.A_inverse, np.zeros((0, 0))
        S_inverse = la.cho_solve(self.S, np.eye(self.S[0].shape[0]))
        M = self.AinvB
        MS = np.asarray(M @ S_inverse)
        if self.q == 1:
            product = M.multiply(MS) if sp.issparse(M) else M * MS
            extra = np.asarray(product.sum(axis=1)).reshape(self.L, 1, 1)
        else:
            Md = (M.toarray() if sp.issparse(M) else M).reshape(self.L, self.q, -1)
            extra = np.einsum("lar,lbr->lab", MS.reshape(self.L, self.q, -1), Md)
        return self.A_inverse + extra, S_inverse


# ---------------------------------------------------------------------------- helpers
class _SPDFactor:
    """Cholesky (dense) or sparse LU of a symmetric positive definite matrix: solves and log det."""

    def __init__(self, H):
        if H.shape[0] <= DENSE_LIMIT:
            self.dense = la.cho_factor(H.toarray() if sp.issparse(H) else H, lower=True)
            self.log_det = float(2.0 * np.sum(np.log(np.diag(self.dense[0]))))
            self.lu = None
        else:
            self.dense = None
            self.lu = splu(sp.csc_matrix(H), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                           options={"SymmetricMode": True})  # fmt: skip
            self.log_det = float(np.sum(np.log(np.abs(self.lu.U.diagonal()))))

    def solve(self, b: np.ndarray) -> np.ndarray:
        if self.dense is not None:
            return la.cho_solve(self.dense, b)
        return self.lu.solve(np.asarray(b, dtype=float))


def _cross_tabulate(codes_g, levels_g: int, codes_h, levels_h: int, values: np.ndarray) -> np.ndarray:
    """``sum_j values_j [g(j) = r][h(j) = c]`` as a (levels_g, levels_h) array (None codes: one level)."""
    if codes_g is None and codes_h is None:
        return np.array([[values.sum()]])
    if codes_h is None:
        return np.bincount(codes_g, weights=values, minlength=levels_g)[:, None]
    if codes_g is None:
        return np.bincount(codes_h, weights=values, minlength=levels_h)[None, :]
    flat = codes_g.astype(np.int64) * levels_h + codes_h
    return np.bincount(flat, weights=values, minlength=levels_g * levels_h).reshape(levels_g, levels_h)


def _batched_solve(H: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``H_i x_i = b_i`` for stacked SPD ``H`` (L, q, q) and ``b`` (L, q) or (L, q, k)."""
    if H.shape[1] == 1:
        return b / H[:, 0, :] if b.ndim == 2 else b / H[:, :, :1]
    if b.ndim == 2:
        return np.linalg.solve(H, b[..., None])[..., 0]
    return np.linalg.solve(H, b)


def _batched_logdet(H: np.ndarray) -> np.ndarray:
    if H.shape[1] == 1:
        return np.log(H[:, 0, 0])
    return np.linalg.slogdet(H)[1]


def _logsumexp_rows(a: np.ndarray) -> np.ndarray:
    top = np.max(a, axis=1)
    return top + np.log(np.sum(np.exp(a - top[:, None]), axis=1))
