"""Model specification: formulas, Stata syntax, structures (no data, no numerics)."""
