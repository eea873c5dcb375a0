"""Worker side: run one chunk of circuit tasks and return compact results.

Measurement records travel bit-packed (``numpy.packbits``), states and
expectation values as plain numpy arrays: no Python objects per shot.
"""

from __future__ import annotations

import contextlib
import copyreg
import gc
import io
import itertools
import logging
import pickle
import select
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import cirq
import cloudpickle
import numpy as np
from dask.sizeof import sizeof

from qdask import _compat, config
from qdask.fault.worker import begin_chunk, report_quantum_error
from qdask.quantum import backends as bk
from qdask.quantum.errors import TaskFailure, raise_failures
from qdask.quantum.plan import Task
from qdask.quantum.qsim_fast import CompactCircuit, stage, tally

logger = logging.getLogger(__name__)


class QuantumTaskError(RuntimeError):
    """A chunk failed on a worker outside any one circuit; names the circuits.

    A circuit that raises does not raise here: :func:`run_task` returns its
    exception as a :class:`~qdask.quantum.errors.TaskFailure`.
    """


@dataclass
class TaskResult:
    """The outcome of one task, as sent back to the client."""

    index: int
    start: int
    backend: str
    seconds: float
    worker: str
    payload: Any  # {key: (packed bits, shape)} | ndarray
    nbytes: int
    path: str = "cirq"  # "compact": sampled from the compact form (qsim_fast), never a cirq circuit


def pack_records(
    records: dict[str, np.ndarray], binary: bool | None = None
) -> dict[str, tuple[np.ndarray, tuple[int, ...], bool]]:
    """Bit-pack 0/1 measurement records along the qubit axis (8x smaller).

    ``binary=True``: the caller knows every value is 0 or 1 (qubits measured
    by qsim), so they are not checked.
    """
    out = {}
    for key, arr in records.items():
        bits = binary or arr.size == 0 or (arr.min() >= 0 and arr.max() <= 1)
        as_uint8 = arr.view(np.uint8) if arr.dtype == np.int8 else arr.astype(np.uint8)
        out[key] = (np.packbits(as_uint8, axis=-1) if bits else arr, arr.shape, bool(bits))
    return out


def unpack_records(packed: dict[str, tuple[np.ndarray, tuple[int, ...], bool]]) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_records`: int8 arrays (repetitions, instances, qubits)."""
    out = {}
    for key, (data, shape, binary) in packed.items():
        if binary:
            out[key] = np.unpackbits(data, axis=-1, count=shape[-1]).astype(np.int8).reshape(shape)
        else:
            out[key] = np.asarray(data, dtype=np.int8).reshape(shape)
    return out


@sizeof.register(TaskResult)
def _sizeof_result(result: TaskResult) -> int:
    # Dask sizes a result to account worker memory (spilling, pausing): without
    # this it walks a chunk's results generically on the worker's event loop
    # and counts a held state vector as a few hundred bytes.
    return result.nbytes + 200


def _nbytes(payload: Any) -> int:
    if isinstance(payload, np.ndarray):
        return int(payload.nbytes)
    if isinstance(payload, dict):
        return int(sum(v[0].nbytes for v in payload.values()))
    return 0


def _compute(backend: Any, task: Task, circuit: cirq.AbstractCircuit, opts: bk.RunOptions) -> Any:
    """The task's work on ``backend``: packed records, a state, expectation values or amplitudes."""
    if task.work == "sample" and isinstance(circuit, CompactCircuit):
        records = backend.sample_compact(circuit, task.gates, task.resolver, task.repetitions, opts)
        t0 = time.perf_counter()
        packed = pack_records(records, binary=True)
        tally(pack=time.perf_counter() - t0)
        return packed
    if task.work == "sample":
        return pack_records(backend.sample(circuit, task.repetitions, opts))
    if task.work == "state":
        return backend.state(circuit, task.extra["qubit_order"], opts)
    if task.work == "expectation":
        return backend.expectation(circuit, task.extra["observables"], task.extra["qubit_order"], opts)
    if task.work == "amplitudes":
        return backend.amplitudes(circuit, task.extra["bitstrings"], task.extra["qubit_order"], opts)
    raise ValueError(f"unknown work {task.work!r}")  # pragma: no cover - plan only produces the four kinds


def run_task(task: Task, worker: str = "") -> TaskResult:
    """Run one task on its backend (in this process).

    A GPU that cannot take the circuit (no device, no CUDA build, too little
    free memory: checked before any GPU work) is a quantum error reported to
    the fault-tolerance handlers; the circuit then runs on this worker's CPU,
    and the result names the backend that ran it.

    Any other error of the backend is reported the same way and returned,
    not raised: the result's payload is a
    :class:`~qdask.quantum.errors.TaskFailure` holding the exception (its
    type kept, a note naming the circuit added), so the rest of the chunk
    still runs and comes back.
    """
    backend = bk.get_backend(task.backend)
    opts = _options(task)
    compact = isinstance(task.circuit, CompactCircuit)  # binds its parameters itself, gate by gate
    resolve = task.resolver.param_dict and not compact
    circuit = cirq.resolve_parameters(task.circuit, task.resolver) if resolve else task.circuit
    t0 = time.perf_counter()
    try:
        try:
            payload = _compute(backend, task, circuit, opts)
        except bk.GPUUnavailableError as e:
            report_quantum_error(task.index, task.backend, e)
            logger.warning("circuit %d: %s; running it on the CPU (qsim)", task.index, e)
            backend = bk.get_backend(bk.QSimBackend.name)
            payload = _compute(backend, task, circuit, opts)
    except Exception as e:
        report_quantum_error(task.index, backend.name, e)  # to the scheduler's failure handlers
        # The chunk's other circuits still come back; the client raises one
        # qdask.BatchError of the original type for the batch (qdask.quantum.errors).
        note = f"qdask: circuit {task.index} failed on backend {backend.name!r}" + (f" on worker {worker}" if worker else "")
        failure = TaskFailure.of(e, note)
        return TaskResult(task.index, task.start, backend.name, time.perf_counter() - t0, worker, failure, 0)
    seconds = time.perf_counter() - t0
    logger.debug("circuit %d: %s on %s in %.4f s", task.index, task.work, backend.name, seconds)
    path = "compact" if compact else "cirq"
    return TaskResult(task.index, task.start, backend.name, seconds, worker, payload, _nbytes(payload), path)


def _options(task: Task) -> bk.RunOptions:
    return bk.RunOptions(
        seeds=task.seeds,
        threads=task.threads,
        max_fused_gate_size=task.fused_gate_size,
        initial_state=task.extra.get("initial_state", 0),
        qsim_options=task.extra.get("qsim_options"),
        # A noisy expectation value's block of trajectories (plan._split).
        trajectories=task.repetitions if task.work == "expectation" else 1,
        first_trajectory=task.start if task.work == "expectation" else 0,
    )


def _sweep_key(task: Task) -> tuple[int, int, int, int] | None:
    """Tasks with equal keys are one circuit's expectation values at several points, on CPU qsim."""
    if task.work != "expectation" or task.backend != bk.QSimBackend.name or task.seeds is None or len(task.seeds) != 1:
        return None
    # A chunk is unpickled with one object per circuit and per program's extras.
    return id(task.circuit), id(task.extra), task.threads, task.fused_gate_size


def run_expectation_sweep(tasks: list[Task], worker: str = "") -> list[TaskResult]:
    """Tasks of one :func:`_sweep_key`: one qsimcirq sweep over their parameter points.

    This is the call a serial user makes (same values): qsimcirq then builds
    the observables and its simulator once, not once per point (~3 of ~21 ms
    per point of an 18-qubit QAOA gradient). On any error the tasks run one
    by one, which reports the failing circuit.
    """
    first = tasks[0]
    backend = bk.get_backend(first.backend)
    # qsimcirq draws one seed per point, in order: each task's one draw.
    opts = replace(_options(first), seeds=np.concatenate([t.seeds for t in tasks]))
    t0 = time.perf_counter()
    try:
        values = backend.expectation_sweep(
            first.circuit, first.extra["observables"], [t.resolver for t in tasks], first.extra["qubit_order"], opts
        )
    except Exception:
        logger.debug("circuits %s: sweep failed; running them one by one", [t.index for t in tasks], exc_info=True)
        return [run_task(t, worker) for t in tasks]
    each = (time.perf_counter() - t0) / len(tasks)
    return [TaskResult(t.index, t.start, backend.name, each, worker, v, _nbytes(v)) for t, v in zip(tasks, values)]


class HandOff:
    """Hold a worker's next chunk until an urgent result has been fetched, for at most ``limit`` seconds.

    qsim holds the GIL for a whole simulation, so a worker that starts its next
    chunk at once can neither report a finished task nor serve the client's
    fetch of the result until that simulation ends: 70-150 ms behind 20-qubit
    backlog circuits on 2 cores, against ~10 ms when the next chunk first
    sleeps (GIL released) until the worker has sent data out
    (``benchmarks/balance.py`` scenario d). Armed only after a result above
    normal priority, so batches do not pay it.
    """

    def __init__(self) -> None:
        self.deadline = 0.0
        self.sent = 0

    def arm(self, worker: Any, limit: float) -> None:
        self.deadline = time.monotonic() + limit
        self.sent = worker.transfer_outgoing_count_total

    def wait(self, worker: Any) -> None:
        while time.monotonic() < self.deadline and worker.transfer_outgoing_count_total == self.sent:
            time.sleep(0.001)
        self.deadline = 0.0


#: One per worker process: its slots share the GIL, so any chunk started after
#: an urgent result would hold up the fetch.
_HAND_OFF = HandOff()


class Inbox:
    """Let a worker's event loop take in the scheduler's messages between long circuits.

    qsim holds the GIL through each simulation, so the worker's event loop
    runs only between circuits, and it needs several turns to read and handle
    one message: each turn ends by waiting on its selector (GIL released),
    the chunk starts its next circuit, and the next turn waits for all of it.
    Behind 20-qubit backlog circuits the scheduler's ``compute-task`` for an
    urgent circuit reached the worker's state machine 40-80 ms after it was
    sent (``benchmarks/balance.py`` scenario d); steal requests wait alike.
    So after a circuit that held the GIL for ``qdask.quantum.inbox-after``
    (20 ms) or more, the chunk waits (GIL released) for one turn of the loop,
    and for more, up to :data:`TURNS`, while the scheduler's stream has data
    or the loop has callbacks due; at most :data:`LIMIT` seconds a turn. A
    turn costs well under a millisecond (1% of such a circuit at most);
    shorter circuits let the loop in often enough.
    """

    #: Turns of the event loop at most: read the frames, resume the reading
    #: coroutine, handle the message.
    TURNS = 4
    LIMIT = 0.05
    #: After our callback ran, the loop finishes its turn without contention for the GIL.
    SETTLE = 0.0002

    def __init__(self, worker: Any, held: float) -> None:
        self.loop, self.held = worker.loop, held
        comm = getattr(getattr(worker, "batched_stream", None), "comm", None)
        # TCP and TLS comms read a socket; other comms (inproc, UCX) are not polled.
        self.socket = getattr(getattr(comm, "stream", None), "socket", None)
        self.due = _compat.asyncio_ready_queue(self.loop)
        self.last = time.perf_counter()

    @classmethod
    def of(cls, worker: Any) -> Inbox | None:
        """The inbox of a chunk on ``worker``; None outside a worker or with ``inbox-after: null``."""
        after = config.get("quantum.inbox-after")
        return cls(worker, config.parse_duration(after)) if worker is not None and after is not None else None

    def after_circuit(self) -> None:
        now = time.perf_counter()
        held, self.last = now - self.last, now
        if held < self.held:
            return
        for _ in range(self.TURNS):
            if not self._turn() or not self._pending():
                break
        self.last = time.perf_counter()

    def _turn(self) -> bool:
        """Wait for the loop to run what is due now and one callback of ours; False if it did not in time."""
        done = threading.Event()
        self.loop.add_callback(done.set)
        if not done.wait(self.LIMIT):
            return False
        time.sleep(self.SETTLE)
        return True

    def _pending(self) -> bool:
        if len(self.due) > 0:
            return True
        try:
            return self.socket is not None and bool(select.select([self.socket], [], [], 0)[0])
        except (OSError, ValueError):  # closed while the worker shuts down
            self.socket = None
            return False


def run_chunk_then(finish: Callable[..., Any], jobs: list[Any], blob: bytes, *, urgent: bool = False) -> Any:
    """The Dask task of a one-chunk batch whose caller post-processes on the worker (``Engine.submit(finish=...)``).

    ``urgent`` (priority above normal): the worker's next chunk waits for the
    result to be fetched (:class:`HandOff`).
    """
    results = run_chunk(blob)
    raise_failures(results)
    out = finish(jobs, results)
    worker = _current_worker()
    if urgent and worker is not None:
        _HAND_OFF.arm(worker, config.parse_duration(config.get("quantum.result-handoff")))
    return out


def _current_worker() -> Any:
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:  # called outside a worker (tests, serial runs)
        return None


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic GC while building or running many cirq objects.

    Unpickling a chunk of 250 small circuits triggers repeated full
    collections over cirq's large object graph: measured 10x slower than with
    the collector paused (0.2 vs 2.2 ms per circuit). cirq circuits hold no
    reference cycles that need collecting within a chunk.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _pauli_sum(value: cirq.PauliSum) -> tuple[Any, tuple[Any, ...]]:
    return cirq.PauliSum.from_pauli_strings, (tuple(value),)


def _qubit_order(value: cirq.QubitOrder) -> tuple[Any, tuple[Any, ...]]:
    if value is cirq.QubitOrder.DEFAULT:
        return getattr, (cirq.QubitOrder, "DEFAULT")
    raise pickle.PicklingError("a QubitOrder other than DEFAULT holds a function: cloudpickle sends it")


# A PauliSum holds a lambda (its LinearDict's validator) that pickle cannot
# send by reference; its terms can, and rebuild the same sum. The default
# qubit order (what every expectation value or state of a caller who names
# none carries) is a lambda too, and goes by name.
_DISPATCH = {**copyreg.dispatch_table, cirq.PauliSum: _pauli_sum, cirq.QubitOrder: _qubit_order}


class Shared:
    """The circuits and observables that several chunks of a batch refer to.

    Each is pickled once and embedded as bytes in every chunk that uses it,
    and each worker loads it once: a parameter-shift gradient's 16 chunks
    pickled its circuit and its 27-term observable 16 times. Objects of one
    chunk only stay inline, where the chunk's own pickle memo serves them
    (2,000 distinct small circuits would otherwise lose it, and take longer).
    """

    def __init__(self, chunks: list[list[Task]]) -> None:
        chunks_of: Counter[int] = Counter()
        objects: dict[int, Any] = {}
        for tasks in chunks:
            here = {id(t.circuit): t.circuit for t in tasks}
            here.update((id(o), o) for t in tasks for o in t.extra.get("observables", ()))
            chunks_of.update(here.keys())
            objects.update(here)
        # Kept alive with their blobs, so no id is reused while the batch is pickled.
        self.objects = {k: objects[k] for k, n in chunks_of.items() if n > 1}
        self.blobs: dict[int, bytes] = {}

    def blob(self, obj: Any) -> bytes | None:
        key = id(obj)
        if key not in self.objects:
            return None
        blob = self.blobs.get(key)
        if blob is None:
            blob = self.blobs[key] = _fast_pickle(obj)
        return blob


def _fast_pickle(obj: Any, shared: Shared | None = None) -> bytes:
    """The standard (C) pickler with qdask's reducers; ``shared`` objects go as their blobs."""
    buffer = io.BytesIO()
    if shared is not None and shared.objects:
        _ChunkPickler(buffer, shared).dump(obj)
    else:
        pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.dispatch_table = _DISPATCH
        pickler.dump(obj)
    return buffer.getvalue()


class _ChunkPickler(pickle.Pickler):
    dispatch_table = _DISPATCH

    def __init__(self, file: io.BytesIO, shared: Shared) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.shared = shared

    def persistent_id(self, obj: Any) -> bytes | None:
        return self.shared.blob(obj)


def dump_tasks(tasks: list[Task], shared: Shared | None = None) -> bytes:
    """Serialize a chunk on the client (Dask ships bytes as a single frame).

    The standard pickler first: it runs in C, ~40% faster than cloudpickle on
    2,000 small circuits, whose Python hook is called for every object;
    observables (``cirq.PauliSum``) go as their terms, and what ``shared``
    (the batch's :class:`Shared`) holds as one embedded blob each.
    cloudpickle, as Dask would use, where that is wrong: values that cannot be
    pickled by reference (lambdas, local classes) raise, and a reference into
    ``__main__`` (a gate class defined in a notebook or script) would pickle
    but not load on a worker; cloudpickle sends those by value.
    """
    with paused_gc(), stage("pickle"):
        try:
            blob = _fast_pickle(tasks, shared)
        except (pickle.PicklingError, AttributeError, TypeError):
            blob = b"__main__"
        if b"__main__" in blob:
            blob = cloudpickle.dumps(tasks, protocol=pickle.HIGHEST_PROTOCOL)
        return blob


def load_tasks(blob: bytes) -> list[Task]:
    """Inverse of :func:`dump_tasks`, on the worker."""
    return _ChunkUnpickler(io.BytesIO(blob)).load()


class _ChunkUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: bytes) -> Any:
        return _SHARED_LOADED.get(pid)


class _Loaded:
    """The shared objects this worker loaded last, by blob: a batch's chunks share them.

    At most ``size`` objects and about ``max_bytes`` of blobs are kept (the
    newest always), so a worker does not hold a finished batch's circuits long.
    """

    def __init__(self, size: int = 16, max_bytes: int = 64 * 2**20) -> None:
        self.size, self.max_bytes = size, max_bytes
        self.objects: dict[bytes, Any] = {}
        self.nbytes = 0
        self.lock = threading.Lock()

    def get(self, blob: bytes) -> Any:
        with self.lock:
            obj = self.objects.get(blob)
        if obj is None:
            obj = pickle.loads(blob)
            with self.lock:
                if blob not in self.objects:
                    self.objects[blob] = obj
                    self.nbytes += len(blob)
                while len(self.objects) > 1 and (len(self.objects) > self.size or self.nbytes > self.max_bytes):
                    self.nbytes -= len(oldest := next(iter(self.objects)))
                    del self.objects[oldest]
        return obj


_SHARED_LOADED = _Loaded()


def run_chunk(blob: bytes) -> list[TaskResult]:
    """The Dask task: run every task of a chunk (from :func:`dump_tasks`) in order."""
    worker = _current_worker()
    if worker is not None:
        _HAND_OFF.wait(worker)
    inbox = Inbox.of(worker)
    with paused_gc(), stage("chunk"):
        with stage("decode"):
            tasks = load_tasks(blob)
        begin_chunk(len(tasks))  # fault tolerance: isolation of a retry, start report (qdask.fault)
        address = worker.address if worker is not None else ""
        results: list[TaskResult] = []
        for sweep, run in _qsim_calls(tasks):
            results.extend(run_expectation_sweep(run, address) if sweep else [run_task(run[0], address)])
            if inbox is not None:
                inbox.after_circuit()
        return results


def _qsim_calls(tasks: list[Task]) -> Iterator[tuple[bool, list[Task]]]:
    """A chunk's tasks as simulator calls: (True, points) for one sweep of expectation values, else (False, [task])."""
    for key, group in itertools.groupby(tasks, key=_sweep_key):
        if key is None:
            yield from ((False, [t]) for t in group)
        else:
            yield True, list(group)
