"""A worked binary example: contraceptive use of 1,934 women in 60 districts of Bangladesh.

    python examples/binary.py [OUTPUT_DIR]        # default: docs/ (writes binary.md, img/binary_*.png)

The 1988 Bangladesh Fertility Survey (R's ``mlmRev::Contraception``): does a woman use
contraception (``use``), by age (centred), urban residence and number of living children,
with a random intercept for her district?  Stata: ``melogit use c.age##c.age i.urban i.livch
|| district:, or``; lme4: ``glmer(use ~ age + I(age^2) + urban + livch + (1 | district),
family = binomial, nAGQ = 7)``.  The document shows the Stata table with odds ratios, Laplace
against 7-point adaptive quadrature, the LR test against the logistic model, the latent ICC,
the districts' conditional modes with their SDs (caterpillar plot) and predicted probabilities
(conditional, for a district of average effect, and population-averaged) by age.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import mixedfx

DIGITS = 5


def block(text: str) -> list[str]:
    return ["```", str(text), "```", ""]


def caterpillar(modes: pd.DataFrame, path: Path) -> str:
    """Conditional modes of the district effects with +-1.96 conditional SDs, ranked."""
    ranked = modes.sort_values("(Intercept)")
    est, sd = ranked["(Intercept)"].to_numpy(), ranked["se((Intercept))"].to_numpy()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar(np.arange(est.size), est, yerr=1.96 * sd, fmt="o", ms=3, lw=0.8)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("district (ranked)")
    ax.set_ylabel("conditional mode of u (log odds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path.name


def probability_curves(fit, data: pd.DataFrame, path: Path) -> str:
    """Predicted probability of use by age for urban women with one child: a district with
    u = 0 (``fixed``) and averaged over districts (``marginal``)."""
    ages = np.linspace(data["age"].min(), data["age"].max(), 40)
    grid = pd.DataFrame({"age": ages, "urban": "Y", "livch": "1", "district": data["district"].iloc[0]})
    fig, ax = plt.subplots(figsize=(6, 4))
    for level, style in [("fixed", "-"), ("marginal", "--")]:
        pred = fit.predict(grid, kind="response", level=level)["prediction"]
        ax.plot(ages, pred, style, label=f"{level} (u = 0)" if level == "fixed" else "population-averaged")
    ax.set_xlabel("age (centred, years)")
    ax.set_ylabel("P(use)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path.name


def main(out: Path) -> None:
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    data = mixedfx.datasets.load("contraception")
    md = ["# A binary outcome: contraceptive use in Bangladesh", "", __doc__.split("\n\n")[2].strip(), ""]

    command = "melogit use c.age##c.age i.urban i.livch || district:, or"
    agq = mixedfx.mixed(command, data)
    md += [f"Stata: `{command}` (7-point adaptive quadrature, Stata's default):", ""]
    md += block(agq.summary(digits=DIGITS))

    formula = "use ~ age + I(age^2) + urban + livch + (1 | district)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the documented fits must be clean
        laplace = mixedfx.fit(formula, data, family="binomial")
        quadrature = mixedfx.fit(formula, data, family="binomial", nagq=7)
    md += [
        f'The same model as an lme4 formula, `mixedfx.fit({formula!r}, data, family="binomial", nagq=k)`: '
        "the Laplace approximation (`nagq=1`, glmer's default) against 7-point quadrature:",
        "",
    ]
    table = pd.DataFrame(
        {
            "Laplace": [*laplace.fixef, laplace.varcorr["vcov"].iloc[0], laplace.loglik],
            "AGQ 7": [*quadrature.fixef, quadrature.varcorr["vcov"].iloc[0], quadrature.loglik],
        },
        index=[*laplace.fixef.index, "var(district)", "log likelihood"],
    )
    md += block(table.to_string(float_format=lambda x: f"{x:.{DIGITS + 2}g}"))

    lr = quadrature.lrtest_vs_glm()
    md += ["The district variance against the logistic model without it, and the latent-response ICC:", ""]
    md += block(f"{lr.label}: {lr.kind} = {lr.statistic:.2f}, p = {lr.pvalue:.3g}")
    md += block(quadrature.icc().to_string(float_format=lambda x: f"{x:.{DIGITS}g}"))

    modes = quadrature.ranef()["district"]
    name = caterpillar(modes, img / "binary_caterpillar.png")
    md += ["Districts ranked by their conditional modes, with 95% intervals from the conditional SDs:", ""]
    md += [f"![caterpillar](img/{name})", ""]
    name = probability_curves(quadrature, data, img / "binary_probability.png")
    md += [
        "Predicted probability of use by age (urban, one child): for a district of average effect and "
        "averaged over the districts' distribution (flatter, as population-averaged effects are):",
        "",
        f"![probability](img/{name})",
        "",
    ]
    (out / "binary.md").write_text("\n".join(md))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "docs")
