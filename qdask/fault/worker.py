"""Worker side of fault tolerance: called from :mod:`qdask.quantum.execute` inside circuit tasks.

Both functions do nothing outside a Dask worker (serial runs, tests).
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.utils import sync

from qdask.fault.events import ANNOTATION, WORKER_TOPIC, ChunkIsolatedError, classify_quantum_error

logger = logging.getLogger(__name__)

#: Seconds a chunk waits for the scheduler to acknowledge its start.
START_TIMEOUT = 30.0


def _current() -> tuple[Any, Any] | None:
    """(worker, key of the running task), or None outside a task on a worker."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return None
    return worker, worker.get_current_task()


def begin_chunk(circuits: int) -> None:
    """Called by a chunk task before its first circuit; acts only on chunks fault tolerance submitted.

    Raises :class:`ChunkIsolatedError` if the scheduler marked this chunk for
    isolation: its worker died while running it, so the retry stops at once
    instead of risking another worker, and the client reruns the circuits one
    task each. Otherwise tells the scheduler, and waits for the answer, that
    the task now runs here: when a worker dies, only the tasks that were
    running there count toward ``max_failures`` (Dask counts every task
    assigned to the worker, including those waiting for a slot; see
    :mod:`qdask.fault.scheduler`), and a circuit that kills its worker at once
    must still be counted.
    """
    current = _current()
    if current is None:
        return
    worker, key = current
    ts = worker.state.tasks.get(key)
    meta = (ts.annotations or {}).get(ANNOTATION) if ts is not None else None
    if meta is None:
        return  # submitted without fault tolerance: Dask's own accounting applies
    if meta.get("isolate") and circuits > 1:
        raise ChunkIsolatedError(
            f"chunk {key!r} of {circuits} circuits lost its worker; its circuits run again one task each"
        )
    try:
        sync(worker.loop, worker.scheduler.qdask_fault_started, key=key, worker=worker.address,
             callback_timeout=START_TIMEOUT)
    except Exception:  # the scheduler then sees it running only through the worker's heartbeat
        logger.warning("could not report the start of %r to the scheduler", key, exc_info=True)


def report_quantum_error(circuit: int, backend: str, error: BaseException) -> None:
    """Tell the scheduler a backend failed on ``circuit`` (an event, the task still errs)."""
    current = _current()
    if current is None:
        return
    worker, key = current
    msg = {
        "worker": worker.address,
        "key": str(key),
        "circuit": circuit,
        "backend": backend,
        "cause": classify_quantum_error(error),
        "detail": f"{type(error).__name__}: {error}",
    }
    try:
        worker.log_event(WORKER_TOPIC, msg)
    except Exception:  # a report must never hide the backend's own error
        logger.warning("could not report a quantum error to the scheduler", exc_info=True)
