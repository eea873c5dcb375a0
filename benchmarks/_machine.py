"""How much parallelism the machine gives right now (benchmarks on shared boxes print it)."""

from __future__ import annotations

import multiprocessing
import time


def _spin(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t0


def parallel_capacity(processes: int = 2, n: int = 5_000_000) -> float:
    """Speed-up ``processes`` CPU-bound processes get over one (``processes`` on an idle machine).

    A ratio well below ``processes`` means other load shares the cores, and
    no distributed speed-up measured at the same time can exceed it.
    """
    one = _spin(n)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        t0 = time.perf_counter()
        pool.map(_spin, [n] * processes)
        many = time.perf_counter() - t0
    # Pool start-up is not part of the work: time the map only, one process's share.
    return processes * one / many
