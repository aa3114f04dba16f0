"""The record of a fitted generalized linear mixed model.

Estimates are on the data's scale (the engine's X is standardised: ``beta = T beta~``).
The log-likelihood includes every constant of the family (log binomial coefficients,
``-log y!``), for the Laplace approximation and for adaptive quadrature alike, so that the
two and the GLM without random effects compare; lme4 prints the same Laplace value (its
``nAGQ > 1`` values leave the constants out).  The random effects' covariance ``G`` is
``Lambda Lambda'`` (no residual scale in these families).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.linalg as la

from ..data.design import Design
from ..engine.family import Family
from ..engine.laplace import GLMMData, GLMMOptimum
from ..engine.stats import Scaling
from . import VARCORR_COLUMNS, DesignFacts, varcorr_rows


@dataclass
class GLMMRecord(DesignFacts):
    """A fitted GLMM: the design, the family, the optimum and everything derived from them."""

    design: Design
    family: Family
    family_name: str  # as the user named it: binomial, bernoulli or poisson
    scaling: Scaling
    data: GLMMData
    optimum: GLMMOptimum
    conditional_variances: list[np.ndarray]  # Var(u | y) per factor (levels, q, q), spherical scale
    labels: dict[str, str] = field(default_factory=dict)  # printed names of fixed effects (Stata's 2.period)

    # ------------------------------------------------------------------ what was fitted
    @property
    def nagq(self) -> int:
        return self.optimum.nagq

    @property
    def method(self) -> str:
        """lme4's name of the approximation."""
        if self.nagq == 0:
            return "Laplace (nAGQ = 0: beta inside PIRLS)"
        if self.nagq == 1:
            return "Laplace"
        return f"adaptive Gauss-Hermite quadrature ({self.nagq} points)"

    @property
    def converged(self) -> bool:
        return bool(self.optimum.report.converged and self.optimum.mode.converged)

    # ------------------------------------------------------------------ likelihood
    @property
    def loglik(self) -> float:
        """The approximate marginal log-likelihood (constants included)."""
        return -0.5 * self.optimum.deviance

    @property
    def n_params(self) -> int:
        return len(self.design.fixed_names) + self.theta.size

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        return -2.0 * self.loglik + np.log(self.nobs) * self.n_params

    @property
    def glm_loglik(self) -> float:
        """Log-likelihood of the model without random effects (the LR test's null)."""
        return self.optimum.glm.loglik

    # ------------------------------------------------------------------ fixed effects
    @property
    def fixed_names(self) -> list[str]:
        """The fixed effects' printed names: the design's, or their ``labels``."""
        return [self.labels.get(name, name) for name in self.design.fixed_names]

    @cached_property
    def fixef(self) -> pd.Series:
        return pd.Series(self.scaling.T @ self.optimum.beta, index=self.fixed_names)

    @cached_property
    def vcov(self) -> pd.DataFrame:
        """``2 H^-1`` of the deviance in ``(theta, beta)``, its beta block (lme4's ``use.hessian``)."""
        opt = self.optimum
        p = opt.beta.size
        V = 2.0 * _symmetric_inverse(opt.hessian)[-p:, -p:]
        V = self.scaling.T @ V @ self.scaling.T.T
        names = self.fixed_names
        return pd.DataFrame(V, index=names, columns=names)

    @cached_property
    def se(self) -> pd.Series:
        return pd.Series(np.sqrt(np.clip(np.diag(self.vcov.to_numpy()), 0.0, None)), index=self.fixed_names)

    # ------------------------------------------------------------------ random effects
    @property
    def theta(self) -> np.ndarray:
        """lme4's theta: the Cholesky factors of each ``G``, column by column."""
        return self.optimum.theta

    @cached_property
    def lambdas(self) -> list[np.ndarray]:
        return self.data.lambdas(self.theta)

    @cached_property
    def G(self) -> dict[str, pd.DataFrame]:
        """Covariance matrix of the random effects of each grouping factor (``Lambda Lambda'``)."""
        return {
            b.name: pd.DataFrame(lam @ lam.T, index=b.names, columns=b.names)
            for b, lam in zip(self.design.blocks, self.lambdas)
        }

    @cached_property
    def varcorr(self) -> pd.DataFrame:
        """Variance components (lme4's layout, without a residual row)."""
        return pd.DataFrame(varcorr_rows(self.design.blocks, self.G), columns=VARCORR_COLUMNS)

    @property
    def singular(self) -> bool:
        """True when a variance is at zero or a correlation at +-1."""
        parts = self.data.split_theta(self.theta)
        return any(layout.on_boundary(part) for layout, part in zip(self.data.layouts, parts))

    @cached_property
    def modes(self) -> list[np.ndarray]:
        """Conditional modes ``b = Lambda u`` per factor: (levels, q)."""
        return [u @ lam.T for u, lam in zip(self.optimum.mode.u, self.lambdas)]

    @cached_property
    def mode_covariances(self) -> list[np.ndarray]:
        """``Var(b | y) ~ Lambda H^-1 Lambda'`` per factor and level: (levels, q, q) (lme4's condVar)."""
        return [np.einsum("ab,lbc,dc->lad", lam, V, lam) for lam, V in zip(self.lambdas, self.conditional_variances)]

    # ------------------------------------------------------------------ fitted values
    @property
    def eta(self) -> np.ndarray:
        """The conditional linear predictor at the modes (offsets included)."""
        return self.optimum.mode.eta

    @property
    def fixed_eta(self) -> np.ndarray:
        """The linear predictor without random effects (offsets included)."""
        return self.data.offset + self.data.X @ self.optimum.beta


def _symmetric_inverse(H: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite Hessian by Cholesky (pseudo-inverse when it is not)."""
    try:
        factor = la.cho_factor(H, lower=True)
        return la.cho_solve(factor, np.eye(H.shape[0]))
    except la.LinAlgError:
        return np.linalg.pinv(H)
