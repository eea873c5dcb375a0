"""Worker side of fault tolerance: called from :mod:`qdask.quantum.execute` inside circuit tasks.

Both functions do nothing outside a Dask worker (serial runs, tests).
"""

from __future__ import annotations

import logging
from typing import Any

from qdask.fault.events import ANNOTATION, WORKER_TOPIC, ChunkIsolatedError, classify_quantum_error

logger = logging.getLogger(__name__)


def _current() -> tuple[Any, Any] | None:
    """(worker, key of the running task), or None outside a task on a worker."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return None
    return worker, worker.get_current_task()


def raise_if_isolated(circuits: int) -> None:
    """Raise :class:`ChunkIsolatedError` if the scheduler marked this chunk for isolation.

    The scheduler marks a chunk of several circuits when its worker died
    while running it (the task's annotations reach the worker with the task);
    the retry then stops at once instead of risking another worker, and the
    client reruns the circuits one task each.
    """
    if circuits < 2:
        return
    current = _current()
    if current is None:
        return
    worker, key = current
    ts = worker.state.tasks.get(key)
    meta = (ts.annotations or {}).get(ANNOTATION, {}) if ts is not None else {}
    if meta.get("isolate"):
        raise ChunkIsolatedError(
            f"chunk {key!r} of {circuits} circuits lost its worker; its circuits run again one task each"
        )


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
