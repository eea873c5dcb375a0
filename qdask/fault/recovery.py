"""Recovery timing of fault tolerance: when the work a failure interrupted runs again.

From detection to the moment the lost work computes again on a live worker
(see :mod:`qdask.fault.scheduler`). :class:`RecoveryTracker` is a transition hook
the :class:`~qdask.fault.scheduler.FaultManager` installs only while a recovery
is open.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distributed import SchedulerPlugin

if TYPE_CHECKING:
    from qdask.fault.scheduler import FaultManager

#: Name of the recovery tracker plugin and of the hold-keeping periodic callback.
NAME = "qdask-fault"


@dataclass
class _Recovery:
    """One worker death whose affected tasks have not all run again."""

    worker: str
    cause: str
    detected: float
    keys: list[str]
    waiting: set[Hashable] = field(default_factory=set)
    last_start: float | None = None


class RecoveryTracker(SchedulerPlugin):
    """Transition hook: when each task affected by a failure starts running again.

    Installed (``scheduler.plugins["qdask-fault"]``) while a recovery is open.
    """

    name = NAME
    idempotent = False

    def __init__(self, manager: FaultManager) -> None:
        self.manager = manager

    def transition(self, key: Hashable, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        m = self.manager
        if key not in m.waiting_on and key not in m.origin_of:
            return
        ran = start == "processing" and finish in ("memory", "erred")
        if ran or finish == "forgotten":
            origin = m.origin_of.pop(key, None)
            if origin is not None and ran:
                m.resolve(origin, m.compute_start(kwargs))  # the isolated chunk's work computes again
        if key not in m.waiting_on:
            return
        if ran:
            if finish == "erred" and m.isolated(key):
                return  # the isolation retry stopped at once; its single-circuit tasks replace it
            m.resolve(key, m.compute_start(kwargs))
        elif finish in ("forgotten", "erred"):
            m.resolve(key, None)  # it will not run again: cancelled, or failed for good
