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
   and width (``qdask_sample_16q_13ms-<id>``: 13 ms is class 7's lower bound,
   see ``Chunk.task_name``), so Dask learns an average duration per class;
   before it has measured a class, its average is seeded with the cost
   model's estimate. Placement (occupancy) and work stealing then balance by
   circuit cost instead of by task count.
4. **Best fit.** Among valid workers that would start the task equally soon
   (Dask's own objective), the one with the smallest state-vector capacity
   wins, keeping big workers free for wide circuits.
5. **Pulled, not pushed.** Dask sends a task with resource restrictions to a
   worker at once, where it waits; a worker that turns out slower than
   estimated (another load on its core) or one that joins later gets that
   work only if stealing moves it, which Dask does late and for long tasks
   only. When *every* worker can run a circuit chunk of normal or low
   priority (a quantum worker with a slot per thread and room for two such
   states per thread, and the chunk asks for nothing else, no GPU, no device
   route), its restrictions are dropped, so Dask's own queuing
   (``worker-saturation``) keeps it on the scheduler and hands it to
   whichever worker frees a thread first. A worker that joins and could not
   run such a chunk (classical, smaller) makes the queued ones restricted
   again before it gets any, and pins those already sent to the capable
   workers. :func:`used_resources` counts pulled chunks as Dask counts
   restricted ones.
6. **Never hang.** A task whose resource request no registered worker can
   satisfy fails at once with :class:`UnsatisfiableError` naming the request
   and what the cluster offers; tasks whose capable workers leave later fail
   after ``qdask.scheduler.no-worker-timeout`` (Dask's own
   ``no-workers-timeout`` mechanism, which is off by default).
7. **Zero workers is a moment.** While *no* worker is registered (every
   worker OOM-killed at once, ``client.restart()``, a node reboot: the
   nannies bring them back within a second or two) nothing is judged
   unsatisfiable: tasks wait in ``no-worker`` up to that same timeout for
   workers to return, and a client planning a batch
   (:meth:`Placement.wait_for_workers`) waits as long for the first one.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes
from distributed.core import Status

from qdask import _compat, config
from qdask.quantum.annotation import TaskAnnotation
from qdask.resources import ANNOTATION, GPU, QUANTUM, STATEVECTOR_BYTES, statevector_bytes

if TYPE_CHECKING:
    from distributed.scheduler import Recs, Scheduler, TaskState, WorkerState

logger = logging.getLogger(__name__)

#: Key, in a pulled chunk's ``qdask`` annotation, of the restrictions it was relieved of.
PULLED = "pulled"

#: Pulled chunks recorded before the first pass drops those no longer waiting.
PRUNE_AT = 4096

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
        #: Chunks whose restrictions were dropped (rule 5): key -> the restrictions.
        self.pulled: dict[Any, dict[str, float]] = {}
        # Twice what the last pass kept: pruning stays amortized O(1) per chunk
        # even when thousands of chunks wait at once.
        self._prune_at = PRUNE_AT
        self._objective = _compat.shadow_worker_objective(scheduler, self.worker_objective)
        if scheduler.no_workers_timeout is None:
            timeout = config.parse_duration(config.get("scheduler.no-worker-timeout"))
            _compat.set_no_workers_timeout(scheduler, timeout)

    def close(self) -> None:
        _compat.restore_worker_objective(self.scheduler)

    # -- update_graph --------------------------------------------------------------
    def update_graph(self, qdask_annotations: dict[Any, Any], keys: list[Any]) -> None:
        """Apply the changes to new tasks ``keys`` (``qdask_annotations``: the annotated ones)."""
        s = self.scheduler
        for key, meta in qdask_annotations.items():
            ts = s.tasks.get(key)
            if ts is None or not isinstance(meta, dict):
                continue
            ann = TaskAnnotation.from_dict(meta)
            if ann is None:  # a user's own task
                extra = requirements(meta)
                if extra:
                    ts.resource_restrictions = {**(ts.resource_restrictions or {}), **extra}
                if "priority" in meta and ts.priority:
                    ts.priority = _compat.with_priority(ts.priority, user=resolve_priority(meta["priority"]))
            else:
                if ts.priority:
                    ts.priority = _compat.with_priority(ts.priority, order=-float(ann.est_seconds))
                request = ts.resource_restrictions
                if request is not None and self._pullable(request, ann):
                    if len(self.pulled) >= self._prune_at:
                        self._prune()
                    self.pulled[key] = request
                    ts.resource_restrictions = None
                    # Kept on the task for used_resources (a new dict: a graph's tasks share one).
                    ts.annotations = {**(ts.annotations or {}), ANNOTATION: {**meta, PULLED: request}}
            if "est_seconds" in meta and ts.prefix.duration_average < 0:
                ts.prefix.duration_average = float(meta["est_seconds"])
        if not s.workers:
            return  # rule 7: judged by Dask's no-workers-timeout, not against an empty cluster
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

    def _prune(self) -> None:
        s = self.scheduler
        self.pulled = {
            k: r for k, r in self.pulled.items() if k in s.tasks and s.tasks[k].state in ("queued", "processing")
        }
        self._prune_at = max(PRUNE_AT, 2 * len(self.pulled))

    def _pullable(self, request: dict[str, float] | None, ann: TaskAnnotation) -> bool:
        """Rule 5: every worker can run this chunk on every thread, and it asks for nothing else."""
        if not request or set(request) - {QUANTUM, STATEVECTOR_BYTES} or ann.route:
            return False
        if ann.priority > 0:
            # Urgent work goes straight to a worker's queue, where it runs next;
            # from the scheduler's queue it would wait for a slot behind the
            # chunk each worker already holds.
            return False
        workers = self.scheduler.workers.values()
        return bool(workers) and all(_fits_every_thread(ws, request) for ws in workers)

    def add_worker(self, address: str) -> None:
        """Rule 5 for a joining worker: pulled chunks it could not run get restricted again.

        Runs before Dask offers the worker any queued task. Queued chunks get
        their resource restrictions back (and go to capable workers at once);
        chunks already sent to a worker keep their accounting and are only
        pinned to the capable workers, so stealing cannot move them over.
        """
        s = self.scheduler
        ws = s.workers.get(address)
        self._prune()
        if ws is None or all(_fits_every_thread(ws, r) for r in self.pulled.values()):
            return
        logger.info(
            "worker %s cannot run every pulled circuit chunk: %d chunk(s) restricted again", address, len(self.pulled)
        )
        capable = {a for a in s.workers if a != address}
        queued = []
        for key, request in self.pulled.items():
            ts = s.tasks[key]
            if ts.state == "queued":
                ts.resource_restrictions = request
                queued.append(key)
            else:
                ts.worker_restrictions = {a for a in capable if _fits_every_thread(s.workers[a], request)}
        # queued -> released -> waiting -> a capable worker (or no-worker).
        s.transitions(dict.fromkeys(queued, "released"), stimulus_id=f"qdask-restrict-{address}")
        self.pulled = {}

    def _satisfiable(self, request: dict[str, float]) -> bool:
        return any(
            all(ws.resources.get(r, 0) >= v for r, v in request.items()) for ws in self.scheduler.workers.values()
        )

    def _fail(self, keys: list[Any]) -> None:
        s = self.scheduler
        if not s.workers:
            return  # every worker left since update_graph: rule 7
        recommendations: Recs = {}
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

    async def wait_for_workers(self) -> None:
        """Rule 7 for a client planning a batch: while no worker is registered, wait for one.

        Waits at most the scheduler's ``no-workers-timeout``; returns either way
        (the caller then sees the cluster as it is, and says what is missing).
        """
        s = self.scheduler
        if s.workers:
            return
        timeout = s.no_workers_timeout or 0.0
        deadline = time.monotonic() + timeout
        logger.info("no worker registered: a batch waits up to %.1f s for workers to return", timeout)
        while not s.workers and time.monotonic() < deadline and s.status == Status.running:
            await asyncio.sleep(0.05)

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


def used_resources(ws: WorkerState) -> dict[str, float]:
    """Resources in use on ``ws``: Dask's accounting plus the requests of the pulled chunks it holds (rule 5).

    Dask counts only restricted tasks; a pulled chunk sent to the worker
    holds its slot and state all the same.
    """
    used = dict(ws.used_resources)
    for ts in ws.processing:
        request = ((ts.annotations or {}).get(ANNOTATION) or {}).get(PULLED)
        for r, v in (request or {}).items():
            used[r] = used.get(r, 0.0) + v
    return used


def _fits_every_thread(ws: WorkerState, request: dict[str, float]) -> bool:
    # Unrestricted, a worker may run one chunk per thread; twice the memory
    # leaves room for a restricted wide circuit that resources do not see.
    threads = max(ws.nthreads, 1)
    return (
        ws.resources.get(QUANTUM, 0) >= threads
        and ws.resources.get(STATEVECTOR_BYTES, 0) >= 2 * threads * request.get(STATEVECTOR_BYTES, 0)
    )


def worker_resources(ws: WorkerState) -> dict[str, float]:
    """Capacity and use of one worker's qdask resources.

    The use counts every circuit task the scheduler assigned to the worker,
    including those waiting there for a slot (Dask sends restricted tasks at
    once; pulled chunks, see :func:`qdask.scheduler.placement.used_resources`,
    up to ``worker-saturation``), so "busy" is the use capped at the capacity
    and the rest is the worker's queue.
    """
    res, used = ws.resources, used_resources(ws)
    slots = res.get(QUANTUM, 0.0)
    used_slots = used.get(QUANTUM, 0.0)
    sv = res.get(STATEVECTOR_BYTES, 0.0)
    gpus = res.get(GPU, 0.0)
    return {
        "quantum_slots": slots,
        "quantum_busy": min(used_slots, slots),
        "quantum_queued": max(used_slots - slots, 0.0),
        "statevector_bytes": sv,
        "statevector_used": min(used.get(STATEVECTOR_BYTES, 0.0), sv),
        "gpus": gpus,
        "gpus_busy": min(used.get(GPU, 0.0), gpus),
    }
