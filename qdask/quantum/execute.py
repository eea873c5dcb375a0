"""Worker side: run one chunk of circuit tasks and return compact results.

The task and result types live in :mod:`qdask.quantum.task`, the chunk's wire
form in :mod:`qdask.quantum.pickling`, the GIL workarounds around a chunk in
:mod:`qdask.quantum.gil`; their names stay importable from here.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, cast

import cirq
import numpy as np

from qdask import config
from qdask.fault.worker import begin_chunk, report_quantum_error
from qdask.quantum import backends as bk
from qdask.quantum.errors import TaskFailure, raise_failures
from qdask.quantum.gil import _HAND_OFF, HandOff, Inbox, _current_worker  # noqa: F401 - HandOff re-exported
from qdask.quantum.pickling import (  # noqa: F401 - re-exported: their home until the split
    Shared,
    _Loaded,
    dump_tasks,
    load_tasks,
    paused_gc,
)
from qdask.quantum.qsim_fast import CompactCircuit, stage, tally
from qdask.quantum.task import Task, TaskResult, _nbytes, pack_records, unpack_records  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)


class QuantumTaskError(RuntimeError):
    """A chunk failed on a worker outside any one circuit; names the circuits.

    A circuit that raises does not raise here: :func:`run_task` returns its
    exception as a :class:`~qdask.quantum.errors.TaskFailure`.
    """


def _compute(backend: Any, task: Task, circuit: cirq.AbstractCircuit | CompactCircuit, opts: bk.RunOptions) -> Any:
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
        note = f"qdask: circuit {task.index} failed on backend {backend.name!r}"
        note += f" on worker {worker}" if worker else ""
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
    # CPU qsim (_sweep_key), which has expectation_sweep beyond the Backend protocol.
    backend = cast(bk.QSimBackend, bk.get_backend(first.backend))
    # qsimcirq draws one seed per point, in order: each task's one draw.
    opts = replace(_options(first), seeds=np.concatenate([t.seeds for t in tasks]))
    circuit = cast(cirq.AbstractCircuit, first.circuit)  # compact circuits are sampled only
    t0 = time.perf_counter()
    try:
        values = backend.expectation_sweep(
            circuit, first.extra["observables"], [t.resolver for t in tasks], first.extra["qubit_order"], opts
        )
    except Exception:
        logger.debug("circuits %s: sweep failed; running them one by one", [t.index for t in tasks], exc_info=True)
        return [run_task(t, worker) for t in tasks]
    each = (time.perf_counter() - t0) / len(tasks)
    return [TaskResult(t.index, t.start, backend.name, each, worker, v, _nbytes(v)) for t, v in zip(tasks, values)]


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
