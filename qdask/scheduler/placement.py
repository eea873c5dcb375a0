"""What qdask changes in Dask's placement, through Dask's own levers.

All changes happen in the scheduler plugin's ``update_graph`` hook, after Dask
set priorities and restrictions and before any task is transitioned:

1. **Requirements -> restrictions.** A task annotated ``qdask={"qubits": n}``
   (and optionally ``"gpu": k``, ``"work": "state"``) gets the resource
   restrictions a circuit of that width needs (``quantum`` slot and
   ``statevector_bytes``), exactly as ``qdask.Sampler`` requests them, so
   users' own tasks are placed like qdask's.
2. **Priorities.** ``qdask={"priority": "high"}`` sets the Dask priority of
   a task from a priority class. Within one user priority and one graph
   generation, circuit tasks are ordered longest estimate first
   (largest-processing-time order keeps the makespan near the lower bound).
3. **Durations.** qdask circuit tasks are keyed by a factor-of-two cost class
   (``qdask_sample_c7-<id>``), so Dask learns an average duration per class;
   before it has measured a class, its average is seeded with the cost
   model's estimate. Placement (occupancy) and work stealing then balance by
   circuit cost instead of by task count.
4. **Best fit.** Among valid workers that would start the task equally soon
   (Dask's own objective), the one with the smallest state-vector capacity
   wins, keeping big workers free for wide circuits.
5. **Never hang.** A task whose resource request no current worker can
   satisfy fails at once with :class:`UnsatisfiableError` naming the request
   and what the cluster offers; tasks whose capable workers leave later fail
   after ``qdask.scheduler.no-worker-timeout`` (Dask's own
   ``no-workers-timeout`` mechanism, which is off by default).
"""

from __future__ import annotations

import logging
import pickle
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes

from qdask import config
from qdask.worker.discovery import GPU, QUANTUM, STATEVECTOR_BYTES, statevector_bytes

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler, TaskState, WorkerState

logger = logging.getLogger(__name__)

#: Priority classes of the contract, as Dask priorities (higher runs first).
PRIORITIES = {"low": -10, "normal": 0, "high": 10, "critical": 100}


def resolve_priority(priority: int | str) -> int:
    """A Dask priority from an int or a class name ("low", "normal", "high", "critical")."""
    if isinstance(priority, str):
        if priority not in PRIORITIES:
            raise ValueError(
                f"priority={priority!r} is not a priority class: allowed {list(PRIORITIES)} or an int. "
                "Fix: priority='high' or priority=5."
            )
        return PRIORITIES[priority]
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"priority={priority!r} must be an int or one of {list(PRIORITIES)}.")
    return priority


class UnsatisfiableError(Exception):
    """No worker of the cluster can satisfy a task's resource request."""

    def __init__(self, key: Any, request: dict[str, float], offers: list[dict[str, float]]) -> None:
        self.key, self.request, self.offers = key, request, offers
        super().__init__(key, request, offers)

    def __str__(self) -> str:
        offers = "; ".join(_fmt(o) for o in self.offers) or "no workers"
        return (
            f"task {self.key!r} requests {_fmt(self.request)} but no worker offers that "
            f"(workers offer: {offers}). Fix: lower the request (a narrower circuit), or add a worker "
            "that has it (more memory, a GPU, the qdask worker plugin)."
        )


def _fmt(resources: dict[str, float]) -> str:
    return ", ".join(
        f"{k}={format_bytes(int(v))}" if k == STATEVECTOR_BYTES else f"{k}={v:g}" for k, v in sorted(resources.items())
    ) or "nothing"


def requirements(meta: dict[str, Any]) -> dict[str, float]:
    """Resource restrictions for a user annotation ``qdask={"qubits": n, "gpu": k, "work": ...}``."""
    out: dict[str, float] = {}
    if "qubits" in meta:
        key = "worker.final-state-workspace" if meta.get("work") == "state" else "worker.sampling-workspace"
        out[QUANTUM] = 1
        out[STATEVECTOR_BYTES] = statevector_bytes(int(meta["qubits"]), config.get(key))
    if meta.get("gpu"):
        out[GPU] = float(meta["gpu"])
    return out


class Placement:
    """The placement changes above; owned by the ``qdask`` scheduler plugin."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._objective = scheduler.worker_objective
        # Private lever (DASK_NOTES): the instance attribute shadows the method.
        scheduler.worker_objective = self.worker_objective  # type: ignore[method-assign]
        if scheduler.no_workers_timeout is None:
            scheduler.no_workers_timeout = config.parse_duration(config.get("scheduler.no-worker-timeout"))

    def close(self) -> None:
        self.scheduler.__dict__.pop("worker_objective", None)

    # -- update_graph --------------------------------------------------------------
    def update_graph(self, qdask_annotations: dict[Any, Any], keys: list[Any]) -> None:
        """Apply the changes to new tasks ``keys`` (``qdask_annotations``: the annotated ones)."""
        s = self.scheduler
        for key, meta in qdask_annotations.items():
            ts = s.tasks.get(key)
            if ts is None or not isinstance(meta, dict):
                continue
            if meta.get("kind") != "circuit":  # a user's own task
                extra = requirements(meta)
                if extra:
                    ts.resource_restrictions = {**(ts.resource_restrictions or {}), **extra}
                if "priority" in meta and ts.priority:
                    ts.priority = (-resolve_priority(meta["priority"]), *ts.priority[1:])
            elif ts.priority:
                ts.priority = (ts.priority[0], ts.priority[1], -float(meta.get("est_seconds", 0.0)))
            if "est_seconds" in meta and ts.prefix.duration_average < 0:
                ts.prefix.duration_average = float(meta["est_seconds"])
        unsatisfiable = [
            key
            for key in keys
            if (ts := s.tasks.get(key)) is not None
            and ts.resource_restrictions
            and not self._satisfiable(ts.resource_restrictions)
        ]
        if unsatisfiable:
            # After update_graph has transitioned them to "no-worker".
            s.loop.add_callback(self._fail, unsatisfiable)

    def _satisfiable(self, request: dict[str, float]) -> bool:
        return any(
            all(ws.resources.get(r, 0) >= v for r, v in request.items()) for ws in self.scheduler.workers.values()
        )

    def _fail(self, keys: list[Any]) -> None:
        s = self.scheduler
        recommendations: dict[Any, str] = {}
        stimulus_id = "qdask-unsatisfiable"
        offers = [dict(ws.resources) for ws in s.workers.values()]
        for key in keys:
            ts = s.tasks.get(key)
            if ts is None or ts.state != "no-worker" or self._satisfiable(ts.resource_restrictions or {}):
                continue
            err = UnsatisfiableError(key, dict(ts.resource_restrictions or {}), offers)
            logger.warning("%s", err)
            recommendations.update(
                s.transition(key, "erred", exception=pickle.dumps(err), cause=key, stimulus_id=stimulus_id)
            )
        s.transitions(recommendations, stimulus_id=stimulus_id)

    # -- worker objective ----------------------------------------------------------
    def worker_objective(self, ts: TaskState, ws: WorkerState) -> tuple:
        base = self._objective(ts, ws)
        if ts.resource_restrictions and STATEVECTOR_BYTES in ts.resource_restrictions:
            # Dask returns (start_time, nbytes), or (actors, start_time, nbytes):
            # insert the capacity right after the start time, so that equal
            # start times prefer the smallest state-vector capacity.
            i = len(base) - 1
            return (*base[:i], ws.resources.get(STATEVECTOR_BYTES, 0.0), *base[i:])
        return base
