"""Failure events as the client's handlers receive them, and the errors of fault tolerance.

The scheduler side (:mod:`qdask.fault.scheduler`) publishes one plain dict per
failure or recovery on the Dask event topic :data:`TOPIC`; the client side
(:mod:`qdask.fault.handlers`) turns each into one of the frozen dataclasses
below with :func:`from_message`. This module is imported by workers too
(:mod:`qdask.fault.worker`), so it stays light: no fsspec, no cirq.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

#: Dask event topic the scheduler publishes failures and recoveries on.
TOPIC = "qdask-failures"
#: Topic workers report quantum errors on (the scheduler republishes them on :data:`TOPIC`).
WORKER_TOPIC = "qdask-quantum-errors"
#: Task annotation fault tolerance sets or reads (``ts.annotations["qdask_fault"]``).
ANNOTATION = "qdask_fault"

#: Exception classes whose failure is a failed comm (the ``repr`` a worker reports starts with one).
NETWORK_EXCEPTIONS = (
    "CommClosedError",
    "StreamClosedError",
    "ConnectionError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "ConnectionAbortedError",
    "BrokenPipeError",
    "TimeoutError",
    "OSError",  # distributed's connect() raises a plain OSError("Timed out trying to connect ...")
)


class ChunkIsolatedError(RuntimeError):
    """A chunk of circuits lost its worker; its circuits run again one task each.

    Raised on the worker by the retry of a chunk that fault tolerance marked
    (see ``docs/fault-tolerance.md``, "Poison circuits"); the client's batch
    resubmits the circuits singly, so a circuit that kills its worker is
    found and the others complete.
    """


class PoisonCircuitError(RuntimeError):
    """Circuits of a batch killed their worker on every attempt; the rest completed.

    Attributes
    ----------
    circuits : dict
        ``{circuit index in the batch: description}`` of the failed circuits.
    results : dict
        ``{circuit index: list of TaskResult}`` of every circuit that completed.
    """

    def __init__(self, circuits: dict[int, str], attempts: int, results: dict[int, Any]) -> None:
        self.circuits = circuits
        self.attempts = attempts
        self.results = results
        named = "; ".join(f"circuit {i}: {d}" for i, d in sorted(circuits.items()))
        super().__init__(
            f"{len(circuits)} circuit(s) killed their worker on each of {attempts} attempt(s) and failed: "
            f"{named}. The other {len(results)} circuit(s) completed (their results are in .results and "
            "in the checkpoint store). Fix: remove or repair the circuit(s); a custom gate whose unitary "
            "crashes the process is the usual cause."
        )


@dataclass(frozen=True)
class RecoveryPlan:
    """What the scheduler did about a worker's death, at detection time.

    Attributes
    ----------
    mode : {"automatic", "manual"}
        ``automatic`` rescheduled the work ahead of new work; ``manual`` holds it.
    rescheduled : tuple of str
        Tasks that were assigned to the worker (running or waiting for a slot there)
        and run elsewhere.
    interrupted : tuple of str
        The rescheduled tasks that were running (their progress was lost); the
        recovery time waits for them and for ``lost_results``.
    held : tuple of str
        Tasks held until ``FaultTolerance.resubmit`` or ``cancel`` (manual mode).
    lost_results : tuple of str
        Finished results whose only copy was on the worker (recomputed if still wanted).
    isolated : tuple of str
        Chunks whose circuits will run again one task each (poison-circuit search).
    failed : tuple of str
        Tasks that reached ``max_failures`` worker deaths and failed.
    """

    mode: str = "automatic"
    rescheduled: tuple[str, ...] = ()
    interrupted: tuple[str, ...] = ()
    held: tuple[str, ...] = ()
    lost_results: tuple[str, ...] = ()
    isolated: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


@dataclass(frozen=True)
class FailureEvent:
    """Base of the events handlers receive.

    Attributes
    ----------
    worker : str or None
        Address of the worker concerned.
    time : float
        Wall-clock time of detection on the scheduler (seconds since the epoch).
    cause : str
        Why, in one word (see each subclass).
    keys : tuple of str
        Task keys affected.
    detail : str
        Free text: the exception, the scheduler's stimulus, ...

    Examples
    --------
    >>> event = NodeFailure(worker="tcp://127.0.0.1:4000", time=0.0, cause="died")
    >>> from_message(event.to_message()) == event
    True
    """

    kind: ClassVar[str] = ""

    worker: str | None
    time: float
    cause: str
    keys: tuple[str, ...] = ()
    detail: str = ""

    def to_message(self) -> dict[str, Any]:
        """The dict published on :data:`TOPIC` (msgpack-friendly)."""
        out = asdict(self)
        out["kind"] = self.kind
        return out


@dataclass(frozen=True)
class NodeFailure(FailureEvent):
    """A worker died: ``cause`` is ``"died"`` (process gone, comm closed) or
    ``"heartbeat-lost"`` (no heartbeat for ``distributed.scheduler.worker-ttl``).

    A graceful leave (``retire_workers``, scale down) is not a failure and sends
    no event. ``keys`` are the tasks that were running there.

    Examples
    --------
    >>> NodeFailure(worker="tcp://127.0.0.1:4000", time=0.0, cause="heartbeat-lost").kind
    'node_failure'
    """

    kind: ClassVar[str] = "node_failure"

    recovery: RecoveryPlan = field(default_factory=RecoveryPlan)


@dataclass(frozen=True)
class NetworkError(FailureEvent):
    """A comm failed: ``cause`` is ``"transfer-failed"`` (a worker could not fetch
    ``keys`` from ``peers``, which the scheduler still lists as holding them) or
    ``"comm-error"`` (a task failed with a connection error).

    Examples
    --------
    >>> NetworkError(worker="tcp://127.0.0.1:4000", time=0.0, cause="transfer-failed",
    ...              peers=("tcp://127.0.0.1:4001",)).peers
    ('tcp://127.0.0.1:4001',)
    """

    kind: ClassVar[str] = "network_error"

    peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuantumError(FailureEvent):
    """A backend failed on a circuit: ``cause`` is ``"oom"`` (host or GPU memory),
    ``"validation"`` (the backend rejected the circuit) or ``"backend"``.

    Examples
    --------
    >>> QuantumError(worker=None, time=0.0, cause="oom", circuit=3, backend="qsim").circuit
    3
    """

    kind: ClassVar[str] = "quantum_error"

    circuit: int | None = None
    backend: str | None = None


@dataclass(frozen=True)
class RecoveryEvent(FailureEvent):
    """The work a worker's death interrupted computes again.

    ``duration`` is seconds from detection to the compute start, on a live
    worker, of the last of the interrupted tasks and lost results
    (``NodeFailure.recovery.interrupted`` and ``lost_results``); ``cause`` is the
    failure's cause.

    Examples
    --------
    >>> RecoveryEvent(worker="tcp://127.0.0.1:4000", time=0.0, cause="died", duration=1.5).duration
    1.5
    """

    kind: ClassVar[str] = "recovery"

    duration: float = 0.0


EVENT_TYPES: dict[str, type[FailureEvent]] = {
    cls.kind: cls for cls in (NodeFailure, NetworkError, QuantumError, RecoveryEvent)
}


def from_message(msg: dict[str, Any]) -> FailureEvent:
    """The typed event of a dict published on :data:`TOPIC` (unknown keys are ignored)."""
    cls = EVENT_TYPES[msg["kind"]]
    names = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {k: v for k, v in msg.items() if k in names}
    for name in ("keys", "peers"):
        if name in kwargs:
            kwargs[name] = tuple(kwargs[name])
    if "recovery" in kwargs:
        plan: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs["recovery"].items()}
        kwargs["recovery"] = RecoveryPlan(**plan)
    return cls(**kwargs)


def classify_quantum_error(error: BaseException) -> str:
    """``"oom"``, ``"validation"`` or ``"backend"`` for an exception a backend raised."""
    text = f"{type(error).__name__}: {error}".lower()
    if isinstance(error, MemoryError) or "out of memory" in text or "outofmemory" in text:
        return "oom"
    if isinstance(error, (ValueError, TypeError)):
        return "validation"
    return "backend"


def is_network_error(exception_text: str) -> bool:
    """Whether a task's ``repr(exception)`` (as workers report it) is a failed comm."""
    name = exception_text.split("(", 1)[0].strip().rsplit(".", 1)[-1]
    return name in NETWORK_EXCEPTIONS
