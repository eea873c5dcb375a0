"""Worker preload as a file: ``dask worker ADDR --preload plugins/qdask_worker.py``.

Same as ``--preload qdask.plugins.worker`` (for sites that preload by path).
"""

from qdask.plugins.worker import dask_setup

__all__ = ["dask_setup"]
