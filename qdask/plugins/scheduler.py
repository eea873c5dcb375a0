"""Preload for ``dask scheduler --preload qdask.plugins.scheduler``.

Installs the qdask scheduler plugins (the same ones ``QuantumCluster`` uses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qdask.deploy.spec import scheduler_plugins
from qdask.monitoring import dashboard

# The dashboard reads its page table once, before dask_setup runs: register
# the /qdask page at import of the preload.
dashboard.register()

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler


def dask_setup(scheduler: Scheduler) -> None:
    # Preloads run before plugin starts, so add_plugin's plugins are started
    # together with the scheduler.
    for plugin in scheduler_plugins():
        scheduler.add_plugin(plugin)
