"""Scheduler side of elastic scaling: queued quantum work, safe retirement, scaling events.

:class:`ElasticSupport` is owned by the qdask scheduler plugin
(``scheduler.extensions["qdask"].elastic``). It holds no policy and no loop:
Dask's ``Adaptive``, running beside the cluster manager
(:class:`qdask.deploy.elastic.ElasticAdaptive`), calls its handlers each
interval and decides. What it answers needs the scheduler's state:

* **how much quantum work is queued** -- the sum of the cost model's
  ``est_seconds`` (the ``qdask`` annotation of circuit tasks) over circuit
  tasks not yet finished, and the node count that drains it within
  ``target_duration`` (never more than those tasks can keep busy);
* **which workers may leave** -- running quantum workers with nothing
  assigned, and the retirement itself, checked and started in one step of the
  event loop so no task lands on a worker between the check and Dask's
  ``retire_workers`` (which then copies the results it holds to the workers
  that stay before closing it);
* **what happened** -- ``scale_up`` / ``scale_down`` events in the plugin's
  :class:`~qdask.monitoring.events.EventStore`: the reason as ``cause``, the
  nodes added or removed as ``count`` and the node counts before and after
  as ``info["from_nodes"]`` / ``info["to_nodes"]``.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import TYPE_CHECKING, Any

from distributed.core import Status

from qdask.monitoring.events import EventStore
from qdask.quantum.annotation import TaskAnnotation
from qdask.resources import QUANTUM

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler, TaskState, WorkerState

#: Event kinds elastic scaling records.
KINDS = ("scale_up", "scale_down")


def circuit_seconds(ts: TaskState) -> float:
    """The cost model's estimate of a circuit task; 0 for any other task (or an estimate of 0)."""
    ann = TaskAnnotation.of(ts)
    return float(ann.est_seconds) if ann is not None else 0.0


def desired_nodes(
    work: float, tasks: int, target_duration: float, slots_per_node: float, fixed: int = 0
) -> int:
    """Nodes that drain ``work`` seconds of circuits within ``target_duration``.

    Parameters
    ----------
    work : float
        Estimated seconds of queued circuit work (one slot each).
    tasks : int
        Circuit tasks that make it up: a task runs on one slot, so more
        nodes than these tasks can fill would idle.
    target_duration : float
        Seconds the queue should take to drain.
    slots_per_node : float
        Quantum slots (circuits run at once) per node.
    fixed : int, default 0
        Nodes the policy keeps whatever the work (classical workers).

    Examples
    --------
    >>> desired_nodes(40.0, 100, 5.0, 2)  # 40 s of work in 100 tasks, 5 s target, 2 slots each
    4
    >>> desired_nodes(40.0, 2, 5.0, 1)  # two 20 s circuits: two nodes, not eight
    2
    >>> desired_nodes(0.0, 0, 5.0, 2, fixed=1)
    1
    """
    slots = max(slots_per_node, 1e-9)
    # The epsilon keeps 40 / 10 from rounding up to 5.
    by_work = math.ceil(work / (target_duration * slots) - 1e-9)
    return fixed + min(by_work, math.ceil(tasks / slots - 1e-9))


class ElasticSupport:
    """Serves ``qdask_elastic_*`` handlers to :class:`qdask.deploy.elastic.ElasticAdaptive`.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    events : qdask.monitoring.events.EventStore
        The plugin's store; scaling events are recorded there.
    """

    def __init__(self, scheduler: Scheduler, events: EventStore) -> None:
        self.scheduler = scheduler
        self.events = events

    def handlers(self) -> dict[str, Any]:
        """Scheduler RPC handlers (``client.scheduler.<name>(...)``)."""
        return {
            "qdask_elastic_target": self.target,
            "qdask_elastic_idle": self.idle,
            "qdask_elastic_retire": self.retire,
            "qdask_elastic_record": self.record,
            "qdask_elastic_events": self.history,
        }

    # -- sizing ------------------------------------------------------------------
    def queued_work(self) -> tuple[float, int]:
        """Estimated seconds and number of circuit tasks not finished yet.

        Circuit tasks carry resource restrictions, so Dask assigns them to a
        worker at once (``processing``, waiting there as ``constrained``);
        ``unrunnable`` holds those no worker can take now and ``queued`` any
        unrestricted ones. Reading these is O(tasks in flight), no hook needed.
        """
        s = self.scheduler
        work, count = 0.0, 0
        for ts in itertools.chain(s.unrunnable, s.queued, *(ws.processing for ws in s.workers.values())):
            seconds = circuit_seconds(ts)
            if seconds > 0:
                work += seconds
                count += 1
        return work, count

    def target(self, target_duration: float) -> dict[str, Any]:
        """Queued work, slots per node and the node count that drains it in ``target_duration``."""
        s = self.scheduler
        quantum = [ws.resources.get(QUANTUM, 0) for ws in s.workers.values()]
        slots = [q for q in quantum if q > 0]
        # No quantum worker yet (or none at all): assume the usual one slot per node.
        slots_per_node = sum(slots) / len(slots) if slots else 1.0
        fixed = len(quantum) - len(slots)
        work, tasks = self.queued_work()
        return {
            "work": work,
            "tasks": tasks,
            "slots_per_node": slots_per_node,
            "fixed": fixed,
            "desired": desired_nodes(work, tasks, target_duration, slots_per_node, fixed),
        }

    # -- scaling down --------------------------------------------------------------
    @staticmethod
    def retirable(ws: WorkerState) -> bool:
        """A running quantum worker with no task assigned.

        Retiring a busy worker would rerun its tasks elsewhere (and a result
        finishing during the retirement can be lost, see Dask's
        ``RetireWorker.done``); classical workers are not the policy's to size.
        """
        return (
            ws.status == Status.running
            and not ws.processing
            and not ws.long_running
            and ws.resources.get(QUANTUM, 0) > 0
        )

    def idle(self, target: int) -> list[Any]:
        """Names of up to ``len(workers) - target`` retirable workers, least data first."""
        n = len(self.scheduler.workers) - target
        if n <= 0:
            return []
        candidates = sorted(
            (ws for ws in self.scheduler.workers.values() if self.retirable(ws)), key=lambda ws: ws.nbytes
        )
        return [ws.name for ws in candidates[:n]]

    async def retire(self, names: list[Any]) -> dict[str, list[Any]]:
        """Retire the named workers that are still retirable.

        Returns ``{"retired": names retired, "absent": names no worker here
        has}`` (planned workers that never arrived, which the manager may drop).

        The check and ``retire_workers`` marking them ``closing_gracefully``
        run without yielding to the event loop (its replica lock is free
        unless a rebalance/replicate runs), so no new task reaches them.
        Dask then copies every result only they hold to the workers that stay
        and closes them; a worker whose data has nowhere to go is kept.
        """
        s = self.scheduler
        wanted = {str(n) for n in names}
        present = {str(ws.name) for ws in s.workers.values()}
        absent = [n for n in names if str(n) not in present]
        addresses = [ws.address for ws in s.workers.values() if str(ws.name) in wanted and self.retirable(ws)]
        if not addresses:
            return {"retired": [], "absent": absent}
        retired = await s.retire_workers(
            workers=addresses, close_workers=True, remove=True, stimulus_id=f"qdask-elastic-{time.time()}"
        )
        return {"retired": [info["name"] for info in retired.values()], "absent": absent}

    # -- events --------------------------------------------------------------------
    def record(self, kind: str, old: int, new: int, reason: str, when: float | None = None) -> dict[str, Any]:
        """Record a scaling action from ``old`` to ``new`` nodes, taken at wall-clock ``when`` (now)."""
        if kind not in KINDS:
            raise ValueError(f"record(kind={kind!r}) is not a scaling kind: allowed {KINDS}.")
        # ``count`` is the nodes added or removed, so qdask_events_total sums nodes.
        event = self.events.record(
            kind, cause=reason, count=abs(new - old), when=when, from_nodes=old, to_nodes=new
        )
        return event.to_dict()

    def history(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Scaling events (``Event.to_dict()``) at or after wall-clock time ``since``, oldest first."""
        return [e.to_dict() for e in self.events.since(since, KINDS)]
