"""The qdask scheduler plugin: the one place qdask hooks into the scheduler."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from distributed import SchedulerPlugin

from qdask.scheduler.placement import seed_prefix_durations
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
    ``qdask_registry_events``
        joins and leaves with their times and causes.
    """

    name = NAME
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None
        self.registry: ResourceRegistry | None = None

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.registry = ResourceRegistry(scheduler)
        for address in scheduler.workers:
            self.registry.add(address)
        scheduler.extensions[NAME] = self
        scheduler.handlers.update(
            {
                "qdask_resources": self._resources_handler,
                "qdask_registry_events": self._events_handler,
            }
        )

    async def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.extensions.pop(NAME, None)

    # -- hooks -------------------------------------------------------------------
    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        assert self.registry is not None
        self.registry.add(worker)

    def update_graph(self, scheduler: Scheduler, *, annotations: dict[str, dict[Any, Any]], **kwargs: Any) -> None:
        qdask_tasks = annotations.get("qdask")
        if qdask_tasks:
            seed_prefix_durations(scheduler, qdask_tasks)

    def log_event(self, topic: str, msg: Any) -> None:
        if self.registry is None or not isinstance(msg, dict):
            return
        action = msg.get("action")
        if topic == "all" and action == "remove-worker":
            # Published before the remove_worker hook, and the only place that
            # says whether the leave was expected and which tasks it affected.
            self.registry.remove(
                msg["worker"],
                expected=bool(msg.get("expected")),
                tasks=[str(k) for k in msg.get("processing-tasks", ())],
            )
        elif topic == CAPABILITIES_TOPIC and "worker" in msg:
            self.registry.set_capabilities(msg["worker"], msg["capabilities"])

    # -- handlers ----------------------------------------------------------------
    def _resources_handler(self) -> list[dict[str, Any]]:
        assert self.registry is not None
        return self.registry.snapshot()

    def _events_handler(self) -> list[dict[str, Any]]:
        assert self.registry is not None
        return self.registry.history()
