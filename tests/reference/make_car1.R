# Random intercept + continuous-time AR(1) (nlme corExp = Stata's exponential: rho = exp(-1/range))
# on the asian children, the repeated visit of child 4326 dropped (run from tests/reference: Rscript make_car1.R).
suppressMessages({library(nlme); library(jsonlite)})
d <- read.csv("../../mixedfx/datasets/asian.csv")
d <- d[!duplicated(d[, c("id", "age")]), ]
d$girl <- as.numeric(d$gender == 2); d$age_c <- d$age - 1; d$age_sp <- pmax(d$age_c, 0); d$age_c_girl <- d$age_c * d$girl; d$age_sp_girl <- d$age_sp * d$girl
ctl <- lmeControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10, msTol = 1e-10)
cases <- list(linear_REML = list(f = weight ~ age, method = "REML"),
              spline_ML = list(f = weight ~ age_c + age_sp + girl + age_c_girl + age_sp_girl, method = "ML"))
out <- list()
for (name in names(cases)) {
  case <- cases[[name]]
  m <- lme(case$f, random = ~ 1 | id, correlation = corExp(form = ~ age | id), data = d,
           method = case$method, control = ctl)
  range <- coef(m$modelStruct$corStruct, unconstrained = FALSE)[["range"]]
  out[[name]] <- list(formula = deparse(case$f), method = case$method, nobs = nrow(d),
    loglik = as.numeric(logLik(m)), fixef = as.list(fixef(m)), se = as.list(sqrt(diag(vcov(m)))),
    sigma = m$sigma, var_id = as.numeric(getVarCov(m)[1, 1]), rho = exp(-1 / range))
}
write_json(out, "asian_car1_nlme.json", digits = NA, auto_unbox = TRUE, pretty = TRUE)
