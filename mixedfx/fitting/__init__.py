"""Fitting: the pipeline of stages from a specification and data to a fitted record."""
