# Margins references from R (lme4 1.1-31, emmeans 1.8.4): estimated marginal means, pairwise comparisons
# with multiplicity adjustments, and (computed here by the delta method, as marginaleffects does)
# predictive margins and average marginal effects.  Usage: Rscript make_margins.R, from this folder.
suppressMessages({library(lme4); library(emmeans); library(jsonlite)})
emm_options(lmer.df = "asymptotic")  # z-based, unadjusted vcov: what Stata's margins reports
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))

d <- read.csv("../../mixedfx/datasets/exam.csv", stringsAsFactors = TRUE)
d <- within(d, { gcse <- 10*normexam; lrt <- 10*standLRT; lrt_groupc <- lrt - ave(lrt, school); school <- factor(school) })
formula <- "gcse ~ lrt_groupc * sex + lrt_groupc * schgend + (lrt_groupc | school)"
m <- lmer(as.formula(formula), data = d, REML = TRUE, control = ctrl)
beta <- fixef(m); V <- as.matrix(vcov(m))
tt <- delete.response(terms(m))

emm_rows <- function(e) {
  s <- as.data.frame(summary(e, infer = c(TRUE, TRUE)))
  lapply(seq_len(nrow(s)), function(i) as.list(s[i, ]))
}
pair_rows <- function(e, adjust) {
  s <- as.data.frame(summary(pairs(e, adjust = adjust), infer = c(TRUE, TRUE)))
  lapply(seq_len(nrow(s)), function(i) as.list(s[i, ]))
}
# a margin: the mean over rows of x_i' beta for the data `nd`, with its delta-method SE
margin <- function(nd) {
  X <- model.matrix(tt, nd, contrasts.arg = attr(model.matrix(m), "contrasts"))
  J <- colMeans(X)
  c(estimate = sum(J * beta), se = sqrt(drop(t(J) %*% V %*% J)))
}
ame_continuous <- function(nd, var, h = 1e-4) {
  up <- nd; up[[var]] <- up[[var]] + h; dn <- nd; dn[[var]] <- dn[[var]] - h
  cn <- attr(model.matrix(m), "contrasts")
  J <- colMeans((model.matrix(tt, up, contrasts.arg = cn) - model.matrix(tt, dn, contrasts.arg = cn)) / (2 * h))
  c(estimate = sum(J * beta), se = sqrt(drop(t(J) %*% V %*% J)))
}
ame_factor <- function(nd, var, level, base) {
  a <- nd; a[[var]] <- factor(level, levels = levels(nd[[var]])); b <- nd; b[[var]] <- factor(base, levels = levels(nd[[var]]))
  cn <- attr(model.matrix(m), "contrasts")
  J <- colMeans(model.matrix(tt, a, contrasts.arg = cn) - model.matrix(tt, b, contrasts.arg = cn))
  c(estimate = sum(J * beta), se = sqrt(drop(t(J) %*% V %*% J)))
}
at_level <- function(var, level) { nd <- d; nd[[var]] <- factor(level, levels = levels(d[[var]])); nd }

e_sch <- emmeans(m, ~ schgend)
out <- list(
  formula = formula, method = "REML", data = "exam.csv", engine = "lme4 1.1-31 + emmeans 1.8.4",
  fixef = as.list(beta),
  emmeans_schgend = emm_rows(e_sch),
  emmeans_schgend_proportional = emm_rows(emmeans(m, ~ schgend, weights = "proportional")),
  emmeans_sex_schgend = emm_rows(emmeans(m, ~ sex * schgend)),
  emmeans_lrt_at = emm_rows(emmeans(m, ~ lrt_groupc, at = list(lrt_groupc = c(-20, 0, 20)))),
  pairs_schgend = list(none = pair_rows(e_sch, "none"), bonferroni = pair_rows(e_sch, "bonferroni"),
                       holm = pair_rows(e_sch, "holm"), sidak = pair_rows(e_sch, "sidak")),
  predictive_schgend = lapply(levels(d$schgend), function(l) c(list(schgend = l), as.list(margin(at_level("schgend", l))))),
  predictive_overall = as.list(margin(d)),
  predictive_lrt_at = lapply(c(-20, 0, 20), function(v) { nd <- d; nd$lrt_groupc <- v; c(list(lrt_groupc = v), as.list(margin(nd))) }),
  predictive_over_sex = lapply(levels(d$sex), function(l) c(list(sex = l), as.list(margin(d[d$sex == l, ])))),
  ame_lrt = as.list(ame_continuous(d, "lrt_groupc")),
  ame_lrt_over_schgend = lapply(levels(d$schgend), function(l) c(list(schgend = l), as.list(ame_continuous(d[d$schgend == l, ], "lrt_groupc")))),
  ame_sex = as.list(ame_factor(d, "sex", "M", "F")),
  ame_schgend = lapply(levels(d$schgend)[-1], function(l) c(list(schgend = l), as.list(ame_factor(d, "schgend", l, levels(d$schgend)[1]))))
)
write(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "exam_margins.json")

s <- read.csv("../../mixedfx/datasets/sleepstudy.csv")
ms <- lmer(Reaction ~ Days + I(Days^2) + (Days | Subject), data = s, REML = TRUE, control = ctrl)
es <- emmeans(ms, ~ Days, at = list(Days = 0:9))
ts <- delete.response(terms(ms)); bs <- fixef(ms); Vs <- as.matrix(vcov(ms))
h <- 1e-4
J <- colMeans((model.matrix(ts, transform(s, Days = Days + h)) - model.matrix(ts, transform(s, Days = Days - h))) / (2 * h))
sleep <- list(formula = "Reaction ~ Days + I(Days^2) + (Days | Subject)", method = "REML", data = "sleepstudy.csv",
              engine = "lme4 1.1-31 + emmeans 1.8.4", fixef = as.list(bs),
              emmeans_days = emm_rows(es),
              pairs_days_0_9_holm = pair_rows(emmeans(ms, ~ Days, at = list(Days = c(0, 3, 6, 9))), "holm"),
              ame_days = list(estimate = sum(J * bs), se = sqrt(drop(t(J) %*% Vs %*% J))))
write(toJSON(sleep, auto_unbox = TRUE, digits = NA, pretty = TRUE), "sleepstudy_margins.json")

cb <- read.csv("../../mixedfx/datasets/cbpp.csv", colClasses = c(herd = "character", period = "character"))
cb$period <- factor(cb$period); cb$herd <- factor(cb$herd)
mg <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cb, family = binomial, nAGQ = 7,
            control = glmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5)))
bg <- fixef(mg); Vg <- as.matrix(vcov(mg)); tg <- delete.response(terms(mg))
mu_margin <- function(nd) {
  X <- model.matrix(tg, nd); eta <- drop(X %*% bg); mu <- plogis(eta)
  J <- colMeans(X * (mu * (1 - mu)))
  c(estimate = mean(mu), se = sqrt(drop(t(J) %*% Vg %*% J)))
}
glmm <- list(formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)", family = "binomial", data = "cbpp.csv",
             engine = "lme4 1.1-31 (glmer, nAGQ = 7) + emmeans 1.8.4", fixef = as.list(bg),
             emmeans_period_response = emm_rows(emmeans(mg, ~ period, type = "response")),
             predictive_period_mu = lapply(levels(cb$period), function(l) { nd <- cb; nd$period <- factor(l, levels = levels(cb$period)); c(list(period = l), as.list(mu_margin(nd))) }),
             predictive_overall_mu = as.list(mu_margin(cb)))
write(toJSON(glmm, auto_unbox = TRUE, digits = NA, pretty = TRUE), "cbpp_margins.json")

# population-averaged margins: E over u ~ N(0, s^2) of plogis(eta + u), by adaptive integration
s2 <- as.numeric(VarCorr(mg)$herd)
pa <- function(f) sapply(seq_along(f), function(i) integrate(function(u) plogis(f[i] + u) * dnorm(u, 0, sqrt(s2)), -Inf, Inf, rel.tol = 1e-12)$value)
pa_slope <- function(f) sapply(seq_along(f), function(i) integrate(function(u) { p <- plogis(f[i] + u); p * (1 - p) * dnorm(u, 0, sqrt(s2)) }, -Inf, Inf, rel.tol = 1e-12)$value)
pa_margin <- function(nd) {
  X <- model.matrix(tg, nd); eta <- drop(X %*% bg)
  J <- colMeans(X * pa_slope(eta))
  c(estimate = mean(pa(eta)), se = sqrt(drop(t(J) %*% Vg %*% J)))
}
glmm$predictive_period_marginal <- lapply(levels(cb$period), function(l) { nd <- cb; nd$period <- factor(l, levels = levels(cb$period)); c(list(period = l), as.list(pa_margin(nd))) })
write(toJSON(glmm, auto_unbox = TRUE, digits = NA, pretty = TRUE), "cbpp_margins.json")
