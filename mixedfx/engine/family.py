"""Response distributions and links of generalized linear (mixed) models, evaluated stably.

A family gives, for the linear predictor ``eta`` of each row, its response ``y`` and its
number of trials (binomial) or prior weight ``m``:

- ``loglik(y, eta, m)``: the full log-likelihood of each row, constants included (the log
  binomial coefficient, ``-log y!``), so that log-likelihoods compare with Stata's and lme4's
  Laplace values;
- ``score(y, eta, m)``: ``d loglik / d eta``;
- ``weight(eta, m)``: the IRLS (expected-information) weight ``m (dmu/deta)^2 / V(mu)``, as
  lme4's PIRLS uses; for canonical links it equals the observed information.

Binomial responses are proportions ``y = k / m`` of ``m`` trials (Bernoulli: ``m = 1``);
Poisson responses are counts with prior weights ``m`` (1 by default).  Links: logit, probit,
cloglog (binomial); log (Poisson).  Everything is computed from ``eta`` in ways that neither
overflow nor lose digits in the tails (``log1p``, ``log_ndtr``, ``expm1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, log_ndtr, ndtr, ndtri

#: Links available for each family, the canonical one first.
LINKS = {"binomial": ("logit", "probit", "cloglog"), "poisson": ("log",)}

_ETA_LIMIT = 700.0  # exp(700) is finite; beyond it the clipped eta changes nothing that matters


def _log1pexp(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))``: no overflow, full precision in both
    tails, and about 7x faster than ``np.logaddexp(0, x)`` (this is the inner loop of PIRLS)."""
    out = np.abs(x)
    np.negative(out, out=out)
    np.exp(out, out=out)
    np.log1p(out, out=out)
    out += np.maximum(x, 0.0)
    return out


def _expit(x: np.ndarray) -> np.ndarray:
    """The logistic function ``1 / (1 + exp(-x))``, relative precision kept in both tails
    (``x`` beyond +-700 is clipped, where the result is 0 or 1 to double precision anyway)."""
    out = np.clip(x, -_ETA_LIMIT, _ETA_LIMIT)
    np.negative(out, out=out)
    np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)
    return out


@dataclass(frozen=True)
class Family:
    """A response distribution with a link (see the module docstring)."""

    name: str
    link: str

    def __post_init__(self) -> None:
        if self.name not in LINKS:
            raise ValueError(f"unknown family {self.name!r}")
        if self.link not in LINKS[self.name]:
            raise ValueError(f"link {self.link!r} is not available for the {self.name} family")

    @property
    def canonical(self) -> bool:
        return self.link == LINKS[self.name][0]

    # ------------------------------------------------------------------ mean
    def mean(self, eta: np.ndarray) -> np.ndarray:
        """The inverse link ``mu = g^-1(eta)`` (a probability, or a rate per unit of exposure)."""
        eta = np.clip(eta, -_ETA_LIMIT, _ETA_LIMIT)
        if self.link == "logit":
            return _expit(eta)
        if self.link == "probit":
            return ndtr(eta)
        if self.link == "cloglog":
            return -np.expm1(-np.exp(eta))
        return np.exp(eta)

    def link_of(self, mu: np.ndarray) -> np.ndarray:
        """The link ``eta = g(mu)`` (for starting values)."""
        mu = np.asarray(mu, dtype=float)
        if self.link == "logit":
            return np.log(mu) - np.log1p(-mu)
        if self.link == "probit":
            return ndtri(mu)
        if self.link == "cloglog":
            return np.log(-np.log1p(-mu))
        return np.log(mu)

    # ------------------------------------------------------------------ likelihood
    def log_mean_terms(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(log mu, log(1 - mu))`` for the binomial links, stably in both tails."""
        if self.link == "logit":
            return -_log1pexp(-eta), -_log1pexp(eta)
        if self.link == "probit":
            return log_ndtr(eta), log_ndtr(-eta)
        e = np.exp(np.clip(eta, -_ETA_LIMIT, 50.0))
        return np.log(-np.expm1(-e)), -e

    def loglik(self, y: np.ndarray, eta: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Log-likelihood of each row, constants included."""
        return self.kernel(y, eta, m) + self.constant(y, m)

    def kernel(self, y: np.ndarray, eta: np.ndarray, m: np.ndarray) -> np.ndarray:
        """The log-likelihood of each row without the terms free of ``eta`` (see :meth:`constant`)."""
        if self.name == "binomial":
            k = y * m
            if self.link == "logit":  # k log mu + (m - k) log(1 - mu) = k eta - m log(1 + e^eta)
                return k * eta - m * _log1pexp(eta)
            log_mu, log_1mu = self.log_mean_terms(eta)
            ll = k * log_mu + (m - k) * log_1mu
            return np.where(k == 0, (m - k) * log_1mu, np.where(k == m, k * log_mu, ll))  # 0 * -inf is 0
        eta = np.clip(eta, -_ETA_LIMIT, _ETA_LIMIT)
        return m * (y * eta - np.exp(eta))

    def constant(self, y: np.ndarray, m: np.ndarray) -> np.ndarray:
        """The terms of each row's log-likelihood free of ``eta``: ``log choose(m, k)``, ``-m log y!``."""
        if self.name == "binomial":
            return binomial_constant(y, m)
        return -m * gammaln(y + 1.0)

    def saturated_loglik(self, y: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Each row's log-likelihood at ``mu = y`` (lme4's deviance residuals are relative to it)."""
        if self.name == "binomial":
            k = y * m
            with np.errstate(divide="ignore", invalid="ignore"):
                ll = np.where(k > 0, k * np.log(np.where(y > 0, y, 1.0)), 0.0)
                ll += np.where(m - k > 0, (m - k) * np.log(np.where(y < 1, 1.0 - y, 1.0)), 0.0)
            return ll + binomial_constant(y, m)
        with np.errstate(divide="ignore", invalid="ignore"):
            ylogy = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)), 0.0)
        return m * (ylogy - y - gammaln(y + 1.0))

    def score(self, y: np.ndarray, eta: np.ndarray, m: np.ndarray) -> np.ndarray:
        """``d loglik / d eta`` of each row."""
        if self.name == "poisson":
            return m * (y - np.exp(np.clip(eta, -_ETA_LIMIT, _ETA_LIMIT)))
        if self.link == "logit":
            return m * (y - _expit(eta))
        log_mu, log_1mu = self.log_mean_terms(eta)
        log_density = self.log_mu_eta(eta)
        # d/deta [k log mu + (m - k) log(1 - mu)] = (k / mu - (m - k) / (1 - mu)) dmu/deta
        return m * (y * np.exp(log_density - log_mu) - (1.0 - y) * np.exp(log_density - log_1mu))

    def log_mu_eta(self, eta: np.ndarray) -> np.ndarray:
        """``log(dmu / deta)``."""
        eta = np.clip(eta, -_ETA_LIMIT, _ETA_LIMIT)
        if self.link == "logit":
            return -_log1pexp(-eta) - _log1pexp(eta)
        if self.link == "probit":
            return -0.5 * eta**2 - 0.5 * np.log(2.0 * np.pi)
        if self.link == "cloglog":
            return eta - np.exp(np.minimum(eta, 50.0))
        return eta

    def score_and_weight(self, y: np.ndarray, eta: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(score, weight)`` of each row, sharing the mean for the canonical links."""
        if self.name == "poisson":
            mu = np.exp(np.clip(eta, -_ETA_LIMIT, _ETA_LIMIT))
            return m * (y - mu), np.maximum(m * mu, 1e-300)
        if self.link == "logit":
            mu = _expit(eta)
            return m * (y - mu), np.maximum(m * mu * (1.0 - mu), 1e-300)
        return self.score(y, eta, m), self.weight(eta, m)

    def score_weight_derivative(
        self, y: np.ndarray, eta: np.ndarray, m: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(score, weight, dweight/deta)`` of each row for the canonical links (sharing the
        mean): logit ``w = m mu (1 - mu)``, ``w' = w (1 - 2 mu)``; log ``w' = w = m mu``."""
        if not self.canonical:
            raise ValueError(f"the weight's derivative is implemented for canonical links, not {self.link!r}")
        if self.name == "poisson":
            mu = np.exp(np.clip(eta, -_ETA_LIMIT, _ETA_LIMIT))
            w = np.maximum(m * mu, 1e-300)
            return m * (y - mu), w, w
        mu = _expit(eta)
        w = np.maximum(m * mu * (1.0 - mu), 1e-300)
        return m * (y - mu), w, w * (1.0 - 2.0 * mu)

    def weight(self, eta: np.ndarray, m: np.ndarray) -> np.ndarray:
        """IRLS weight ``m (dmu/deta)^2 / V(mu)`` of each row (never exactly zero)."""
        if self.name == "poisson":
            w = m * np.exp(np.clip(eta, -_ETA_LIMIT, _ETA_LIMIT))
        elif self.link == "logit":
            mu = _expit(eta)
            w = m * mu * (1.0 - mu)
        else:
            log_mu, log_1mu = self.log_mean_terms(eta)
            w = m * np.exp(2.0 * self.log_mu_eta(eta) - log_mu - log_1mu)
        return np.maximum(w, 1e-300)

    def variance(self, mu: np.ndarray) -> np.ndarray:
        """The variance function ``V(mu)`` per trial (per unit of weight for Poisson)."""
        return mu * (1.0 - mu) if self.name == "binomial" else mu


def binomial_constant(y: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``log choose(m, k)`` with ``k = y m`` (0 for Bernoulli rows)."""
    if np.all(m == 1.0):  # Bernoulli: choose(1, k) = 1
        return np.zeros_like(np.asarray(y, dtype=float))
    k = np.round(y * m)
    return gammaln(m + 1.0) - gammaln(k + 1.0) - gammaln(m - k + 1.0)
