"""The record of a method-of-moments fit: GLS fixed effects and moment variance components.

Made by :mod:`mixedfx.fitting.moments`; all estimates on the data's scale.  The components'
standard errors and intervals come from a seeded parametric bootstrap of the moment estimator
(replicates made on first use and kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..data.design import Design
from ..engine.moments import CrossedDesign, MomentEstimates
from ..engine.stats import Scaling
from . import DesignFacts

#: Parametric-bootstrap replicates of the components made for their SEs unless asked otherwise.
BOOTSTRAP_REPLICATES = 50


@dataclass
class MomentsRecord(DesignFacts):
    """A fitted random-intercepts model by the method of moments (Gao & Owen) with GLS fixed effects."""

    design: Design
    engine: CrossedDesign
    estimates: MomentEstimates
    scaling: Scaling
    seed: int = 0
    cache: dict = field(default_factory=dict, repr=False)

    method = "moments"
    reml = False
    pseudo = False

    @property
    def fixef(self) -> pd.Series:
        """GLS fixed effects given the moment components."""
        return pd.Series(self.scaling.beta(self.estimates.beta), index=self.design.fixed_names, name="estimate")

    @property
    def vcov(self) -> pd.DataFrame:
        """``(X'V^{-1}X)^{-1}`` at the estimated components (their uncertainty not included)."""
        names = self.design.fixed_names
        return pd.DataFrame(self.scaling.beta_cov(self.estimates.beta_cov), index=names, columns=names)

    @property
    def se(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=self.design.fixed_names, name="se")

    @property
    def components(self) -> pd.Series:
        """Variances: one per grouping factor, then ``Residual`` (data's scale)."""
        names = [b.name for b in self.design.blocks] + ["Residual"]
        return pd.Series(self.estimates.sigma2 * self.scaling.y_scale**2, index=names, name="variance")

    @property
    def sigma(self) -> float:
        return float(np.sqrt(self.components["Residual"]))

    def bootstrap(self, replicates: int = BOOTSTRAP_REPLICATES) -> np.ndarray:
        """Parametric-bootstrap replicates of the components (data's scale), made once per count and kept."""
        key = ("bootstrap", replicates)
        if key not in self.cache:
            draws = self.engine.bootstrap_components(self.estimates.sigma2, replicates, self.seed)
            self.cache[key] = draws * self.scaling.y_scale**2
        return self.cache[key]
