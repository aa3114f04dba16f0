# Weighted lme4 reference (run from tests/reference with R + lme4 + jsonlite): Rscript make_weighted.R
suppressMessages(library(lme4)); library(jsonlite)
d <- read.csv('weighted_data.csv'); d$g <- factor(d$g)
out <- list()
for (reml in c(TRUE, FALSE)) {
m <- lmer(y ~ x + (x | g), data=d, weights=w, REML=reml, control=lmerControl(optimizer="bobyqa"))
vc <- as.data.frame(VarCorr(m))
out[[if (reml) "REML" else "ML"]] <- list(loglik=as.numeric(logLik(m)), fixef=as.list(fixef(m)), se=as.list(sqrt(diag(as.matrix(vcov(m))))), sigma=sigma(m), theta=as.numeric(getME(m,"theta")), varcorr=vc)
}
write_json(out, 'weighted_lme4.json', digits=NA, auto_unbox=TRUE, pretty=TRUE)
