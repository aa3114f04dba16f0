"""Shared summary of repeated benchmark runs: median time, first log-likelihood, peak memory."""

from __future__ import annotations

import statistics


def summarise(runs: list[tuple[float, float, float]], base: tuple[float, float] | None):
    """``(seconds, loglik, peak MB, ratio to base, dloglik, base)`` of runs of ``(seconds, loglik, peak)``.

    ``base`` is the first tool's ``(seconds, loglik)``; None makes these runs the base.
    """
    seconds = statistics.median(r[0] for r in runs)
    loglik, peak = runs[0][1], max(r[2] for r in runs)
    base = base or (seconds, loglik)
    return seconds, loglik, peak, seconds / base[0], loglik - base[1], base
