# R's model matrices and lme4 fits for formula features (run from tests/reference: Rscript make_formulas.R).
# For each right-hand side: model.matrix on sleepstudy, on new data through the fitted terms'
# predvars (the state poly/scale/bs/ns keep), and the REML fit of Reaction ~ rhs + (1 | Subject).
suppressMessages({library(lme4); library(splines); library(jsonlite)})
d <- read.csv("../../mixedfx/datasets/sleepstudy.csv")
d$Subject <- factor(d$Subject)
new_days <- function(r) if (grepl("factor", r)) c(0, 1, 4, 9, 9) else c(-1, 0.5, 4.5, 9, 12)
rhs <- c("poly(Days, 2)", "poly(Days, 3, raw = TRUE)", "scale(Days)", "scale(Days, scale = FALSE)",
         "bs(Days, df = 3)", "bs(Days, df = 5)", "bs(Days, knots = c(3, 6), degree = 2)",
         "ns(Days, df = 3)", "ns(Days, df = 4)", "ns(Days, knots = c(2, 5))", "ns(Days, df = 3, intercept = TRUE) - 1",
         "factor(Days)", "sin(2 * pi * Days / 7)", "I(Days^2)", "log(Days + 1) + sqrt(Days)",
         "poly(Days, 2):I(Days > 4)", "Days + offset(Days)", "Days + offset(2 * Days)")
out <- list()
for (r in rhs) {
  f <- as.formula(paste("Reaction ~", r))
  new <- data.frame(Days = new_days(r), Subject = factor("308", levels = levels(d$Subject)))
  lm_fit <- lm(f, d)
  tt <- delete.response(terms(lm_fit))
  X <- model.matrix(lm_fit)
  Xnew <- model.matrix(tt, model.frame(tt, new))
  fit <- lmer(as.formula(paste("Reaction ~", r, "+ (1 | Subject)")), d, REML = TRUE,
              control = lmerControl(optimizer = "nloptwrap", optCtrl = list(ftol_abs = 1e-12, xtol_abs = 1e-10)))
  pred <- predict(fit, newdata = new, re.form = NA)
  out[[r]] <- list(new_days = new$Days, columns = colnames(X), X = unname(X[1:12, , drop = FALSE]), X_new = unname(Xnew),
                   loglik = as.numeric(logLik(fit)), fixef = as.list(fixef(fit)),
                   sigma = sigma(fit), theta = unname(getME(fit, "theta")),
                   fitted = unname(fitted(fit)[1:12]), predict_new = unname(pred))
}
out[["dot"]] <- local({
  fit <- lmer(Reaction ~ . - Subject + (1 | Subject), d, REML = TRUE)
  list(formula = "Reaction ~ . - Subject + (1 | Subject)", loglik = as.numeric(logLik(fit)), fixef = as.list(fixef(fit)))
})
write_json(list(fits = out), "sleepstudy_formulas.json", digits = NA, auto_unbox = TRUE,
           pretty = TRUE, matrix = "rowmajor")
