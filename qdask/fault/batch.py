"""Fault tolerance of one batch: what :class:`qdask.quantum.engine.Engine` asks while it runs one.

With fault tolerance enabled (:func:`qdask.fault.client.active`), the engine
builds a :class:`BatchGuard` for each submission:

* at submit, circuits whose result is in the checkpoint store are restored
  instead of run (``to_run`` is what is left); their results come back through
  small tasks that return them (:func:`restored_results`), so every consumer of
  a submission's futures (``collect``, ``Sampler.submit``) sees one kind of future;
* at collect, each circuit's result is put in the store once all its blocks
  arrived; a chunk whose worker died (:class:`~qdask.fault.events.ChunkIsolatedError`)
  has its circuits resubmitted one task each, with one failure counted; a
  single circuit that reached ``max_failures`` (``KilledWorker``) is recorded,
  and once everything else finished the batch fails with
  :class:`~qdask.fault.events.PoisonCircuitError` naming it;
* once the client has a chunk's result, the chunk's future is released: while a
  future is held Dask recomputes its result when the only worker holding it
  dies, although the client already has it (under churn that was most of the
  work each death cost).
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import dask
from distributed import Future, as_completed
from distributed.scheduler import KilledWorker

from qdask.fault import client as fault_client
from qdask.fault.checkpoint import content_keys
from qdask.fault.events import ANNOTATION, ChunkIsolatedError, PoisonCircuitError
from qdask.quantum.engine import register_batch_guard
from qdask.quantum.execute import run_chunk
from qdask.quantum.pickling import dump_tasks
from qdask.quantum.plan import Chunk, Job
from qdask.quantum.task import TaskResult

if TYPE_CHECKING:
    from qdask.fault.client import FaultTolerance
    from qdask.quantum.engine import Engine, Submission

logger = logging.getLogger(__name__)

#: Restored bytes per restore task: each stays well under Dask's large-graph warning (10 MB).
RESTORE_TASK_BYTES = 4 * 2**20


def restored_results(results: list[TaskResult]) -> list[TaskResult]:
    """The Dask task that hands checkpointed results back as a chunk result."""
    return results


def describe(job: Job) -> str:
    """A circuit named for an error message."""
    gates = ", ".join(sorted(job.info.gate_counts))
    params = {str(k): v for k, v in job.resolver.param_dict.items()}
    return (
        f"program {job.program}, {job.info.num_qubits} qubits, {job.info.num_ops} operations "
        f"({gates}), params {params}, backend {job.backend!r}"
    )


class BatchGuard:
    """Checkpoints, poison-circuit isolation and restored results of one submission.

    Parameters
    ----------
    engine : Engine
        The engine submitting (its ``_submit_chunk`` resubmits circuits).
    ft : FaultTolerance
        The client's fault tolerance (checkpoint store, ``max_failures``).
    jobs : list of Job
        The batch, in the caller's order.
    """

    def __init__(self, engine: Engine, ft: FaultTolerance, jobs: list[Job]) -> None:
        self.engine = engine
        self.ft = ft
        self.store = ft.checkpoints
        self.jobs = {j.index: j for j in jobs}
        self.keys = content_keys(jobs)  # { job index: content key }
        self.restored: dict[int, list[TaskResult]] = {}
        for index, key in self.keys.items():
            results = self.store.get(key, index)
            if results is not None:
                self.restored[index] = results
        self.to_run = [j for j in jobs if j.index not in self.restored]
        self.work = jobs[0].work if jobs else "sample"
        self.priority = 0
        self._chunks: dict[Any, Chunk] = {}  # { future key: chunk it runs }
        self._restore_keys: set[Any] = set()
        self._blocks: dict[int, int] = defaultdict(int)  # { job index: blocks (tasks) it was split in }
        #: Annotation of the batch's chunks: the scheduler may hand them back for isolation.
        self.annotations = {ANNOTATION: {"isolatable": True}}
        self._received: dict[int, list[TaskResult]] = defaultdict(list)
        self._resubmitted: list[Future] = []  # held so Dask keeps them until collected
        self._isolated: set[Any] = set()  # keys of chunks handed back for isolation
        self.poisoned: dict[int, str] = {}

    def attach(self, sub: Submission, priority: int) -> None:
        """Map the submission's futures to their chunks and add the restore futures."""
        self.priority = priority
        for chunk, fut in zip(sub.chunks, sub.futures):
            self._chunks[fut.key] = chunk
            for task in chunk.tasks:
                self._blocks[task.index] += 1
        batch: list[TaskResult] = []
        size = 0
        for index in sorted(self.restored):
            for r in self.restored[index]:
                batch.append(r)
                size += r.nbytes
            if size >= RESTORE_TASK_BYTES:
                sub.futures.append(self._restore(batch))
                batch, size = [], 0
        if batch:
            sub.futures.append(self._restore(batch))
        if self.restored:
            logger.info("%d of %d circuits restored from %s", len(self.restored), len(self.jobs), self.store.url)

    def _restore(self, results: list[TaskResult]) -> Future:
        fut = self.engine.client.submit(
            restored_results, results, key=f"qdask_restore-{uuid.uuid4().hex}", pure=False
        )
        self._restore_keys.add(fut.key)
        return fut

    # -- collecting ----------------------------------------------------------------
    def result(self, fut: Future, ac: as_completed) -> list[TaskResult]:
        """``fut.result()``, or [] for a chunk handed back for isolation or failed for good."""
        try:
            return fut.result()
        except ChunkIsolatedError:
            self._isolate(fut.key, ac)
        except KilledWorker as e:
            chunk = self._chunks.get(fut.key)
            if chunk is None:
                raise
            for task in chunk.tasks:
                self.poisoned[task.index] = f"{describe(self.jobs[task.index])}: {e}"
        return []

    def _isolate(self, key: Any, ac: as_completed) -> None:
        chunk = self._chunks[key]
        self._isolated.add(key)
        logger.info("rerunning the %d circuits of %s one task each after its worker died", len(chunk.tasks), key)
        for task in chunk.tasks:
            job = self.jobs[task.index]
            single = Chunk(
                [task], job.est_seconds * task.repetitions / max(job.repetitions, 1), job.memory, job.info.num_qubits
            )
            # One death is already behind each circuit: it counts toward max_failures.
            with dask.annotate(**{ANNOTATION: {"failures": 1, "origin": key, "isolatable": False}}):
                fut = self.engine._submit_chunk(run_chunk, single, dump_tasks([task]), self.work, self.priority)
            self._chunks[fut.key] = single
            self._resubmitted.append(fut)
            ac.add(fut)

    def record(self, fut: Future, results: list[TaskResult]) -> None:
        """Buffer each circuit whose blocks have all arrived for the checkpoint store; release ``fut``."""
        # The results are here (and soon in the store): the cluster's copy is no longer needed.
        # An isolated chunk stays until the batch ends: the scheduler times its recovery
        # by its single-circuit tasks, and would take its release for a cancellation.
        if fut.key not in self._isolated:
            fut.release()
        if fut.key in self._restore_keys:
            return
        for r in results:
            received = self._received[r.index]
            received.append(r)
            key = self.keys.get(r.index)
            # A job is one block unless chunking split it (other paths return it whole).
            if key is not None and len(received) == self._blocks.get(r.index, 1):
                self.store.put(key, sorted(received, key=lambda b: b.start))
                del self._received[r.index]

    def chunk(self, key: Any) -> Chunk | None:
        """The chunk a future of this batch runs (resubmitted single circuits included)."""
        return self._chunks.get(key)

    def finish(self, by_index: dict[int, list[TaskResult]], errors: dict[int, BaseException] | None = None) -> None:
        """Make the batch's results durable; account for poison circuits.

        Only poison circuits failed: :class:`PoisonCircuitError`. Other
        circuits failed too (``errors``, which the caller raises as one
        :class:`qdask.BatchError`): each poison circuit joins ``errors`` as a
        :class:`PoisonCircuitError` of its own.
        """
        self.store.flush()
        self._resubmitted.clear()
        if self.poisoned:
            attempts = self.ft.config.max_failures
            if errors:
                for i, described in self.poisoned.items():
                    errors[i] = PoisonCircuitError({i: described}, attempts, {})
                    by_index.pop(i, None)
                return
            done = {i: r for i, r in by_index.items() if i not in self.poisoned}
            raise PoisonCircuitError(self.poisoned, attempts, done)


def guard_batch(engine: Engine, jobs: list[Job]) -> BatchGuard | None:
    """The engine's batch guard: one :class:`BatchGuard` per batch while the client's fault tolerance is on."""
    ft = fault_client.active(engine.client)
    return BatchGuard(engine, ft, jobs) if ft is not None else None


register_batch_guard(guard_batch)
