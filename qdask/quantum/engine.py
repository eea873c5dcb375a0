"""Client side: plan a batch, submit its chunks as Dask tasks, assemble results.

Shared by :class:`qdask.Sampler` and :class:`qdask.Simulator`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import cirq
import dask
import numpy as np
from distributed import Client, Future, as_completed
from distributed.scheduler import KilledWorker

from qdask.hybrid.levels import OptimizationPolicy
from qdask.monitoring.progress import progress_bar, resolve_progress
from qdask.quantum import qsim_fast
from qdask.quantum.errors import FIX, BatchError, TaskFailure
from qdask.quantum.execute import run_chunk, run_chunk_then
from qdask.quantum.pickling import Shared, dump_tasks, paused_gc
from qdask.quantum.plan import (
    Chunk,
    ClusterView,
    Job,
    SeedSource,
    build_jobs,
    make_chunks,
    resolve_priority,
    target_chunk_seconds,
)
from qdask.quantum.task import TaskResult, unpack_records
from qdask.quantum.validate import find_unpicklable
from qdask.resources import ANNOTATION

if TYPE_CHECKING:
    from collections.abc import Iterable

    from dask.typing import Key

logger = logging.getLogger(__name__)


# -- extension points -----------------------------------------------------------
# Features (fault tolerance, Schrödinger-Feynman paths, ...) sit in a layer above
# the engine (docs/architecture.md): instead of the engine importing each of them,
# each registers here when it is imported, and the engine asks what is registered.


class BatchGuard(Protocol):
    """What the engine asks while a guarded batch runs (:class:`qdask.fault.batch.BatchGuard`)."""

    to_run: list[Job]
    annotations: dict[str, Any]

    def attach(self, sub: Submission, priority: int) -> None: ...
    def result(self, fut: Future, futures: as_completed) -> list[TaskResult]: ...
    def chunk(self, key: str) -> Chunk | None: ...
    def record(self, fut: Future, results: list[TaskResult]) -> None: ...
    def finish(self, by_index: dict[int, list[TaskResult]], errors: dict[int, BaseException]) -> None: ...


class BatchGuardFactory(Protocol):
    """Builds a guard for a batch, or returns None when its feature is off for the engine's client."""

    def __call__(self, engine: Engine, jobs: list[Job]) -> BatchGuard | None: ...


class JobRouter(Protocol):
    """Takes over the jobs it claims: one future of ``[TaskResult]`` each, instead of chunks."""

    def claims(self, job: Job, policy: OptimizationPolicy) -> bool: ...
    def submit(self, client: Client, job: Job, view: ClusterView, priority: int) -> Future: ...


_GUARDS: list[BatchGuardFactory] = []
_ROUTERS: list[JobRouter] = []


def register_batch_guard(factory: BatchGuardFactory) -> None:
    """Let ``factory`` guard every batch it returns a guard for (idempotent)."""
    if factory not in _GUARDS:
        _GUARDS.append(factory)


def register_job_router(router: JobRouter) -> None:
    """Let ``router`` run the jobs it claims (idempotent)."""
    if router not in _ROUTERS:
        _ROUTERS.append(router)


def _guard_for(engine: Engine, jobs: list[Job]) -> BatchGuard | None:
    for factory in _GUARDS:
        guard = factory(engine, jobs)
        if guard is not None:
            return guard
    return None


def _router_for(job: Job, policy: OptimizationPolicy) -> JobRouter | None:
    return next((r for r in _ROUTERS if r.claims(job, policy)), None)


def _routed(jobs: Iterable[Job], policy: OptimizationPolicy) -> tuple[list[tuple[Job, JobRouter]], list[Job]]:
    """(jobs a router claims, with it; the jobs the engine chunks)."""
    routed, rest = [], []
    for job in jobs:
        router = _router_for(job, policy)
        if router is None:
            rest.append(job)
        else:
            routed.append((job, router))
    return routed, rest

#: Threads that wait on Dask futures for the ``*_async`` methods (duet awaits them).
_WAITERS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="qdask-wait")


@dataclass
class Submission:
    """A submitted batch: its jobs, chunks and one Dask future per chunk."""

    jobs: list[Job]
    chunks: list[Chunk]
    futures: list[Future]
    circuit_bytes: int = 0  # serialized chunks sent to the workers
    priority: int = 0  # the Dask priority of its tasks
    finished: bool = False  # its one future holds finish(jobs, results) (Engine.submit)
    submitted: float = field(default_factory=time.perf_counter)
    # Fault tolerance (enable_fault_tolerance): checkpoints and poison circuits; None when off.
    guard: BatchGuard | None = None

    def release(self) -> None:
        """Drop the batch's futures (their results are collected): Dask forgets its tasks."""
        self.futures.clear()


@dataclass
class BatchStats:
    """What the last batch cost: tasks, time, and bytes sent each way."""

    circuits: int = 0
    tasks: int = 0
    seconds: float = 0.0
    circuit_bytes: int = 0
    result_bytes: int = 0
    backends: dict[str, int] = field(default_factory=dict)
    workers: dict[str, int] = field(default_factory=dict)

    @property
    def bytes_per_circuit(self) -> float:
        """Result bytes sent back per circuit."""
        return self.result_bytes / max(self.circuits, 1)

    @property
    def circuit_bytes_per_circuit(self) -> float:
        """Serialized circuit bytes sent out per circuit."""
        return self.circuit_bytes / max(self.circuits, 1)


class Engine:
    """Plans and runs batches of circuits on a Dask cluster with qdask workers.

    Parameters
    ----------
    client : distributed.Client, optional
        Defaults to the current default client.
    seed : int or numpy.random.RandomState, optional
        Makes results reproducible and equal to a serial qsim run with the
        same seed (see :class:`qdask.quantum.backends.SeedStream`).
    simulator : str, default "auto"
        Backend name, or "auto" to choose per circuit.
    priority : int or str, default "normal"
        Dask priority or class ("low", "normal", "high", "critical").
    progress : bool or None, default None
        Show a progress bar while waiting for results; None shows one in
        Jupyter only (:mod:`qdask.monitoring.progress`).
    optimization_level : {"none", "basic", "aggressive"}, optional
        What qdask may decide (``docs/hybrid.md``); default the cluster's
        (``HybridConfig(optimization_level=...)``), read at every batch.
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        seed: int | np.random.RandomState | None = None,
        simulator: str = "auto",
        priority: int | str = "normal",
        progress: bool | None = None,
        optimization_level: str | None = None,
    ) -> None:
        if client is None:
            from distributed import default_client

            client = default_client()
        self.client = client
        self.seeds = SeedSource(seed)
        self.simulator = simulator
        self.priority = resolve_priority(priority)
        self.progress = resolve_progress(progress)
        self.optimization_level = optimization_level
        self.last = BatchStats()

    def context(self) -> tuple[ClusterView, OptimizationPolicy]:
        """What the next batch is planned with, in one scheduler round trip.

        The cluster's current capabilities, and the optimization policy: this
        engine's level, else the cluster's.
        """
        try:
            ctx = self.client.sync(self.client.scheduler.qdask_batch_context)
        except Exception as e:
            if "qdask_batch_context" not in str(e):
                raise
            raise RuntimeError(
                f"the scheduler at {self.client.scheduler.address} has no qdask plugin (of this version). "
                "Fix: use qdask.QuantumCluster, or start it with `dask scheduler --preload qdask.plugins.scheduler`."
            ) from e
        level = self.optimization_level or ctx["optimization_level"]
        return ClusterView.from_rows(ctx["resources"]), OptimizationPolicy.for_level(level)

    # -- submit ------------------------------------------------------------------
    def submit(
        self,
        programs: list[cirq.AbstractCircuit],
        sweeps: list[cirq.Sweepable],
        repetitions: list[Any],
        *,
        work: str,
        simulator: str | None = None,
        priority: int | str | None = None,
        extra: list[dict[str, Any]] | None = None,
        finish: Callable[..., Any] | None = None,
    ) -> Submission:
        """Validate, plan and submit a batch; returns at once.

        ``finish(jobs, results)``, when given, runs on the worker right after
        the circuits when the whole batch is one chunk (and fault tolerance,
        which needs the raw results, is off): the chunk's future then holds
        its value and ``Submission.finished`` is True. A caller that would
        otherwise post-process in a second task saves that hop, which behind
        a backlog means waiting for another free slot (``Sampler.submit``).
        """
        view, policy = self.context()
        with paused_gc():
            jobs = build_jobs(
                programs,
                sweeps,
                repetitions,
                work=work,
                simulator=simulator or self.simulator,
                view=view,
                seeds=self.seeds,
                extra=extra,
                policy=policy,
            )
            # E.g. fault tolerance: circuits whose result is checkpointed are restored, not run.
            guard = _guard_for(self, jobs)
            todo = guard.to_run if guard is not None else jobs
            # E.g. Schrödinger-Feynman jobs are spread over prefix paths, not chunked.
            paths, todo = _routed(todo, policy)
            prio = self.priority if priority is None else resolve_priority(priority)
            chunks = make_chunks(todo, view, target_chunk_seconds(todo, view, prio), policy, ceiling=prio < 0)
        sub = Submission(jobs, chunks, [], guard=guard, priority=prio)
        sub.finished = finish is not None and guard is None and not paths and len(chunks) == 1
        # Fault tolerance may rerun these chunks circuit by circuit (qdask.fault.batch).
        qsim_fast.attach_gates([t for chunk in chunks for t in chunk.tasks])
        shared = Shared([chunk.tasks for chunk in chunks])
        # Which batch each chunk belongs to, for the /qdask page's per-batch progress.
        batch = {"batch": uuid.uuid4().hex[:12], "batch_tasks": len(chunks)}
        with dask.annotate(**(guard.annotations if guard is not None else {})):
            for chunk in chunks:
                try:
                    blob = dump_tasks(chunk.tasks, shared)
                except Exception as e:  # name the circuit and gate, not just "cannot pickle '_thread.lock'"
                    raise find_unpicklable([(t.index, t.circuit) for t in chunk.tasks], e) from e
                sub.circuit_bytes += len(blob)
                run: Callable[..., Any] = run_chunk
                if sub.finished and finish is not None:  # sub.finished implies finish
                    run = partial(run_chunk_then, finish, jobs, urgent=prio > 0)
                sub.futures.append(self._submit_chunk(run, chunk, blob, work, prio, batch=batch))
        for job, router in paths:
            sub.futures.append(router.submit(self.client, job, view, prio))
        if guard is not None:
            guard.attach(sub, prio)
        for job in jobs:
            logger.debug("circuit %d: %d qubits -> %s", job.index, job.info.num_qubits, job.backend)
        return sub

    def _submit_chunk(
        self, run: Callable[[bytes], Any], chunk: Chunk, blob: bytes, work: str, priority: int,
        *, batch: dict[str, Any] | None = None,
    ) -> Future:
        key = f"{chunk.task_name(work)}-{uuid.uuid4().hex}"  # e.g. qdask_sample_16q_6.4ms-<id> on Dask's pages
        with dask.annotate(**{ANNOTATION: replace(chunk.annotation(priority), **(batch or {})).to_dict()}):
            return self.client.submit(
                run,
                blob,
                key=key,
                resources=chunk.resources(),
                priority=priority,
                pure=False,
            )

    # -- collect -----------------------------------------------------------------
    def collect(
        self, sub: Submission, assemble: Callable[[Job, list[TaskResult]], Any] | None = None
    ) -> dict[int, list[TaskResult]]:
        """Wait for a submission; task results by job index, in repetition order.

        Circuits that fail on a worker do not stop the others: once every
        circuit finished or failed, one :class:`~qdask.quantum.errors.BatchError`
        is raised (an instance of the failures' type where they share one),
        with the finished circuits' results (``assemble(job, task_results)``
        of each, or the task results themselves) in ``.results``; with fault
        tolerance on they are checkpointed first. A chunk that fails as a
        whole (it could not be loaded on the worker) is run again one task
        per circuit, so only the circuits at fault fail.
        """
        by_index, errors = self._gather(sub)
        for index in errors:
            by_index.pop(index, None)  # the blocks of a split circuit that did finish
        for results in by_index.values():
            results.sort(key=lambda r: r.start)
        guard = sub.guard
        if guard is not None:
            # Checkpoints flushed; PoisonCircuitError when only poison circuits failed, else they join `errors`.
            guard.finish(by_index, errors)
        if errors:
            jobs = {j.index: j for j in sub.jobs}
            done = {i: (assemble(jobs[i], r) if assemble is not None else r) for i, r in by_index.items()}
            raise BatchError.of(done, errors, FIX)
        return by_index

    def _gather(self, sub: Submission) -> tuple[dict[int, list[TaskResult]], dict[int, BaseException]]:
        """Every circuit's task results or its error; then the batch's futures are released.

        Released here, not when the caller lets go of ``sub``: a BatchError's
        traceback holds the caller's frames (and ``sub``) for as long as the
        error is kept, and with them every result on the workers.
        """
        by_index: dict[int, list[TaskResult]] = defaultdict(list)
        errors: dict[int, BaseException] = {}
        stats = BatchStats(circuits=len(sub.jobs), tasks=len(sub.futures), circuit_bytes=sub.circuit_bytes)
        backends: Counter[str] = Counter()
        workers: Counter[str] = Counter()
        bar = progress_bar(len(sub.jobs), self.progress)
        guard = sub.guard
        chunk_of = {fut.key: chunk for chunk, fut in zip(sub.chunks, sub.futures)}
        try:
            futures = as_completed(sub.futures, loop=self.client.loop)  # not the default client's
            for fut, fetched in self._completed(futures, fetch=guard is None):
                # The guard may hand a chunk's circuits back one task each (added to `futures`).
                try:
                    if guard is not None:
                        results = guard.result(fut, futures)
                    else:
                        results = fetched if fetched is not None else fut.result()
                except Exception as e:
                    # A whole chunk failed (not one circuit of it: run_task returns those).
                    chunk = chunk_of.get(fut.key) or (guard.chunk(str(fut.key)) if guard is not None else None)
                    if chunk is None:
                        raise
                    if len(chunk.tasks) > 1 and not isinstance(e, KilledWorker):
                        # E.g. a gate class a worker cannot import: each circuit alone, so the rest still run.
                        for single in self._resubmit_singly(sub, chunk, futures):
                            chunk_of[single[0].key] = single[1]
                        continue
                    e.add_note(f"qdask: task {fut.key} of circuits {sorted({t.index for t in chunk.tasks})} failed")
                    errors.update((t.index, e) for t in chunk.tasks)
                    continue
                failed = [r for r in results if isinstance(r.payload, TaskFailure)]
                if failed:
                    errors.update((r.index, r.payload.error) for r in failed)
                    results = [r for r in results if not isinstance(r.payload, TaskFailure)]
                for r in results:
                    by_index[r.index].append(r)
                    stats.result_bytes += r.nbytes
                    workers[r.worker] += 1
                    if r.start == 0:
                        backends[r.backend] += 1
                        bar.update()
                if guard is not None:
                    guard.record(fut, results)  # checkpoints the circuits whose every block arrived
        finally:
            bar.close()
            sub.release()
        stats.seconds = time.perf_counter() - sub.submitted
        stats.backends, stats.workers = dict(backends), dict(workers)
        self.last = stats
        return by_index, errors

    def _completed(self, futures: as_completed, fetch: bool) -> Iterator[tuple[Future, list[TaskResult] | None]]:
        """Each future of ``futures`` as it completes, with its result where ``fetch`` got it already.

        The results of the tasks that finished meanwhile are fetched together,
        one ``gather``: fetched one ``fut.result()`` at a time they queued behind
        one another (a round trip each, and a wait for a worker whose qsim holds
        the GIL), and a batch ended with up to 20 fetches still to make, ~70 ms
        of ``benchmarks/balance.py``'s 2 s mixed batch (a) on 2 cores. Futures
        added while this runs (chunks rerun one task each) come too.
        """
        for batch in futures.batches():
            fetched = self._fetch(batch) if fetch else {}
            for fut in batch:
                yield fut, fetched.pop(fut.key, None)

    def _fetch(self, futures: list[Future]) -> dict[Key, list[TaskResult]]:
        """{key: results} of the finished ones among ``futures``, in one ``gather``; {} if that fails.

        On a failure (a result lost with its worker, whose rerun failed) each
        future is fetched alone afterwards, which raises its own error.
        """
        finished = [f for f in futures if f.status == "finished"]
        if len(finished) < 2:  # one: fut.result() makes the same round trip
            return {}
        try:
            return dict(zip([f.key for f in finished], self.client.gather(finished)))
        except Exception:
            logger.debug("gathering %d results at once failed; fetching each alone", len(finished), exc_info=True)
            return {}

    def _resubmit_singly(self, sub: Submission, chunk: Chunk, futures: as_completed) -> list[tuple[Future, Chunk]]:
        """Run each task of a failed chunk as a task of its own (added to ``futures``), at the batch's priority."""
        out = []
        for task in chunk.tasks:
            single = Chunk([task], chunk.est_seconds / len(chunk.tasks), chunk.memory, chunk.qubits, chunk.route)
            fut = self._submit_chunk(run_chunk, single, dump_tasks([task]), task.work, sub.priority)
            futures.add(fut)
            sub.futures.append(fut)  # held until the batch is collected
            out.append((fut, single))
        logger.info("a chunk of %d circuits failed as a whole; running them one task each", len(chunk.tasks))
        return out

    def collect_async(
        self, sub: Submission, assemble: Callable[[Job, list[TaskResult]], Any] | None = None
    ) -> concurrent.futures.Future:
        """:meth:`collect` in a waiter thread (for duet-based ``*_async`` methods)."""
        return _WAITERS.submit(self.collect, sub, assemble)


def metadata(results: list[TaskResult]) -> dict[str, Any]:
    """Result metadata of one circuit: backend, path, workers, seconds, bytes.

    ``path`` is "compact" where the circuit went to the worker in its compact
    form (:mod:`qdask.quantum.qsim_fast`), "cirq" where it went as itself.
    """
    return {
        "backend": results[0].backend,
        "path": results[0].path,
        "workers": sorted({r.worker for r in results}),
        "seconds": sum(r.seconds for r in results),
        "bytes": sum(r.nbytes for r in results),
        "blocks": len(results),
    }


class Result(cirq.ResultDict):
    """A ``cirq.ResultDict`` with qdask's ``metadata`` (backend, workers, seconds, bytes).

    What :meth:`qdask.Sampler.run`, ``run_sweep``, ``run_batch`` and the future of
    :meth:`qdask.Sampler.submit` give: measurements, ``histogram`` and
    ``data`` as in cirq, and where and how each circuit ran.

    Attributes
    ----------
    metadata : dict
        ``backend`` (the backend that ran it), ``path`` ("compact": sent to the
        worker in qdask's compact form, "cirq": as the circuit itself),
        ``workers`` (addresses), ``seconds`` (compute), ``bytes`` (of the
        returned measurements), ``blocks`` (tasks its repetitions were split into).

    Examples
    --------
    >>> result = sampler.run(circuit, repetitions=1000)  # doctest: +SKIP
    >>> result.histogram(key="m").most_common(2)  # doctest: +SKIP
    [(0, 503), (3, 497)]
    >>> result.metadata["backend"], result.metadata["workers"]  # doctest: +SKIP
    ('qsim', ['tcp://127.0.0.1:40213'])
    """

    def __init__(self, *, params: cirq.ParamResolver, records: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
        super().__init__(params=params, records=records)
        self.metadata = metadata


def sample_result(job: Job, results: list[TaskResult]) -> Result:
    """Reassemble the (possibly split) measurement records of one job."""
    parts = [unpack_records(r.payload) for r in results]
    if len(parts) == 1:
        records = parts[0]
    else:
        records = {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}
    return Result(params=job.resolver, records=records, metadata=metadata(results))
