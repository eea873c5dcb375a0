"""Closing local workers (Nannies) without the hang Dask leaves behind a failed close.

``Nanny.close`` stops the worker process, sends SIGKILL when it has not
exited within 80% of the timeout, and then waits what is left for the process
to be reaped. A loaded host can take longer than that to reap a worker with a
large heap, and the close raises ``TimeoutError`` with the Nanny left
``closing`` for good: every later close of it awaits a finish that never
comes, and ``SpecCluster`` closes it again on each ``scale`` and on
``close``, which then hang. :func:`close_workers` bounds each close and, when
one fails, kills the process again and drops the Nanny from the cluster, so
nothing waits on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

from distributed import Nanny, SpecCluster
from distributed.utils import wait_for

logger = logging.getLogger(__name__)

#: Seconds a worker gets to exit on close. Dask's default of 5 s is too short
#: on a loaded host for a worker restarted after a crash, or one with a large heap.
CLOSE_TIMEOUT = 30.0


async def close_workers(
    cluster: SpecCluster, names: Iterable[Any] | None = None, timeout: float = CLOSE_TIMEOUT
) -> list[Any]:
    """Close the Nannies ``names`` of ``cluster`` (every one when None), each within ``timeout`` s.

    They leave the cluster's plan (``worker_spec``) at once, as in Dask's
    ``scale_down``. Workers of another kind (a dask-jobqueue job), and
    clusters without Nannies, are left to the cluster's own ``scale_down``.

    Returns
    -------
    list
        The names of the workers whose close failed: their processes were
        sent SIGKILL again and they are no longer in ``cluster.workers``.
    """
    workers = getattr(cluster, "workers", None)
    if not isinstance(workers, dict):
        return []
    names = list(workers) if names is None else list(names)
    nannies = {n: w for n in names if isinstance(w := workers.get(n), Nanny)}
    for name in nannies:
        cluster.worker_spec.pop(name, None)

    async def close(name: Any, nanny: Nanny) -> Any:
        try:
            # The outer bound: a Nanny left closing by an earlier failed close awaits forever.
            await wait_for(nanny.close(timeout=timeout), 2 * timeout)
            return None
        except (asyncio.TimeoutError, TimeoutError):
            pid = nanny.pid
            if pid:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            workers.pop(name, None)
            logger.warning(
                "Worker %s did not close within %.0f s: its process %s was sent SIGKILL and the worker dropped",
                name, timeout, pid,
            )
            return name

    failed = await asyncio.gather(*(close(n, w) for n, w in nannies.items()))
    return [n for n in failed if n is not None]
