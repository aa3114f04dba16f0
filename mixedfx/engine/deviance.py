"""The profiled deviance of a linear mixed model, evaluated from sufficient statistics.

With ``G = sigma^2 Lambda Lambda'`` (Lambda block diagonal over factors and levels), the
penalised least-squares formulation of Bates et al. (2015, J. Stat. Softw. 67(1)) gives,
for fixed ``theta``:

    L L'        = Lambda' Z'Z Lambda + I                   (blocked Cholesky)
    R_ZX        = L^{-1} Lambda' Z'X
    R_X' R_X    = X'X - R_ZX' R_ZX
    c_u         = L^{-1} Lambda' Z'y,   c_b = R_X^{-T} (X'y - R_ZX' c_u)
    beta        = R_X^{-1} c_b
    r^2         = y'y - |c_u|^2 - |c_b|^2                 (penalised residual sum of squares)

    ML:   -2 l   = log|L|^2 + n     (1 + log(2 pi r^2 / n))
    REML: -2 l_R = log|L|^2 + log|R_X|^2 + (n - p)(1 + log(2 pi r^2 / (n - p)))

and ``sigma^2 = r^2 / n`` (ML) or ``r^2 / (n - p)`` (REML); weights ``w`` (residual
variance ``sigma^2 / w``) subtract ``sum(log w)``.

The blocked Cholesky factor has the first grouping factor's block diagonal (one small
q x q block per level, factorised all at once by :mod:`mixedfx.engine.batched`), and the
other factors' columns (crossed or nesting factors) as a Schur complement, as MixedModels.jl
does.  This module holds what every evaluator shares (the deviance formula, the full solve
at one ``theta``, BLUPs and conditional covariances); :mod:`mixedfx.engine.single` evaluates
one grouping factor in chunks with an analytic gradient, :mod:`mixedfx.engine.blocked`
eliminates crossed and nested factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp

from . import batched
from .covariance import BlockLayout
from .stats import SufficientStats, set_column_transforms

LOG_2PI = float(np.log(2 * np.pi))

#: Singular fits on at most this many rows are restarted from the other faces of the boundary.
ALTERNATIVES_MAX_ROWS = 100_000


@dataclass
class Solution:
    """Everything computed at one ``theta``: the deviance and the pieces that produced it."""

    deviance: float
    beta: np.ndarray
    sigma2: float
    r2: float
    L1: np.ndarray | None
    c1X: np.ndarray | None
    c1y: np.ndarray | None
    RX: np.ndarray
    logdet_L: float = 0.0
    logdet_X: float = 0.0
    L21: sp.csr_matrix | None = None
    L2: np.ndarray | None = None
    c2X: np.ndarray | None = None
    c2y: np.ndarray | None = None


def stack_matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A_j B_j`` for element-major stacks (q, r, m) and (r, s, m)."""
    return np.einsum("ikm,kjm->ijm", A, B)


def gaussian_deviance(
    logdet_L: float, logdet_X: float, r2: float, n: int, p: int, reml: bool, sigma2: float | None = None
) -> tuple[float, float]:
    """``(deviance, profiled sigma^2)`` from the pieces of the penalised least-squares solution.

    ``-2 l = log|L|^2 [+ log|R_X|^2] + c (log(2 pi) + log sigma^2) + r^2 / sigma^2`` with
    ``c = n`` (ML) or ``n - p`` (REML, which adds ``log|R_X|^2``); ``sigma2=None`` profiles it
    out at ``r^2 / c``, where the last two terms become ``c (1 + log(2 pi r^2 / c))``.
    The weights' ``- sum log w`` and any offset are added by the evaluator.
    """
    dof = n - p if reml else n
    profiled = r2 / dof
    s2 = profiled if sigma2 is None else sigma2
    dev = logdet_L + (logdet_X if reml else 0.0) + dof * (LOG_2PI + np.log(s2)) + r2 / s2
    return float(dev), profiled


def fixed_effects_step(M: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(R_X, c_b, beta, log|R_X|^2)`` from ``M = R_X R_X'`` and the right-hand side (p may be 0)."""
    if M.shape[0] == 0:
        return np.zeros((0, 0)), np.zeros(0), np.zeros(0), 0.0
    RX = la.cholesky(M, lower=True)  # checks finiteness: a NaN deviance must become an error
    cb = la.solve_triangular(RX, rhs, lower=True)
    beta = la.solve_triangular(RX, cb, lower=True, trans="T")
    return RX, cb, beta, 2.0 * float(np.log(np.diag(RX)).sum())


class ProfiledDeviance:
    """Callable ``theta -> -2 log-likelihood`` (ML) or ``-2 REML log-likelihood``.

    ``layouts`` describe each grouping factor's random effects (terms and covariance
    structures), in the order of the statistics.  Subclasses implement :meth:`value`;
    ``analytic_gradient`` says whether they also provide ``deviance_and_gradient`` and
    ``deviance_gradient_information``; ``costly_evaluations`` whether one evaluation is expensive
    enough (a large dense factorisation) that the optimiser should try Newton steps from its
    start before anything else.
    """

    analytic_gradient = False
    costly_evaluations = False

    def __init__(
        self,
        stats: SufficientStats,
        layouts: list[BlockLayout],
        reml: bool,
        column_transforms: list[np.ndarray] | None = None,
    ):
        self.stats = stats
        self.layouts = layouts
        self.reml = reml
        # The transforms T_k of the random-effect columns this deviance works with; several
        # deviances may share (and transform in place) one set of statistics.
        self.z_transforms = column_transforms
        self.claim_statistics()
        self.n_theta = sum(layout.n_params for layout in layouts)
        self.offset = 0.0  # added to every deviance: sum log|R_i| of whitened R-side models
        self._pattern: tuple[np.ndarray, np.ndarray] | None = None

    #: The deviance of the data is this times the evaluator's (a pseudo-likelihood's top-level weight scale).
    likelihood_scale = 1.0

    @property
    def n_likelihood(self) -> float:
        """The number of observations that multiplies ``log sigma^2`` in the ML deviance (n here)."""
        return float(self.stats.n)

    # ------------------------------------------------------------------ parameters
    def claim_statistics(self) -> None:
        """Transform the (possibly shared) statistics in place to this deviance's columns, if they are not.

        Every method that reads the statistics calls this first, so that fits sharing one
        reduction (with different covariance structures, hence column transforms) each see
        their own columns.
        """
        if self.z_transforms is None:
            return
        current = self.stats.column_transforms
        if current is None or any(C is not T for C, T in zip(current, self.z_transforms)):
            set_column_transforms(self.stats, self.z_transforms)
            self.stats.column_transforms = self.z_transforms  # identity marks this deviance as the owner

    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        """Relative covariance factors of every grouping factor for ``theta``."""
        out, start = [], 0
        for layout in self.layouts:
            out.append(layout.factor_matrix(theta[start : start + layout.n_params]))
            start += layout.n_params
        return out

    def original_lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        """Relative covariance factors for the original (untransformed) random-effect columns.

        The statistics use ``Z T`` (see :meth:`BlockLayout.standardising_transform`); the
        factor of the original columns is ``T Lambda``.
        """
        lams = self.lambdas(theta)
        if self.z_transforms is None:
            return lams
        return [T @ lam for T, lam in zip(self.z_transforms, lams)]

    def engine_theta(self, relative_covariances: list[np.ndarray]) -> np.ndarray:
        """Engine parameters theta from each block's ``G / sigma^2`` on the original columns."""
        transforms = self.z_transforms or [np.eye(G.shape[0]) for G in relative_covariances]
        thetas = []
        for Gr, T, layout in zip(relative_covariances, transforms, self.layouts):
            Tinv = np.linalg.inv(T)
            thetas.append(layout.theta_from_relative_covariance(Tinv @ Gr @ Tinv.T))
        return np.concatenate(thetas) if thetas else np.zeros(0)

    def mirrors(self) -> dict[int, list[int]]:
        """Boundary-probe sign flips of every block (:meth:`BlockLayout.mirrors`), in theta's positions."""
        out, start = {}, 0
        for layout in self.layouts:
            for k, flips in layout.mirrors().items():
                out[start + k] = [start + i for i in flips]
            start += layout.n_params
        return out

    def boundary_alternatives(self, theta: np.ndarray) -> list[np.ndarray]:
        """Restart points of a singular fit, one block at a time (:meth:`BlockLayout.boundary_alternatives`).

        None on more than :data:`ALTERNATIVES_MAX_ROWS` rows, where each restart costs seconds.
        """
        if self.stats.n > ALTERNATIVES_MAX_ROWS:
            return []
        out, start = [], 0
        for layout in self.layouts:
            k = layout.n_params
            for point in layout.boundary_alternatives(np.asarray(theta[start : start + k], dtype=float)):
                alternative = np.array(theta, dtype=float)
                alternative[start : start + k] = point
                out.append(alternative)
            start += k
        return out

    def on_boundary(self, theta: np.ndarray, tol: float = 1e-4) -> bool:
        """True for a boundary (singular) point: a relative SD at zero or a correlation at +-1."""
        start = 0
        for layout in self.layouts:
            if layout.on_boundary(theta[start : start + layout.n_params], tol):
                return True
            start += layout.n_params
        return False

    # ------------------------------------------------------------------ evaluation
    def __call__(self, theta: np.ndarray) -> float:
        """Deviance (``-2 log L`` or ``-2 log L_R``) at ``theta``; ``inf`` where it cannot be evaluated."""
        try:
            return self.value(theta)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            return np.inf

    def value(self, theta: np.ndarray) -> float:
        """Deviance at ``theta`` (raises where the factorisation fails)."""
        return self.solve(theta, dense=False).deviance

    def _total(self, deviance: float) -> float:
        """The deviance with the weights' ``- sum log w`` and the R-side offset."""
        return float(deviance - self.stats.sum_log_weights + self.offset)

    def light_solution(self, theta: np.ndarray) -> Solution:
        """The deviance, beta, sigma^2 and R_X at ``theta`` (evaluators may skip the per-cluster factors)."""
        return self.solve(theta)

    def solve(self, theta: np.ndarray, dense: bool = True) -> Solution:
        """Evaluate the profiled deviance at ``theta`` and keep the intermediate results.

        ``dense=False`` skips forming a dense outer factor that only BLUPs need.
        """
        self.claim_statistics()
        s = self.stats
        theta = np.asarray(theta, dtype=float)
        lams = self.lambdas(theta)
        lam1 = lams[0]
        A1 = batched.congruence(lam1, s.first_ZtZ)
        idx = np.arange(s.first_q)
        A1[idx, idx] += 1.0
        L1 = batched.cholesky(A1)
        c1X = batched.solve_lower(L1, batched.left_multiply_transpose(lam1, s.first_ZtX))
        c1y = batched.solve_lower(L1, batched.left_multiply_transpose(lam1, s.first_Zty))
        logdet = 2.0 * float(np.log(np.diagonal(L1, axis1=0, axis2=1)).sum())
        M = s.XtX - np.tensordot(c1X, c1X, axes=([0, 2], [0, 2]))
        rhs = s.Xty - np.tensordot(c1X, c1y, axes=([0, 2], [0, 1]))
        r2 = s.yty - float(np.einsum("am,am->", c1y, c1y))
        sol = Solution(0.0, np.empty(0), 0.0, 0.0, L1, c1X, c1y, np.empty((0, 0)))
        if s.rest_Z1 is not None:
            logdet_rest, M, rhs, r2 = self._eliminate_outer(lams, sol, M, rhs, r2, dense)
            logdet += logdet_rest
        RX, cb, beta, logdet_x = fixed_effects_step(M, rhs)
        r2 = max(r2 - float(cb @ cb), 1e-300)
        dev, sigma2 = gaussian_deviance(logdet, logdet_x, r2, s.n, s.p, self.reml)
        sol.deviance = self._total(dev)
        sol.beta, sol.sigma2, sol.r2, sol.RX = beta, sigma2, r2, RX
        sol.logdet_L, sol.logdet_X = logdet, logdet_x
        return sol

    def _eliminate_outer(self, lams, sol, M, rhs, r2, dense):
        """Factors after the first (crossed or nested): implemented by :class:`BlockedDeviance`."""
        raise NotImplementedError("this evaluator handles one grouping factor")

    def deviance_at(self, theta: np.ndarray, sigma2: float) -> float:
        """Deviance at ``theta`` and a given (not profiled) residual variance ``sigma2`` (standardised scale)."""
        sol = self.solve(theta)
        s = self.stats
        dev, _ = gaussian_deviance(sol.logdet_L, sol.logdet_X, sol.r2, s.n, s.p, self.reml, sigma2)
        return self._total(dev)

    # ------------------------------------------------------------------ random effects
    def first_factor_pattern(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR ``(indptr, indices)`` of the first factor's block diagonal (m1 blocks of q1 x q1; cached)."""
        if self._pattern is None:
            q1, m1 = self.stats.first_q, self.stats.n_first_levels
            rows = np.arange(m1 * q1)
            indptr = np.arange(0, m1 * q1 * q1 + 1, q1)
            indices = ((rows // q1)[:, None] * q1 + np.arange(q1)[None, :]).ravel()
            self._pattern = (indptr, indices)
        return self._pattern

    def first_block_diagonal(self, blocks: np.ndarray) -> sp.csr_matrix:
        """The first factor's stack (q1, q1, m1) of blocks as one sparse block-diagonal matrix."""
        q1, m1 = self.stats.first_q, self.stats.n_first_levels
        indptr, indices = self.first_factor_pattern()
        return sp.csr_matrix((blocks.transpose(2, 0, 1).reshape(-1), indices, indptr), shape=(m1 * q1, m1 * q1))

    def spherical_modes(self, sol: Solution) -> tuple[np.ndarray, np.ndarray | None]:
        """Spherical random effects ``u`` solving ``L' u = c_u - R_ZX beta`` (first, rest)."""
        beta = sol.beta
        r1 = sol.c1y - np.tensordot(sol.c1X, beta, axes=([1], [0])) if beta.size else sol.c1y.copy()
        if sol.L2 is None:
            return batched.solve_upper_from_lower(sol.L1, r1), None
        r2 = sol.c2y - sol.c2X @ beta if beta.size else sol.c2y.copy()
        u2 = la.solve_triangular(sol.L2, r2, lower=True, trans="T")
        # L1' u1 + L21' u2 = r1  =>  u1 = L1^{-T} (r1 - L21' u2)
        q1, m1 = self.stats.first_q, self.stats.n_first_levels
        corr = (sol.L21.T @ u2).reshape(m1, q1).T
        return batched.solve_upper_from_lower(sol.L1, r1 - corr), u2

    def fixed_effect_fill(self, sol: Solution) -> list[np.ndarray]:
        """Per factor, the stack (q, q, m) of ``(E M^{-1} E')_jj`` with ``E = L^{-T} R_ZX``.

        Added to the conditional covariance ``(L L')^{-1}`` this gives the random block of
        the inverse of the full mixed-model-equations matrix: the prediction-error
        covariance ``Var(b_hat - b)`` that also counts the estimation of beta (Stata's
        comparative standard errors).  Returned before multiplication by Lambda and sigma^2.
        """
        s = self.stats
        p = s.p
        q1, m1 = s.first_q, s.n_first_levels
        if p == 0:
            fills = [np.zeros((q1, q1, m1))] + [np.zeros((q, q, m)) for q, m in s.rest_sizes]
            return fills
        Minv = la.cho_solve((sol.RX, True), np.eye(p))
        c1X = sol.c1X
        E2 = None
        if sol.L2 is not None:
            E2 = la.solve_triangular(sol.L2, sol.c2X, lower=True, trans="T")  # Q2 x p
            corr = (sol.L21.T @ E2).reshape(m1, q1, p).transpose(1, 2, 0)
            c1X = c1X - corr
        E1 = batched.solve_upper_from_lower(sol.L1, c1X)  # (q1, p, m1)
        EM = np.einsum("akm,kl->alm", E1, Minv)
        fills = [np.einsum("akm,bkm->abm", EM, E1)]
        if E2 is not None:
            offset = 0
            for q, m in s.rest_sizes:
                part = E2[offset : offset + q * m].reshape(m, q, p)
                fills.append(np.einsum("jak,kl,jbl->abj", part, Minv, part))
                offset += q * m
        return fills

    def conditional_covariances(self, sol: Solution, lams: list[np.ndarray]) -> list[np.ndarray]:
        """Per factor, the stack (q, q, m) of ``Lambda (L L')^{-1}_jj Lambda'`` (times sigma^2: condVar).

        For the first factor the diagonal blocks of the inverse add, to ``(L1_j L1_j')^{-1}``,
        the fill from the rest: ``W_j' W_j`` with ``W = L2^{-1} L21 L1^{-1}`` (computed in
        column chunks so memory stays bounded).
        """
        s = self.stats
        inv1 = batched.inverse_from_cholesky(sol.L1)
        out = []
        if sol.L2 is not None:
            q1, m1 = s.first_q, s.n_first_levels
            eye = np.broadcast_to(np.eye(q1)[:, :, None], (q1, q1, m1))
            bd_inv = self.first_block_diagonal(batched.solve_lower(sol.L1, np.ascontiguousarray(eye)))
            chunk = max(q1, (2_000_000 // max(sol.L2.shape[0], 1)) // q1 * q1)
            for start in range(0, m1 * q1, chunk):
                stop = min(start + chunk, m1 * q1)
                block = (sol.L21 @ bd_inv[:, start:stop]).toarray()
                W = la.solve_triangular(sol.L2, block, lower=True)
                k = (stop - start) // q1
                Wr = W.reshape(W.shape[0], k, q1)
                inv1[:, :, start // q1 : stop // q1] += np.einsum("rja,rjb->abj", Wr, Wr)
        out.append(np.einsum("ia,abm,jb->ijm", lams[0], inv1, lams[0]))
        if sol.L2 is not None:
            L2inv = la.solve_triangular(sol.L2, np.eye(sol.L2.shape[0]), lower=True)
            offset = 0
            for lam, (q, m) in zip(lams[1:], s.rest_sizes):
                part = L2inv[:, offset : offset + q * m].reshape(-1, m, q)
                inv = np.einsum("rja,rjb->abj", part, part)
                out.append(np.einsum("ia,abm,jb->ijm", lam, inv, lam))
                offset += q * m
        return out
