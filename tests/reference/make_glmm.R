# GLMM references with lme4 (run from tests/reference: Rscript make_glmm.R).  Writes the data sets
# into the package (mixedfx/datasets/*.csv) and one JSON per fit: Laplace (nAGQ = 1) and adaptive
# Gauss-Hermite (nAGQ = 7, one scalar random effect) log-likelihoods, fixed effects, lme4's SEs
# (from the finite-difference Hessian over theta and beta), variance components, conditional modes.
suppressMessages({library(lme4); library(mlmRev); library(jsonlite)})
ds <- "../../mixedfx/datasets"
data(cbpp); data(VerbAgg); data(grouseticks); data(Contraception)
write.csv(cbpp, file.path(ds, "cbpp.csv"), row.names = FALSE)
write.csv(VerbAgg[, c("Anger", "Gender", "item", "resp", "id", "btype", "situ", "mode", "r2")],
          file.path(ds, "verbagg.csv"), row.names = FALSE)
write.csv(grouseticks, file.path(ds, "grouseticks.csv"), row.names = FALSE)
write.csv(Contraception, file.path(ds, "contraception.csv"), row.names = FALSE)
set.seed(20261203)  # Poisson counts with exposure: 40 clusters of 2-12 observations
g <- rep(1:40, times = sample(2:12, 40, replace = TRUE))
expo <- round(runif(length(g), 0.5, 4), 2); x <- round(rnorm(length(g)), 3)
counts <- rpois(length(g), expo * exp(0.3 + 0.5 * x + rnorm(40, 0, 0.6)[g]))
write.csv(data.frame(g = g, x = x, exposure = expo, y = counts), "poisson_exposure.csv", row.names = FALSE)
pois <- read.csv("poisson_exposure.csv")

ctl <- glmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))
save_fit <- function(name, formula, family, data, data_name, nAGQ = 1) {
  fam <- if (is.function(family)) family() else family
  t0 <- proc.time()[["elapsed"]]
  m <- glmer(formula, data = data, family = fam, nAGQ = nAGQ, control = ctl)
  secs <- proc.time()[["elapsed"]] - t0
  vc <- as.data.frame(VarCorr(m))
  re <- ranef(m, condVar = TRUE)
  ranef_out <- lapply(names(re), function(f) {
    pv <- attr(re[[f]], "postVar")
    list(levels = rownames(re[[f]]), mode = unname(as.matrix(re[[f]])),
         sd = unname(t(sapply(seq_len(dim(pv)[3]), function(k) sqrt(diag(as.matrix(pv[, , k])))))))
  })
  names(ranef_out) <- names(re)
  out <- list(data = data_name, formula = deparse1(formula), family = fam$family, link = fam$link,
              nAGQ = nAGQ, nobs = nobs(m), ngroups = as.list(ngrps(m)), loglik = as.numeric(logLik(m)),
              aic = AIC(m), bic = BIC(m), fixef = as.list(fixef(m)), se = as.list(sqrt(diag(as.matrix(vcov(m))))),
              theta = unname(getME(m, "theta")),
              varcorr = lapply(seq_len(nrow(vc)), function(i) as.list(vc[i, ])), ranef = ranef_out,
              seconds_lme4 = secs)
  write_json(out, paste0(name, ".json"), digits = NA, auto_unbox = TRUE, pretty = TRUE, na = "null")
}
save_fit("cbpp_laplace", cbind(incidence, size - incidence) ~ period + (1 | herd), binomial, cbpp, "cbpp.csv")
save_fit("cbpp_agq7", cbind(incidence, size - incidence) ~ period + (1 | herd), binomial, cbpp, "cbpp.csv", 7)
save_fit("cbpp_probit", cbind(incidence, size - incidence) ~ period + (1 | herd), binomial(link = "probit"),
         cbpp, "cbpp.csv")
save_fit("cbpp_cloglog", cbind(incidence, size - incidence) ~ period + (1 | herd), binomial(link = "cloglog"),
         cbpp, "cbpp.csv")
save_fit("verbagg_laplace", r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item), binomial, VerbAgg,
         "verbagg.csv")
save_fit("grouseticks_laplace", TICKS ~ YEAR + cHEIGHT + (1 | INDEX) + (1 | BROOD) + (1 | LOCATION), poisson,
         grouseticks, "grouseticks.csv")
save_fit("contraception_laplace", use ~ age + I(age^2) + urban + livch + (1 | district), binomial,
         Contraception, "contraception.csv")
save_fit("contraception_agq7", use ~ age + I(age^2) + urban + livch + (1 | district), binomial,
         Contraception, "contraception.csv", 7)
save_fit("contraception_slope_laplace", use ~ age + urban + livch + (1 + urban | district), binomial,
         Contraception, "contraception.csv")
save_fit("poisson_exposure_laplace", y ~ x + offset(log(exposure)) + (1 | g), poisson, pois, "poisson_exposure.csv")
save_fit("poisson_exposure_agq7", y ~ x + offset(log(exposure)) + (1 | g), poisson, pois, "poisson_exposure.csv", 7)
# MASS's bacteria (H. influenzae in 50 children, weeks 0-11): a binary response with a logical term.
data(bacteria, package = "MASS")
write.csv(bacteria, "bacteria.csv", row.names = FALSE)
bact <- read.csv("bacteria.csv", stringsAsFactors = TRUE)
save_fit("bacteria_laplace", y ~ ap + hilo + I(week > 2) + (1 | ID), binomial, bact, "bacteria.csv")
save_fit("bacteria_agq7", y ~ ap + hilo + I(week > 2) + (1 | ID), binomial, bact, "bacteria.csv", 7)
