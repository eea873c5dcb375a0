"""Client side of fault tolerance: ``QuantumCluster.enable_fault_tolerance`` and its handle.

Enabling sends the :class:`~qdask.config.FaultToleranceConfig` to the
scheduler (``qdask_fault_enable``: ``max_failures``, ``replication_factor``,
``recovery_mode``) and opens the client's :class:`CheckpointStore`. Every
:class:`qdask.quantum.engine.Engine` of that client (``qdask.Sampler``,
``qdask.Simulator``) finds it with :func:`active` when it submits a batch.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import weakref
from typing import TYPE_CHECKING, Any

import dask.config
from distributed import Future

from qdask.config import FaultToleranceConfig
from qdask.fault.checkpoint import CheckpointStore

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)

#: { client: its active fault tolerance }
_ACTIVE: weakref.WeakKeyDictionary[Client, FaultTolerance] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def default_checkpoint_url() -> str:
    """``<dask temporary-directory or the system's>/qdask-checkpoints-<uid>``: where checkpoints go
    when ``checkpoint_url`` is None.

    Outside the cluster's own directory, so they survive it; one per user,
    created 0700 by :class:`~qdask.fault.checkpoint.CheckpointStore`, which
    refuses it when another user made it first (a shared, predictable
    ``<tmp>/qdask-checkpoints`` let any local user plant results).
    """
    root = dask.config.get("temporary-directory", None) or tempfile.gettempdir()
    return os.path.join(root, f"qdask-checkpoints-{os.getuid()}")


class FaultTolerance:
    """Handle returned by ``QuantumCluster.enable_fault_tolerance``.

    Attributes
    ----------
    config : FaultToleranceConfig
        The configuration the scheduler applied (``checkpoint_url`` filled in).
    checkpoints : CheckpointStore
        Where circuit results are stored; ``checkpoints.stats`` counts hits,
        misses, corrupt files and writes.

    Examples
    --------
    >>> ft = qc.enable_fault_tolerance(FaultToleranceConfig(checkpoint_url="file:///data/ckpt"))  # doctest: +SKIP
    >>> results = qdask.Sampler(qc.get_client(), seed=1).run_batch(circuits, repetitions=100)  # doctest: +SKIP
    >>> ft.checkpoints.stats["written"]  # doctest: +SKIP
    1000
    >>> ft.stop()  # doctest: +SKIP
    """

    def __init__(self, client: Client, config: FaultToleranceConfig) -> None:
        self._client = client
        self.config = config
        assert config.checkpoint_url is not None
        self.checkpoints = CheckpointStore(config.checkpoint_url, interval=config.checkpoint_interval)
        self._stopped = False

    @property
    def active(self) -> bool:
        """This handle is the client's current fault tolerance."""
        return _ACTIVE.get(self._client) is self

    def status(self) -> dict[str, Any]:
        """The scheduler's view: applied config, held keys, open recoveries.

        Examples
        --------
        >>> ft.status()["held"]  # doctest: +SKIP
        []
        """
        return self._client.sync(self._client.scheduler.qdask_fault_status)

    def held(self) -> list[str]:
        """Keys of the work held after a worker died (``recovery_mode="manual"``).

        Examples
        --------
        >>> ft = qc.enable_fault_tolerance(FaultToleranceConfig(recovery_mode="manual"))  # doctest: +SKIP
        >>> ft.held()  # after a worker died mid-batch  # doctest: +SKIP
        ['qdask-sample-16q-3f2a...']
        """
        return list(self.status()["held"])

    def resubmit(self, keys: list[str] | None = None) -> list[str]:
        """Run held work again (all of it by default); returns the keys released.

        Examples
        --------
        >>> ft.resubmit()  # doctest: +SKIP
        ['qdask-sample-16q-3f2a...']
        """
        return list(self._client.sync(self._client.scheduler.qdask_fault_resubmit, keys=keys))

    def cancel(self, keys: list[str]) -> None:
        """Drop held work: its futures are cancelled (``CancelledError``), as with ``Client.cancel``.

        Examples
        --------
        >>> ft.cancel(ft.held())  # doctest: +SKIP
        """
        self._client.cancel([Future(k, self._client) for k in keys], force=True)

    def stop(self) -> None:
        """Back to Dask's defaults on the scheduler; buffered checkpoints are written. Idempotent.

        Examples
        --------
        >>> ft.stop()  # doctest: +SKIP
        >>> ft.active  # doctest: +SKIP
        False
        """
        if self._stopped:
            return
        self._stopped = True
        with _LOCK:
            current = _ACTIVE.get(self._client) is self
            if current:
                del _ACTIVE[self._client]
        self.checkpoints.close()
        if current and self._client.status == "running":
            self._client.sync(self._client.scheduler.qdask_fault_disable)

    def __repr__(self) -> str:
        return f"<FaultTolerance {self.config.recovery_mode}, checkpoints at {self.checkpoints.url}>"


def enable(client: Client, config: FaultToleranceConfig | None = None) -> FaultTolerance:
    """Apply ``config`` on the scheduler and open its checkpoint store; replaces the client's previous one."""
    config = config if config is not None else FaultToleranceConfig()
    settings = config.to_dict()
    if settings["checkpoint_url"] is None:
        settings["checkpoint_url"] = default_checkpoint_url()
    applied = FaultToleranceConfig(**client.sync(client.scheduler.qdask_fault_enable, config=settings))
    with _LOCK:
        previous = _ACTIVE.pop(client, None)
    if previous is not None:
        previous._stopped = True  # the scheduler already runs the new settings
        previous.checkpoints.close()
    ft = FaultTolerance(client, applied)
    with _LOCK:
        _ACTIVE[client] = ft
    return ft


def active(client: Client) -> FaultTolerance | None:
    """The client's fault tolerance, or None when it is not enabled."""
    with _LOCK:
        return _ACTIVE.get(client)
