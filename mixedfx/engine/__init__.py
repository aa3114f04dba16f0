"""Numerics only (numpy and scipy): sufficient statistics, batched linear algebra, deviances, optimiser."""
