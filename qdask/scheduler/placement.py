"""What qdask changes in Dask's placement, through Dask's own levers.

Dask estimates a task's duration from the average of its *task prefix*
(``key_split(key)``) and places restricted tasks on the valid worker with the
smallest occupancy, which is a sum of those estimates. qdask circuit tasks are
keyed by a factor-of-two cost class (``qdask_sample_c7-<id>``), so every class
has its own learned average; before Dask has measured a class, this module
seeds its average with the cost model's estimate from the task's ``qdask``
annotation. Placement and work stealing then balance by circuit cost instead
of by task count. Nothing is set on a prefix Dask has already measured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler


def seed_prefix_durations(scheduler: Scheduler, qdask_annotations: dict[Any, dict[str, Any]]) -> int:
    """Give unmeasured prefixes of new circuit tasks the estimated duration.

    Returns how many prefixes were seeded.
    """
    seeded = 0
    for key, meta in qdask_annotations.items():
        ts = scheduler.tasks.get(key)
        if ts is None or not isinstance(meta, dict) or "est_seconds" not in meta:
            continue
        prefix = ts.prefix
        if prefix.duration_average < 0:
            prefix.duration_average = float(meta["est_seconds"])
            seeded += 1
    return seeded
