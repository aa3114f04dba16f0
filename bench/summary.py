"""Shared by the benchmark scripts: fits in fresh child processes, the lme4 probe, and the summary
of repeated runs (median time, first log-likelihood, peak memory)."""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import shutil
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path


def run_in_child(target: Callable, args: tuple, timeout: float):
    """Run ``target(*args, queue)`` in a fresh (spawned) process; what it put on the queue,
    or ``"timeout"`` / ``"failed"``."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return "timeout"
    return queue.get() if not queue.empty() else "failed"


def rscript_json(script: Path, args: list[str], timeout: float) -> dict | str:
    """Run an R script with ``Rscript`` and parse the JSON object on its last line of output;
    ``"timeout"`` or ``"failed"`` instead where it does not finish or exits with an error."""
    try:
        out = subprocess.run(["Rscript", str(script), *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    if out.returncode != 0:
        return "failed"
    return json.loads(out.stdout.strip().splitlines()[-1])


def has_lme4() -> bool:
    """Whether ``Rscript`` runs and loads lme4."""
    if not shutil.which("Rscript"):
        return False
    return subprocess.run(["Rscript", "-e", "library(lme4)"], capture_output=True).returncode == 0


def summarise(runs: list[tuple[float, float, float]], base: tuple[float, float] | None):
    """``(seconds, loglik, peak MB, ratio to base, dloglik, base)`` of runs of ``(seconds, loglik, peak)``.

    ``base`` is the first tool's ``(seconds, loglik)``; None makes these runs the base.
    """
    seconds = statistics.median(r[0] for r in runs)
    loglik, peak = runs[0][1], max(r[2] for r in runs)
    base = base or (seconds, loglik)
    return seconds, loglik, peak, seconds / base[0], loglik - base[1], base


def machine_line(has_r: bool) -> str:
    """The header line: architecture, cores, Python, whether lme4 runs."""
    return (
        f"machine: {platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}; "
        f"lme4 via Rscript: {'yes' if has_r else 'no'}"
    )


def repeated(run: Callable[[], object], repeats: int):
    """``repeats`` results of ``run()``, or the first ``"timeout"``/``"failed"`` it returns."""
    runs = []
    for _ in range(repeats):
        out = run()
        if isinstance(out, str):
            return out
        runs.append(out)
    return runs
