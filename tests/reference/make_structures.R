# Covariance-structure references with nlme (run from tests/reference: Rscript make_structures.R).
# pdIdent = Stata identity, pdCompSymm = exchangeable, pdDiag = independent, on sleepstudy.
suppressMessages({library(nlme); library(jsonlite)})
d <- read.csv("../../mixedfx/datasets/sleepstudy.csv")
d$Subject <- factor(d$Subject)
out <- list()
for (s in c("pdIdent", "pdCompSymm", "pdDiag")) for (method in c("REML", "ML")) {
  m <- lme(Reaction ~ Days, random = list(Subject = eval(call(s, ~ Days))), data = d, method = method,
           control = lmeControl(maxIter = 500, msMaxIter = 500, opt = "optim"))
  G <- unclass(as.matrix(getVarCov(m))); attributes(G) <- list(dim = dim(G))
  out[[paste(s, method, sep = "_")]] <- list(loglik = as.numeric(logLik(m)), fixef = as.list(fixef(m)),
    se = as.list(sqrt(diag(vcov(m)))), sigma = m$sigma, G = G)
}
write_json(out, "sleepstudy_structures_nlme.json", digits = NA, auto_unbox = TRUE, pretty = TRUE)
