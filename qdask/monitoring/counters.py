"""Always-on counts of finished circuits and batches, for ``/metrics``.

:class:`CircuitCounters` is a scheduler plugin (``scheduler.plugins["qdask-circuits"]``)
installed with the :class:`~qdask.monitoring.monitor.Monitor`, whether sampling
runs or not: Prometheus counters must count from the scheduler's start, or a
scrape between two ``start_monitoring`` calls would see them go back. Its
transition hook returns at once for every transition but ``processing ->
memory``, and does O(1) work for a finished circuit task.

A circuit task (a chunk of circuits of one batch) that finishes adds its
``circuits`` to ``circuits[(backend, kind)]`` and its compute time, split
evenly over them, to the duration histogram once per circuit.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

from dask.utils import key_split
from distributed import SchedulerPlugin

from qdask.quantum.annotation import TaskAnnotation
from qdask.resources import ANNOTATION

if TYPE_CHECKING:
    from dask.typing import Key
    from distributed.scheduler import Scheduler

NAME = "qdask-circuits"
#: Batches whose progress is kept (the most recent ones).
BATCHES_KEPT = 20
#: Upper bounds (seconds) of the circuit duration histogram: 1 ms to 5 min, about x2.5 apart.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, math.inf)


def work_kind(key: Key) -> str:
    """What a circuit task computes (``sample``, ``simulate``, ...), from its key.

    Keys are ``qdask_<work>_<qubits>q_<duration>-<id>``
    (:meth:`qdask.quantum.plan.Chunk.task_name`); anything else is ``"other"``.

    Examples
    --------
    >>> work_kind("qdask_sample_16q_6.4ms-0123abcd")
    'sample'
    >>> work_kind("inc-0123abcd")
    'other'
    """
    parts = key_split(key).split("_")
    if parts[0] != "qdask":
        return "other"
    width = next((i for i, p in enumerate(parts) if i > 1 and p[:-1].isdigit() and p.endswith("q")), None)
    return "_".join(parts[1:width]) if width is not None else "other"


class CircuitCounters(SchedulerPlugin):
    """Finished circuits per backend and kind, their durations, and planned batches.

    Attributes
    ----------
    circuits : collections.Counter
        ``{(backend, kind): circuits finished}``.
    buckets : list of int
        Circuits whose duration is at most each bound of :data:`BUCKETS` (cumulative).
    duration_sum : float
        Seconds of every counted circuit.
    batches : int
        Batches planned (one ``qdask_batch_context`` call each).
    prefix_circuits : collections.Counter
        ``{task prefix: circuits finished}``.
    widths : collections.Counter
        ``{qubits: circuits finished}`` (a task's width: its widest circuit).
    batch_progress : collections.OrderedDict
        ``{batch id: {"batch", "kind", "tasks", "done", "circuits", "started", "finished"}}``
        of the last :data:`BATCHES_KEPT` batches (their tasks' ``batch``/``batch_tasks``
        annotation, set by :class:`qdask.quantum.engine.Engine`).
    """

    name = NAME
    idempotent = True

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.circuits: Counter[tuple[str, str]] = Counter()
        # { task prefix: circuits finished } (the analysis judges circuits per task by group)
        self.prefix_circuits: Counter[str] = Counter()
        # { qubits: circuits finished } (the /qdask page's width histogram)
        self.widths: Counter[int] = Counter()
        # { batch id: progress } of the last BATCHES_KEPT batches (engine annotations "batch", "batch_tasks")
        self.batch_progress: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.buckets = [0] * len(BUCKETS)
        self.duration_sum = 0.0
        self.batches = 0

    def update_graph(self, scheduler: Scheduler, *, annotations: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for key, raw in ((annotations or {}).get(ANNOTATION) or {}).items():
            ann = TaskAnnotation.from_dict(raw)
            if ann is not None and ann.batch is not None:
                self._batch(ann, key)

    def _batch(self, ann: TaskAnnotation, key: Key) -> dict[str, Any]:
        batch = str(ann.batch)
        progress = self.batch_progress.get(batch)
        if progress is None:
            progress = self.batch_progress[batch] = {
                "batch": batch, "kind": work_kind(key), "tasks": int(ann.batch_tasks or 0),
                "done": 0, "circuits": 0, "started": time.time(), "finished": None,
            }
            while len(self.batch_progress) > BATCHES_KEPT:
                self.batch_progress.popitem(last=False)
        return progress

    def transition(self, key: Key, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start != "processing" or finish != "memory":
            return
        ann = TaskAnnotation.of(self.scheduler.tasks.get(key))
        if ann is None:
            return
        n = max(int(ann.circuits or 1), 1)
        self.circuits[(str(ann.backend or "unknown"), work_kind(key))] += n
        self.prefix_circuits[key_split(key)] += n
        if isinstance(ann.qubits, int):
            self.widths[ann.qubits] += n
        if ann.batch is not None:
            progress = self._batch(ann, key)
            progress["done"] += 1
            progress["circuits"] += n
            if progress["done"] >= progress["tasks"]:
                progress["finished"] = time.time()
        compute = [s for s in kwargs.get("startstops") or () if s.get("action") == "compute"]
        if compute:
            seconds = sum(s["stop"] - s["start"] for s in compute)
            self.observe(seconds / n, n)

    def observe(self, seconds: float, count: int = 1) -> None:
        """Add ``count`` circuits of ``seconds`` each to the histogram."""
        self.duration_sum += seconds * count
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.buckets[i] += count

    @property
    def total(self) -> int:
        """Circuits finished."""
        return sum(self.circuits.values())

    @property
    def duration_count(self) -> int:
        """Circuits in the histogram."""
        return self.buckets[-1]
