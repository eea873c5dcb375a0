"""Scheduler-side registry of what every worker offers and uses."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qdask.scheduler.placement import used_resources
from qdask.worker.discovery import Capabilities
from qdask.worker.plugin import STARTUP_KEY

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler


@dataclass
class WorkerRecord:
    """One worker as the registry knows it."""

    address: str
    name: str
    joined: float
    capabilities: Capabilities | None = None
    left: float | None = None
    cause: str | None = None  # "graceful" or "died" once it left


@dataclass
class RegistryEvent:
    """A join or leave, with its wall-clock time."""

    time: float
    action: str  # "join" | "leave" | "capabilities"
    worker: str
    cause: str | None = None
    tasks: list[str] = field(default_factory=list)


class ResourceRegistry:
    """Capabilities and current use of every worker, updated on join and leave.

    The capabilities come from the :class:`~qdask.worker.plugin.QuantumWorkerPlugin`:
    in the worker's registration (``WorkerState.extra["qdask"]``) or, for a plugin
    registered later, in a ``qdask-capabilities`` event. Current use is Dask's
    own accounting (``WorkerState.used_resources``) plus the chunks placement
    let Dask queue unrestricted (:func:`qdask.scheduler.placement.used_resources`),
    read at snapshot time.
    """

    def __init__(self, scheduler: Scheduler, history: int = 10_000) -> None:
        self.scheduler = scheduler
        # { worker address: record } for live workers
        self.workers: dict[str, WorkerRecord] = {}
        self.events: deque[RegistryEvent] = deque(maxlen=history)

    # -- updates ---------------------------------------------------------------
    def add(self, address: str) -> None:
        ws = self.scheduler.workers[address]
        caps = ws.extra.get(STARTUP_KEY)
        self.workers[address] = WorkerRecord(
            address=address,
            name=str(ws.name),
            joined=time.time(),
            capabilities=Capabilities.from_dict(caps) if caps else None,
        )
        self.events.append(RegistryEvent(time.time(), "join", address))

    def set_capabilities(self, address: str, caps: dict[str, Any]) -> None:
        rec = self.workers.get(address)
        if rec is not None:
            rec.capabilities = Capabilities.from_dict(caps)
            self.events.append(RegistryEvent(time.time(), "capabilities", address))

    def remove(self, address: str, *, expected: bool, tasks: list[str]) -> WorkerRecord | None:
        rec = self.workers.pop(address, None)
        if rec is None:
            return None
        rec.left = time.time()
        rec.cause = "graceful" if expected else "died"
        self.events.append(RegistryEvent(rec.left, "leave", address, rec.cause, tasks))
        return rec

    # -- reading ---------------------------------------------------------------
    def capabilities(self, address: str) -> Capabilities | None:
        rec = self.workers.get(address)
        return rec.capabilities if rec else None

    def snapshot(self) -> list[dict[str, Any]]:
        """One row per live worker: capabilities, totals and what is in use now."""
        rows = []
        for address, ws in self.scheduler.workers.items():
            rec = self.workers.get(address)
            caps = rec.capabilities if rec else None
            rows.append(
                {
                    "worker": address,
                    "name": str(ws.name),
                    "role": caps.role if caps else "unknown",
                    "status": ws.status.name,
                    "nthreads": ws.nthreads,
                    "cores": caps.cores if caps else None,
                    "host": caps.host if caps else None,
                    "memory_limit": ws.memory_limit,
                    "max_qubits": caps.max_qubits if caps else 0,
                    "qsim_isa": caps.qsim_isa if caps else None,
                    "qsim_gpu": caps.qsim_gpu if caps else False,
                    "gpus": len(caps.gpus) if caps else 0,
                    "backends": list(caps.backends) if caps else [],
                    "resources": dict(ws.resources),
                    "used_resources": {k: v for k, v in used_resources(ws).items() if k in ws.resources},
                    "processing": len(ws.processing),
                    "joined": rec.joined if rec else None,
                    "cost_model": dict(caps.cost_model) if caps else {},
                }
            )
        return rows

    def history(self) -> list[dict[str, Any]]:
        return [e.__dict__.copy() for e in self.events]
