"""Scheduler side of the hybrid layer: worker roles and noise-aware routing.

Owned by the ``qdask`` scheduler plugin, which calls it from its hooks. Both
rules work through Dask's own levers, set in ``update_graph`` after Dask (and
:mod:`qdask.scheduler.placement`) set priorities and resource restrictions and
before any new task is transitioned:

* **Classical tasks prefer classical workers.** A task with no restriction of
  its own (no resources, workers or hosts: nothing that makes it quantum) gets
  ``worker_restrictions`` = the live classical workers with
  ``loose_restrictions=True``, so it runs on a quantum worker only when no
  classical one is left. Circuits always carry the ``quantum`` resource, so
  they never land on classical workers. Off with ``qdask.hybrid.prefer-classical``.
* **Noise-aware routing.** A circuit task annotated ``route="lowest-error"``
  (the engine does so at ``optimization_level="aggressive"``) is restricted to
  the devices with the lowest ``(gate_error, readout_error)`` among those whose
  resources fit it. Restrictions are strict: work stealing never moves it to a
  noisier device. When the best devices leave, routed tasks are re-routed to
  the best remaining ones before Dask reschedules them.

The scheduler also serves ``qdask_optimization_level``: the level of the
cluster (``HybridConfig(optimization_level=...)``, else the scheduler's
``qdask.hybrid.optimization-level``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from qdask import config
from qdask.hybrid.levels import OptimizationPolicy
from qdask.quantum.annotation import TaskAnnotation

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler, TaskState

    from qdask.scheduler.registry import ResourceRegistry

def check_device_noise(noise: Mapping[str, Any]) -> dict[str, float]:
    """A device's noise parameters (:class:`qdask.hybrid.noise.DeviceNoise`), checked without cirq.

    Here, not in ``DeviceNoise``, so that the scheduler and a worker's command
    line refuse a bad value at once, before cirq's import (seconds).

    Raises
    ------
    TypeError
        For a parameter other than ``gate_error`` and ``readout_error``.
    ValueError
        For a value that is not a probability in [0, 1].

    Examples
    --------
    >>> check_device_noise({"gate_error": 0.01})
    {'gate_error': 0.01, 'readout_error': 0.0}
    """
    unknown = sorted(set(noise) - {"gate_error", "readout_error"})
    if unknown:
        raise TypeError(
            f"DeviceNoise has no parameter {unknown[0]!r}: allowed gate_error and readout_error. "
            "Fix: DeviceNoise(gate_error=0.01, readout_error=0.02)."
        )
    params = {"gate_error": noise.get("gate_error", 0.0), "readout_error": noise.get("readout_error", 0.0)}
    for name, value in params.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
        if not ok:  # NaN fails both comparisons
            raise ValueError(
                f"DeviceNoise({name}={value!r}) is invalid: allowed a probability in [0, 1]. "
                f"Fix: DeviceNoise({name}=0.01)."
            )
    return {name: float(value) for name, value in params.items()}


logger = logging.getLogger(__name__)

#: Value of the ``route`` key of a circuit task's ``qdask`` annotation.
LOWEST_ERROR = "lowest-error"
#: Event topic (and startup-information key) that tells the scheduler a device's noise
#: (sent by :mod:`qdask.hybrid.noise` on the workers).
TOPIC = "qdask-noise"

#: Task states after which a restriction no longer matters. Not "memory": a
#: result lost with its worker is recomputed under the same restrictions.
_DONE = ("erred", "forgotten")


class HybridRouting:
    """Roles and noise-aware routing on one scheduler (see the module docstring).

    Parameters
    ----------
    scheduler : distributed.Scheduler
    registry : qdask.scheduler.registry.ResourceRegistry
        Where each worker's role is known.
    optimization_level : str, optional
        The cluster's level; None follows ``qdask.hybrid.optimization-level``.
    """

    def __init__(self, scheduler: Scheduler, registry: ResourceRegistry, optimization_level: str | None = None) -> None:
        if optimization_level is not None:
            OptimizationPolicy.for_level(optimization_level)  # validates
        self.scheduler = scheduler
        self.registry = registry
        self.optimization_level = optimization_level
        # { worker address: {"gate_error": p, "readout_error": q} or None }
        self.noise: dict[str, dict[str, float] | None] = {}
        # { task key: addresses it was routed to }, for re-routing on departures
        # (kept until the task is forgotten: lost results are recomputed)
        self.routed: dict[Any, frozenset[str]] = {}

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {"qdask_optimization_level": self.level}

    def level(self) -> str:
        """The cluster's optimization level."""
        return self.optimization_level or str(config.get("hybrid.optimization-level"))

    # -- membership and noise ----------------------------------------------------------
    def add_worker(self, address: str) -> None:
        ws = self.scheduler.workers.get(address)
        if ws is not None:
            self.noise[address] = ws.extra.get(TOPIC)

    def set_noise(self, address: str, noise: dict[str, float] | None) -> None:
        if address in self.scheduler.workers:
            self.noise[address] = noise

    def remove_worker(self, address: str) -> None:
        """Re-route tasks that only the departed worker was allowed to run.

        Called from the ``remove-worker`` event, which Dask publishes after the
        worker left ``scheduler.workers`` and before it reschedules its tasks.
        """
        self.noise.pop(address, None)
        tasks = self.scheduler.tasks
        for key, devices in list(self.routed.items()):
            ts = tasks.get(key)
            if ts is None or ts.state in _DONE:
                del self.routed[key]
                continue
            if address not in devices:
                continue
            remaining = frozenset(d for d in devices if d in self.scheduler.workers)
            if remaining:
                ts.worker_restrictions = set(remaining)
                self.routed[key] = remaining
            else:
                ts.worker_restrictions = None
                del self.routed[key]
                self._route(ts)

    def error(self, address: str) -> tuple[float, float]:
        """``(gate_error, readout_error)`` of a device; (0, 0) when it has no noise model."""
        noise = self.noise.get(address) or {}
        return float(noise.get("gate_error", 0.0)), float(noise.get("readout_error", 0.0))

    # -- update_graph --------------------------------------------------------------------
    def update_graph(self, qdask_annotations: dict[Any, Any], keys: list[Any]) -> None:
        """Apply both rules to the new tasks ``keys``."""
        s = self.scheduler
        self.routed = {k: v for k, v in self.routed.items() if k in s.tasks and s.tasks[k].state not in _DONE}
        classical = self._classical_workers() if config.get("hybrid.prefer-classical") else set()
        for key in keys:
            ts = s.tasks.get(key)
            if ts is None or ts.state != "released" or ts.run_spec is None:
                continue
            ann = TaskAnnotation.from_dict(qdask_annotations.get(key))
            if ann is not None and ann.route == LOWEST_ERROR:
                self._route(ts)
            elif classical and not (ts.resource_restrictions or ts.worker_restrictions or ts.host_restrictions):
                ts.worker_restrictions = set(classical)
                ts.loose_restrictions = True

    def _classical_workers(self) -> set[str]:
        live = self.scheduler.workers
        return {
            address
            for address, rec in self.registry.workers.items()
            if rec.capabilities is not None and rec.capabilities.role == "classical" and address in live
        }

    def _route(self, ts: TaskState) -> None:
        request = ts.resource_restrictions or {}
        fits = [
            address
            for address, ws in self.scheduler.workers.items()
            if all(ws.resources.get(r, 0) >= v for r, v in request.items())
        ]
        errors = {address: self.error(address) for address in fits}
        if len(set(errors.values())) < 2:
            return  # every device that fits is as good: leave placement to Dask
        best = min(errors.values())
        devices = frozenset(a for a, e in errors.items() if e == best)
        ts.worker_restrictions = set(devices)
        ts.loose_restrictions = False
        self.routed[ts.key] = devices

    # -- resources() rows ------------------------------------------------------------------
    def annotate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add each device's ``error_rate`` and ``readout_error`` (None on classical workers)."""
        for row in rows:
            quantum = bool(row.get("resources", {}).get("quantum"))
            gate, readout = self.error(row["worker"])
            row["error_rate"] = gate if quantum else None
            row["readout_error"] = readout if quantum else None
        return rows
