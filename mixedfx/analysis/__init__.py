"""Analyses of fitted records: tests, variance components, degrees of freedom, intervals, predictions."""
