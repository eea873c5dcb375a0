"""Scheduler-side store of failures, recoveries, migrations and scaling events.

One instance lives on the qdask scheduler plugin
(``scheduler.extensions["qdask"].events``). The plugin records worker deaths
itself; fault tolerance, the load balancer and elastic scaling record theirs
with :meth:`EventStore.record`. Monitoring, Prometheus and the dashboard only
read it.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

#: Kinds of events, and who records them.
KINDS = (
    "node_failure",  # the qdask plugin: a worker left without being retired
    "network_error",  # fault tolerance: a comm to a worker failed
    "quantum_error",  # fault tolerance: a circuit execution failed
    "recovery",  # fault tolerance: affected work runs again; ``duration`` = failure -> recovered
    "migration",  # load balancer: queued tasks moved between workers
    "scale_up",  # elastic scaling: workers requested
    "scale_down",  # elastic scaling: workers retired
)
FAILURE_KINDS = ("node_failure", "network_error", "quantum_error", "recovery")
SCALING_KINDS = ("migration", "scale_up", "scale_down")


@dataclass(frozen=True)
class Event:
    """One recorded event, with its wall-clock time (seconds since the epoch)."""

    time: float
    kind: str
    worker: str | None = None
    cause: str | None = None
    keys: list[str] = field(default_factory=list)
    duration: float | None = None
    count: int = 1
    # Anything else the recording subsystem wants kept (e.g. a migration's ``thief``).
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventStore:
    """Counts per kind since the scheduler started, and the recent events.

    Parameters
    ----------
    history : int, default 10_000
        Events kept for the dashboard; counts are never truncated.

    Examples
    --------
    >>> store = EventStore()
    >>> _ = store.record("recovery", worker="tcp://127.0.0.1:1", duration=2.5)
    >>> store.totals["recovery"], store.statistics()["avg_recovery_time"]
    (1, 2.5)
    """

    def __init__(self, history: int = 10_000) -> None:
        # { kind: events recorded (``count`` summed) }
        self.totals: Counter[str] = Counter()
        self.events: deque[Event] = deque(maxlen=history)
        self._recovery_seconds = 0.0
        self._recoveries_timed = 0

    def record(
        self,
        kind: str,
        *,
        worker: str | None = None,
        cause: str | None = None,
        keys: list[str] | tuple[str, ...] = (),
        duration: float | None = None,
        count: int = 1,
        when: float | None = None,
        **info: Any,
    ) -> Event:
        """Record one event.

        Parameters
        ----------
        kind : str
            One of :data:`KINDS`.
        worker : str, optional
            Worker address concerned.
        cause : str, optional
            Free text (e.g. ``"died"``, ``"CommClosedError"``).
        keys : sequence of str
            Task keys affected.
        duration : float, optional
            Seconds; for ``"recovery"`` the time from failure to recovery.
        count : int, default 1
            Events this record stands for (e.g. tasks moved by one migration).
        when : float, optional
            Wall-clock time; now by default.
        **info
            Further msgpack-friendly fields kept with the event (``Event.info``).
        """
        if kind not in KINDS:
            raise ValueError(f"EventStore.record(kind={kind!r}) is invalid: allowed {KINDS}.")
        event = Event(
            time=time.time() if when is None else when,
            kind=kind,
            worker=worker,
            cause=cause,
            keys=[str(k) for k in keys],
            duration=duration,
            count=count,
            info=info,
        )
        self.totals[kind] += count
        if kind == "recovery" and duration is not None:
            self._recovery_seconds += duration
            self._recoveries_timed += 1
        self.events.append(event)
        return event

    def since(self, t: float, kinds: tuple[str, ...] = KINDS) -> list[Event]:
        """Events at or after wall-clock time ``t`` of the given kinds."""
        return [e for e in self.events if e.time >= t and e.kind in kinds]

    def statistics(self) -> dict[str, Any]:
        """The fields of :class:`~qdask.monitoring.results.ErrorStatistics`."""
        avg = self._recovery_seconds / self._recoveries_timed if self._recoveries_timed else None
        return {
            "node_failures": self.totals["node_failure"],
            "network_errors": self.totals["network_error"],
            "quantum_errors": self.totals["quantum_error"],
            "avg_recovery_time": avg,
            "recoveries": self.totals["recovery"],
        }
