# Profile-likelihood CIs from lme4 (run from tests/reference: Rscript make_profile.R).
suppressMessages({library(lme4); library(jsonlite)})
d <- read.csv("../../mixedfx/datasets/sleepstudy.csv"); d$Subject <- factor(d$Subject)
m <- lmer(Reaction ~ Days + (Days | Subject), data = d, REML = FALSE)
ci <- confint(m, method = "profile", level = 0.95)
write_json(list(formula = "Reaction ~ Days + (Days | Subject)", method = "ML", parameter = rownames(ci),
                lower = ci[, 1], upper = ci[, 2]), "sleepstudy_profile_ml.json", digits = NA, pretty = TRUE)
