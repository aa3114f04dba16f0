"""Empirical Bayes predictions of the random effects (BLUPs / conditional modes).

For each grouping factor: the conditional modes ``b_hat = Lambda u`` (``u`` the spherical
random effects solving the penalised least-squares problem), the conditional covariance
``sigma^2 Lambda (L L')^{-1} Lambda'`` (lme4's ``condVar``: posterior covariance given beta
and theta), and the prediction-error covariance ``Var(b_hat - b)``, which also counts the
estimation of beta (Stata's comparative standard errors, ``reses``).  Computed once per fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..results import FitRecord


@dataclass
class ConditionalEffects:
    """Per grouping factor (engine order): modes (q, m), conditional and prediction-error covariances (q, q, m)."""

    modes: list[np.ndarray]
    conditional: list[np.ndarray]
    comparative: list[np.ndarray]


def conditional_effects(result: FitRecord) -> ConditionalEffects:
    """The BLUPs and their covariances (module docstring); cached in the record."""
    if "conditional_effects" not in result.cache:
        result.cache["conditional_effects"] = _conditional_effects(result)
    return result.cache["conditional_effects"]


def _conditional_effects(result: FitRecord) -> ConditionalEffects:
    if not result.design.blocks:  # a marginal model: no random effects
        return ConditionalEffects([], [], [])
    dev = result.deviance
    u1, u2 = dev.spherical_modes(result.solution)
    s = result.scaling.y_scale
    lambdas = result.lambdas
    modes = [lambdas[0] @ u1 * s]
    if u2 is not None:
        offset = 0
        for lam, (q, m) in zip(lambdas[1:], dev.stats.rest_sizes):
            part = u2[offset : offset + q * m].reshape(m, q).T
            modes.append(lam @ part * s)
            offset += q * m
    s2 = result.sigma_lambda**2
    covs = [c * s2 for c in dev.conditional_covariances(result.solution, lambdas)]
    fills = dev.fixed_effect_fill(result.solution)
    comparative = [c + s2 * np.einsum("ia,abm,jb->ijm", lam, f, lam) for c, f, lam in zip(covs, fills, lambdas)]
    return ConditionalEffects(modes, covs, comparative)


def ranef(result: FitRecord, condvar: bool = False) -> dict[str, pd.DataFrame]:
    """Conditional modes (BLUPs) per grouping factor, one row per level.

    With ``condvar=True`` each DataFrame also has ``se_<term>`` columns: the conditional
    standard deviations (lme4's ``condVar``: posterior SDs given beta and theta).
    """
    effects = conditional_effects(result)
    out = {}
    for block, mode, cov in zip(result.design.blocks, effects.modes, effects.conditional):
        frame = pd.DataFrame(mode.T, index=pd.Index(block.levels, name=block.name), columns=block.names)
        if condvar:
            sd = np.sqrt(np.maximum(np.diagonal(cov, axis1=0, axis2=1), 0.0))
            for k, name in enumerate(block.names):
                frame[f"se_{name}"] = sd[:, k]
        out[block.name] = frame
    return out


RANEF_COLUMNS = ["group", "level", "term", "estimate", "se", "se_comparative", "n"]


def ranef_table(result: FitRecord) -> pd.DataFrame:
    """BLUPs as a long table: group, level, term, estimate, se, se_comparative, n.

    ``se`` is the conditional (posterior) SD as lme4 reports it; ``se_comparative`` is
    ``sqrt(Var(b_hat - b))`` (Stata's ``reses``); ``n`` is the cluster size.
    """
    effects = conditional_effects(result)
    frames = []
    for block, mode, cov, comp in zip(result.design.blocks, effects.modes, effects.conditional, effects.comparative):
        sd = np.sqrt(np.maximum(np.diagonal(cov, axis1=0, axis2=1), 0.0))
        sd_comp = np.sqrt(np.maximum(np.diagonal(comp, axis1=0, axis2=1), 0.0))
        sizes = block.level_counts
        for k, name in enumerate(block.names):
            columns = [block.name, block.levels, name, mode[k], sd[:, k], sd_comp[:, k], sizes]
            frames.append(pd.DataFrame(dict(zip(RANEF_COLUMNS, columns))))
    if not frames:  # a marginal model has no random effects
        return pd.DataFrame(columns=RANEF_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def conditional_covariance(result: FitRecord) -> dict[str, np.ndarray]:
    """Per factor, the stack (m, q, q) of conditional covariance matrices of the BLUPs."""
    effects = conditional_effects(result)
    return {b.name: c.transpose(2, 0, 1) for b, c in zip(result.design.blocks, effects.conditional)}


def coef_by_group(result: FitRecord) -> dict[str, pd.DataFrame]:
    """Cluster-specific coefficients ``beta + b_j`` for each factor (lme4's ``coef()``).

    Coefficients without a random effect on the factor are the fixed effects, repeated.
    """
    out = {}
    for name, frame in ranef(result).items():
        coefs = pd.DataFrame(
            np.tile(result.fixef.to_numpy(), (len(frame), 1)), index=frame.index, columns=result.fixef.index
        )
        for term in frame.columns:
            if term in coefs.columns:
                coefs[term] += frame[term]
            else:
                coefs[term] = frame[term]
        out[name] = coefs
    return out
