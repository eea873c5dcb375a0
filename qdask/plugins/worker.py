"""Preload for ``dask worker ADDRESS --preload qdask.plugins.worker``.

Discovers the worker's hardware and advertises it before the worker registers.
``--qdask-role classical`` makes a worker that never runs circuits::

    dask worker tcp://127.0.0.1:8786 --preload qdask.plugins.worker --qdask-role classical
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from qdask.deploy.spec import worker_plugins
from qdask.worker.plugin import ROLES

if TYPE_CHECKING:
    from distributed import Worker


@click.command()
@click.option("--qdask-role", type=click.Choice(ROLES), default="quantum", show_default=True,
              help="quantum workers run circuits; classical ones only classical tasks.")
async def dask_setup(worker: Worker, qdask_role: str) -> None:
    for plugin in worker_plugins(qdask_role):
        await worker.plugin_add(plugin, catch_errors=False)
