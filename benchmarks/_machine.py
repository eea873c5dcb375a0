"""How much parallelism the machine gives right now (benchmarks on shared boxes print it)."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from typing import Any


def _spin(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t0


def _timed(fn: Callable[..., Any], args: tuple) -> tuple[int, float, float]:
    # time.monotonic is one system-wide clock on Linux: spans compare across processes.
    t0 = time.monotonic()
    fn(*args)
    return os.getpid(), t0, time.monotonic()


def speedup(fn: Callable[..., Any], args: tuple, warmup: tuple, processes: int = 2, context: str = "fork") -> float:
    """Speed-up ``processes`` concurrent ``fn(*args)`` get over one call, all in pool processes.

    Each call is timed inside its process, so sending ``args`` (pickling many
    circuits, say) stays out of the figure, and the lone call runs in the same
    conditions as the concurrent ones (a fresh copy of ``args``). ``fn(*warmup)``
    runs in each process first, so imports and first-call costs stay out too;
    ``context="spawn"`` where this process runs threads (a cluster) that fork
    does not copy safely.
    """
    with multiprocessing.get_context(context).Pool(processes) as pool:
        pool.starmap(fn, [warmup] * processes)
        _, t0, t1 = pool.apply(_timed, (fn, args))
        one = t1 - t0
        many = concurrent_span(pool, fn, [args] * processes)
    return processes * one / many


def concurrent_span(pool: Any, fn: Callable[..., Any], arglist: list[tuple]) -> float:
    """Seconds from the first start to the last end of ``fn(*args)`` for each ``args``, one per pool process.

    Each call is timed inside its process (sending the arguments stays out).
    Retried until every call ran in a process of its own, as ``pool`` has as
    many processes as ``arglist`` has calls.
    """
    for _ in range(5):
        spans = pool.starmap(_timed, [(fn, args) for args in arglist], chunksize=1)
        if len({pid for pid, _, _ in spans}) == len(arglist):
            return max(end for _, _, end in spans) - min(start for _, start, _ in spans)
    # The calls ran one after another: no concurrent figure to report.
    raise RuntimeError(f"the pool never ran {len(arglist)} calls in {len(arglist)} processes at once")


def parallel_capacity(processes: int = 2, n: int = 5_000_000) -> float:
    """Speed-up ``processes`` CPU-bound processes get over one (``processes`` on an idle machine).

    A ratio well below ``processes`` means other load shares the cores, and
    no distributed speed-up measured at the same time can exceed it.
    """
    return speedup(_spin, (n,), (1,), processes)


def turns(fns: list[Callable[[], float]], repeats: int, warmup: bool = True) -> list[list[float]]:
    """The seconds each of ``fns`` reports, from calls in turn, ``repeats`` rounds (after one warm-up call each).

    Taking turns keeps a shared machine's drifting speed (+-30% within a
    minute here) from favouring whichever peer happened to run in a fast spell.
    A call times itself, so what it must do before its clock starts (start
    a cluster) stays out.
    """
    if warmup:  # imports, qsim module load, Dask connections
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            times[i].append(fn())
    return times


def alternate(fns: list[Callable[[], object]], repeats: int) -> list[tuple[float, object]]:
    """Best time (and last value) of each of ``fns``, run in turn (see :func:`turns`)."""
    last: list[object] = [None] * len(fns)

    def timed(i: int) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            last[i] = fns[i]()
            return time.perf_counter() - t0

        return run

    times = turns([timed(i) for i in range(len(fns))], repeats)
    return [(min(t), o) for t, o in zip(times, last)]
