"""How much parallelism the machine gives right now (benchmarks on shared boxes print it)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any


def _spin(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t0


def speedup(fn: Callable[..., Any], args: tuple, warmup: tuple, processes: int = 2, context: str = "fork") -> float:
    """Speed-up ``processes`` concurrent ``fn(*args)`` get over one call in this process.

    ``fn(*warmup)`` runs in each pool process first, so imports and first-call
    costs stay out of the timing; ``context="spawn"`` where this process runs
    threads (a cluster) that fork does not copy safely.
    """
    t0 = time.perf_counter()
    fn(*args)
    one = time.perf_counter() - t0
    with multiprocessing.get_context(context).Pool(processes) as pool:
        pool.starmap(fn, [warmup] * processes)
        t0 = time.perf_counter()
        pool.starmap(fn, [args] * processes)
        many = time.perf_counter() - t0
    return processes * one / many


def parallel_capacity(processes: int = 2, n: int = 5_000_000) -> float:
    """Speed-up ``processes`` CPU-bound processes get over one (``processes`` on an idle machine).

    A ratio well below ``processes`` means other load shares the cores, and
    no distributed speed-up measured at the same time can exceed it.
    """
    return speedup(_spin, (n,), (1,), processes)
