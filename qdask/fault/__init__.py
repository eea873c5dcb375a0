"""Fault tolerance: failure detection and handlers, redistribution, replicas, checkpoints.

Layout:

* :mod:`~qdask.fault.events` -- the typed events handlers receive, and the errors;
* :mod:`~qdask.fault.scheduler` -- detection, redistribution, recovery timing and
  replication on the scheduler (owned by the qdask scheduler plugin);
* :mod:`~qdask.fault.worker` -- the worker side, called from circuit tasks;
* :mod:`~qdask.fault.handlers` -- the client's handlers (``on_node_failure``, ...);
* :mod:`~qdask.fault.client` -- ``enable_fault_tolerance`` and its handle;
* :mod:`~qdask.fault.checkpoint` -- the durable, content-addressed result store;
* :mod:`~qdask.fault.batch` -- what the quantum engine does per batch when enabled.

Only the light modules are imported here: workers import this package from
their circuit tasks. See ``docs/fault-tolerance.md``.
"""

from __future__ import annotations

from qdask.fault.events import (
    ChunkIsolatedError,
    FailureEvent,
    NetworkError,
    NodeFailure,
    PoisonCircuitError,
    QuantumError,
    RecoveryEvent,
    RecoveryPlan,
)

__all__ = [
    "ChunkIsolatedError",
    "FailureEvent",
    "NetworkError",
    "NodeFailure",
    "PoisonCircuitError",
    "QuantumError",
    "RecoveryEvent",
    "RecoveryPlan",
]
