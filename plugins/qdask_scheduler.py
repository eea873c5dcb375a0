"""Scheduler preload as a file: ``dask scheduler --preload plugins/qdask_scheduler.py``.

Same as ``--preload qdask.plugins.scheduler`` (for sites that preload by path).
"""

from qdask.plugins.scheduler import dask_setup

__all__ = ["dask_setup"]
