"""The qdask scheduler plugin: the one place qdask hooks into the scheduler."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from distributed import SchedulerPlugin

from qdask.config import LoadBalancerConfig
from qdask.fault.events import ANNOTATION as FAULT_ANNOTATION
from qdask.fault.events import WORKER_TOPIC as QUANTUM_ERRORS_TOPIC
from qdask.fault.scheduler import FaultManager
from qdask.hybrid.routing import TOPIC as NOISE_TOPIC
from qdask.hybrid.routing import HybridRouting
from qdask.monitoring import dashboard
from qdask.monitoring.events import EventStore
from qdask.monitoring.monitor import Monitor
from qdask.resources import ANNOTATION
from qdask.scheduler.balancer import LoadBalancer
from qdask.scheduler.elastic import ElasticSupport
from qdask.scheduler.placement import Placement
from qdask.scheduler.registry import ResourceRegistry
from qdask.worker.plugin import CAPABILITIES_TOPIC

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler

logger = logging.getLogger(__name__)

#: Name of the plugin, and key of it in ``Scheduler.extensions``.
NAME = "qdask"


class QuantumSchedulerPlugin(SchedulerPlugin):
    """Keeps the resource registry and serves qdask's scheduler handlers.

    Installed through ``LocalCluster(scheduler_kwargs={"plugins": [...]})``, the
    ``qdask.plugins.scheduler`` preload, or ``Client.register_plugin``. It is
    reachable as ``scheduler.extensions["qdask"]``.

    Handlers (called as ``client.scheduler.<name>()``):

    ``qdask_resources``
        one row per worker: capabilities, resources and what is in use.
    ``qdask_batch_context``
        those rows and the optimization level, what a client plans a batch with.
    ``qdask_registry_events``
        joins and leaves with their times and causes.
    ``qdask_monitor_*``, ``qdask_metrics``, ``qdask_analyze``, ...
        monitoring (see :meth:`qdask.monitoring.monitor.Monitor.handlers`).
    ``qdask_fault_*``
        fault tolerance (see :meth:`qdask.fault.scheduler.FaultManager.handlers`).
    ``qdask_elastic_*``
        queued quantum work, safe retirement and scaling events for elastic
        scaling (see :class:`qdask.scheduler.elastic.ElasticSupport`).
    ``qdask_optimization_level``
        the cluster's optimization level (see :mod:`qdask.hybrid.routing`).

    Parameters
    ----------
    optimization_level : {"none", "basic", "aggressive"}, optional
        The cluster's level (``HybridConfig.optimization_level``); None follows
        ``qdask.hybrid.optimization-level`` on the scheduler.

    Attributes
    ----------
    events : qdask.monitoring.events.EventStore
        Failures, recoveries, migrations and scaling events; fault tolerance,
        the load balancer and elastic scaling record theirs here.
    monitor : qdask.monitoring.monitor.Monitor
        The metrics sampler (off until ``start_monitoring``).
    fault : qdask.fault.scheduler.FaultManager
        Failure detection, redistribution and recovery timing (always on), and
        the settings of ``enable_fault_tolerance``.
    elastic : qdask.scheduler.elastic.ElasticSupport
        What ``enable_elastic_scaling``'s Adaptive asks of the scheduler.
    routing : qdask.hybrid.routing.HybridRouting
        Classical tasks to classical workers, circuits to the lowest-error device.
    """

    name = NAME
    idempotent = True

    def __init__(self, optimization_level: str | None = None) -> None:
        self.optimization_level = optimization_level
        self.routing: HybridRouting | None = None
        self.scheduler: Scheduler | None = None
        self.registry: ResourceRegistry | None = None
        self.placement: Placement | None = None
        self.balancer: LoadBalancer | None = None
        self.events = EventStore()
        self.monitor: Monitor | None = None
        self.fault: FaultManager | None = None
        self.elastic: ElasticSupport | None = None
        # Built before the Scheduler in the usual case (LocalCluster plugins=),
        # so the scheduler's dashboard serves /qdask.
        dashboard.register()

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.registry = ResourceRegistry(scheduler)
        self.placement = Placement(scheduler)
        self.balancer = LoadBalancer(scheduler, self.events.record)
        self.routing = HybridRouting(scheduler, self.registry, self.optimization_level)
        for address in scheduler.workers:
            self.registry.add(address)
            self.routing.add_worker(address)
        scheduler.extensions[NAME] = self
        scheduler.handlers.update(
            {
                "qdask_resources": self._resources_handler,
                "qdask_batch_context": self._batch_context_handler,
                "qdask_registry_events": self._events_handler,
                "qdask_balancer_configure": self._balancer_configure,
                "qdask_balancer_stop": self._balancer_stop,
                "qdask_balancer_status": self._balancer_status,
            }
        )
        self.monitor = Monitor(scheduler, self.events)
        scheduler.handlers.update(self.monitor.handlers())
        self.fault = FaultManager(scheduler, self.events)
        scheduler.handlers.update(self.fault.handlers())
        self.elastic = ElasticSupport(scheduler, self.events)
        scheduler.handlers.update(self.elastic.handlers())
        scheduler.handlers.update(self.routing.handlers())
        dashboard.add_nav_link(scheduler)

    async def close(self) -> None:
        if self.balancer is not None:
            await self.balancer.stop()
        if self.placement is not None:
            self.placement.close()
        if self.monitor is not None:
            self.monitor.close()
        if self.fault is not None:
            self.fault.close()
        if self.scheduler is not None:
            self.scheduler.extensions.pop(NAME, None)

    # -- hooks -------------------------------------------------------------------
    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        assert self.registry is not None
        self.registry.add(worker)
        if self.placement is not None:
            self.placement.add_worker(worker)
        if self.routing is not None:
            self.routing.add_worker(worker)

    def update_graph(
        self, scheduler: Scheduler, *, tasks: list[Any], annotations: dict[str, dict[Any, Any]], **kwargs: Any
    ) -> None:
        if self.placement is not None:
            self.placement.update_graph(annotations.get(ANNOTATION, {}), tasks)
        if self.fault is not None:
            self.fault.update_graph(annotations.get(FAULT_ANNOTATION, {}))
        if self.routing is not None:  # after placement: it reads the resource restrictions set there
            self.routing.update_graph(annotations.get(ANNOTATION, {}), tasks)

    def log_event(self, topic: str, msg: Any) -> None:
        if self.registry is None or not isinstance(msg, dict):
            return
        action = msg.get("action")
        if topic == "all" and action == "remove-worker":
            # Published before the remove_worker hook, and the only place that
            # says whether the leave was expected and which tasks it affected.
            tasks = [str(k) for k in msg.get("processing-tasks", ())]
            rec = self.registry.remove(msg["worker"], expected=bool(msg.get("expected")), tasks=tasks)
            if rec is not None and rec.cause == "died":
                self.events.record("node_failure", worker=rec.address, cause=rec.cause, keys=tasks)
            if self.fault is not None:
                self.fault.remove_worker(msg)  # handlers, redistribution, recovery timing
            if self.routing is not None:
                self.routing.remove_worker(msg["worker"])  # before Dask reschedules its tasks
        elif topic == CAPABILITIES_TOPIC and "worker" in msg:
            self.registry.set_capabilities(msg["worker"], msg["capabilities"])
        elif topic == NOISE_TOPIC and "worker" in msg and self.routing is not None:
            self.routing.set_noise(msg["worker"], msg.get("noise"))
        elif topic == QUANTUM_ERRORS_TOPIC and self.fault is not None:
            self.fault.worker_event(msg)
        elif topic == "scheduler" and action == "worker-ttl-timed-out" and self.fault is not None:
            self.fault.heartbeat_lost(msg.get("workers", []))
        elif action == "worker-status-change" and msg.get("status") == "running" and self.balancer is not None:
            # A joining worker registers as "init" and is only offered work
            # from here on (also after a pause); the add_worker hook is too early.
            self.balancer.worker_running()

    # -- handlers ----------------------------------------------------------------
    def resources(self) -> list[dict[str, Any]]:
        """``QuantumCluster.resources()`` rows: each worker's capabilities, use and device error rates."""
        assert self.registry is not None and self.routing is not None
        return self.routing.annotate(self.registry.snapshot())

    def _resources_handler(self) -> list[dict[str, Any]]:
        return self.resources()

    async def _batch_context_handler(self) -> dict[str, Any]:
        # What the client plans a batch with, in one round trip (Sampler.submit
        # latency: two calls cost a second trip through a busy scheduler).
        assert self.routing is not None and self.placement is not None
        if self.monitor is not None:
            self.monitor.counters.batches += 1  # one call per batch planned: qdask_batches_total
        await self.placement.wait_for_workers()  # zero workers is a moment (placement rule 7)
        return {"resources": self.resources(), "optimization_level": self.routing.level()}

    async def _balancer_configure(self, config: dict[str, Any]) -> dict[str, Any]:
        assert self.balancer is not None
        return await self.balancer.configure(LoadBalancerConfig(**config))

    async def _balancer_stop(self) -> dict[str, Any]:
        assert self.balancer is not None
        return await self.balancer.stop()

    def _balancer_status(self) -> dict[str, Any]:
        assert self.balancer is not None
        return self.balancer.status()

    def _events_handler(self) -> list[dict[str, Any]]:
        assert self.registry is not None
        return self.registry.history()
