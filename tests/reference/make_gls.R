# Marginal (GLS) residual-structure references with nlme (run from tests/reference: Rscript make_gls.R).
# Stata's toeplitz K = nlme's corARMA(q = K) (an MA(K) process), unstructured = corSymm + varIdent.
suppressMessages({library(nlme); library(jsonlite)})
d <- read.csv("../../mixedfx/datasets/sleepstudy.csv")
d$Subject <- factor(d$Subject)
ctl <- glsControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10, msTol = 1e-10)
out <- list()
for (method in c("REML", "ML")) {
  for (q in 1:3) {
    m <- gls(Reaction ~ Days, data = d, correlation = corARMA(form = ~ Days | Subject, p = 0, q = q),
             method = method, control = ctl)
    cs <- coef(m$modelStruct$corStruct, unconstrained = FALSE)
    rho <- ARMAacf(ma = cs, lag.max = q)[-1]
    out[[paste0("toeplitz", q, "_", method)]] <- list(loglik = as.numeric(logLik(m)), fixef = as.list(coef(m)),
      se = as.list(sqrt(diag(vcov(m)))), sigma = m$sigma, rho = as.numeric(rho))
  }
  sub <- d[d$Days <= 3, ]
  m <- gls(Reaction ~ Days, data = sub, correlation = corSymm(form = ~ 1 | Subject),
           weights = varIdent(form = ~ 1 | Days), method = method, control = ctl)
  out[[paste0("unstructured4_", method)]] <- list(loglik = as.numeric(logLik(m)), fixef = as.list(coef(m)),
    se = as.list(sqrt(diag(vcov(m)))), sigma = m$sigma,
    corr = as.numeric(coef(m$modelStruct$corStruct, unconstrained = FALSE)))
}
write_json(out, "sleepstudy_gls_nlme.json", digits = NA, auto_unbox = TRUE, pretty = TRUE)
