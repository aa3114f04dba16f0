"""Presentation: Stata-style text, JSON, HTML, plots and the report."""
