"""Replicas of finished circuit results: Dask Active Memory Manager policies of fault tolerance.

With ``FaultToleranceConfig(replication_factor=n)``, the
:class:`~qdask.fault.scheduler.FaultManager` replaces Dask's ``ReduceReplicas``
with :class:`KeepReplicas` and adds :class:`ReplicateResults`; how many replicas a
result lacks is :meth:`~qdask.fault.scheduler.FaultManager.replicas_missing`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distributed.active_memory_manager import ActiveMemoryManagerPolicy, ReduceReplicas, Suggestion

if TYPE_CHECKING:
    from distributed.active_memory_manager import SuggestionGenerator

    from qdask.fault.scheduler import FaultManager


class KeepReplicas(ReduceReplicas):
    """Dask's ``ReduceReplicas``, except that circuit results keep ``replication_factor`` replicas.

    Wraps the parent's suggestions instead of repeating its logic: a drop that
    would leave a circuit result with fewer replicas is declined.
    """

    def __init__(self, manager: FaultManager) -> None:
        self.fault = manager

    def run(self) -> SuggestionGenerator:
        parent = super().run()
        choice = None
        while True:
            try:
                suggestion = parent.send(choice)
            except StopIteration:
                return
            missing = self.fault.replicas_missing(suggestion.ts, self.manager.pending)
            if suggestion.op == "drop" and missing is not None and missing >= 0:
                choice = None  # tell ReduceReplicas the AMM declined it
                continue
            choice = yield suggestion


class ReplicateResults(ActiveMemoryManagerPolicy):
    """Copy finished circuit results until ``replication_factor`` workers hold each."""

    def __init__(self, manager: FaultManager) -> None:
        self.fault = manager

    def run(self) -> SuggestionGenerator:
        for ts in self.manager.scheduler.tasks.values():
            for _ in range(self.fault.replicas_missing(ts, self.manager.pending) or 0):
                if (yield Suggestion("replicate", ts)) is None:
                    break  # no worker can take another copy now
