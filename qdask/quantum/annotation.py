"""The task annotation of a circuit task: what the scheduler side knows of it.

The planner (:meth:`qdask.quantum.plan.Chunk.annotation`) writes one on every
circuit task it submits (``dask.annotate(qdask=...)``); placement, balancing,
elastic scaling, fault tolerance and monitoring on the scheduler read it back
through :meth:`TaskAnnotation.of`. A user's own task may carry a ``qdask``
annotation too (``{"qubits": n, "gpu": k}``, see :mod:`qdask.scheduler.placement`):
it is not a circuit task, and :meth:`TaskAnnotation.of` returns None for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from qdask.resources import ANNOTATION

if TYPE_CHECKING:
    from distributed.scheduler import TaskState

#: ``kind`` of the tasks qdask submits for circuits.
CIRCUIT = "circuit"


@dataclass(frozen=True)
class TaskAnnotation:
    """The ``qdask`` annotation of a circuit task.

    Attributes
    ----------
    qubits : int
        Width of the chunk's widest circuit.
    est_seconds : float
        The cost model's estimate of the whole task.
    statevector_bytes : int
        State-vector bytes it requests (the resource of the same name).
    priority : int
        The Dask priority (class) it was submitted at.
    circuits : int
        Circuits it completes (0 for a part of a circuit).
    backend : str
        Backend of its circuits, "mixed" when they differ.
    route : str or None
        Routing class (:mod:`qdask.hybrid.routing`), None for any worker.
    batch : str or None
        Id of the batch it belongs to, for per-batch progress.
    batch_tasks : int
        Tasks of that batch.
    kind : str
        Always "circuit".
    """

    qubits: int = 0
    est_seconds: float = 0.0
    statevector_bytes: int = 0
    priority: int = 0
    circuits: int = 0
    backend: str = ""
    route: str | None = None
    batch: str | None = None
    batch_tasks: int = 0
    kind: str = CIRCUIT

    def to_dict(self) -> dict[str, Any]:
        """Msgpack-friendly form, as ``dask.annotate(qdask=...)`` takes it (None fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Any) -> TaskAnnotation | None:
        """The annotation in a ``qdask`` annotation dict; None unless it is a circuit task's.

        Keys it does not know (placement's bookkeeping) are ignored.
        """
        if not isinstance(d, dict) or d.get("kind") != CIRCUIT:
            return None
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @classmethod
    def of(cls, ts: TaskState | None) -> TaskAnnotation | None:
        """The annotation of scheduler task ``ts``; None for anything but a circuit task."""
        if ts is None or not ts.annotations:
            return None
        return cls.from_dict(ts.annotations.get(ANNOTATION))


def is_circuit_task(ts: TaskState | None) -> bool:
    """``ts`` is a circuit task qdask submitted (it carries a :class:`TaskAnnotation`)."""
    return TaskAnnotation.of(ts) is not None
