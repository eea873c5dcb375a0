"""Start a qdask cluster inside ``mpiexec`` through dask-mpi.

Rank 0 runs the scheduler (with the qdask scheduler plugins), rank 1 goes on
with the user's client code and every further rank runs a worker with the
qdask worker plugin. The plugins come from the same builders as
:class:`~qdask.deploy.cluster.QuantumCluster` and the ``dask`` CLI preloads
(:mod:`qdask.deploy.spec`).

Everything binds to the loopback interface unless told otherwise: pass
``interface="ib0"`` (or the site's network) when the ranks span several hosts.

Examples
--------
In a script started with ``mpiexec -n 4 python script.py``:

>>> from qdask import ClusterConfig, QuantumCluster
>>> qc = QuantumCluster.from_mpi(ClusterConfig())  # doctest: +SKIP
>>> len(qc.resources())  # doctest: +SKIP
2
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import TYPE_CHECKING, Any

import dask.config

from qdask.config import ClusterConfig, ConfigError
from qdask.deploy import spec

if TYPE_CHECKING:
    from mpi4py.MPI import Intracomm

__all__ = ["MIN_RANKS", "SCHEDULER_PRELOAD", "initialize", "require_dask_mpi", "worker_ranks"]

#: Scheduler, client and at least one worker.
MIN_RANKS = 3
#: Ranks as dask-mpi assigns them: scheduler, client (rank 1), then workers.
SCHEDULER_RANK = 0
FIRST_WORKER_RANK = 2
#: Module that installs ``spec.scheduler_plugins()`` on a scheduler; dask-mpi
#: builds the Scheduler itself, so a preload is the one way in.
SCHEDULER_PRELOAD = "qdask.plugins.scheduler"

_MISSING = "qdask's MPI launch needs dask-mpi and mpi4py: pip install 'qdask[mpi]'"


def require_dask_mpi() -> ModuleType:
    """The ``dask_mpi`` module, or an ImportError naming the extra to install."""
    try:
        import dask_mpi
    except ImportError as e:
        raise ImportError(_MISSING) from e
    return dask_mpi


def _world(comm: Intracomm | None) -> Intracomm:
    if comm is not None:
        return comm
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(_MISSING) from e
    return MPI.COMM_WORLD


def worker_ranks(comm: Intracomm | None = None) -> int:
    """Number of ranks that run a worker (all but the scheduler's and the client's).

    Raises
    ------
    dask_mpi.WorldTooSmallException
        Fewer than :data:`MIN_RANKS` ranks, with the command that fixes it.
    """
    size = _world(comm).Get_size()
    if size < MIN_RANKS:
        # dask-mpi raises the same, but only after qdask would already have
        # failed on a cluster of zero workers; say so first, with the fix.
        raise require_dask_mpi().WorldTooSmallException(
            f"Not enough MPI ranks to start cluster, found {size}, needs at least {MIN_RANKS}, "
            "one each for the scheduler, client and a worker. Fix: start more ranks, e.g. "
            "`mpiexec -n 4 python -m qdask.mpi script.py` (two workers)."
        )
    return size - FIRST_WORKER_RANK


def _resolve(config: ClusterConfig, workers: int) -> ClusterConfig:
    """``config`` with ``num_nodes`` set by the MPI world (ranks, not cores, make the workers)."""
    # Validated: an int or "auto".
    if isinstance(config.num_nodes, int) and config.num_nodes != workers:
        raise ConfigError(
            "ClusterConfig",
            "num_nodes",
            config.num_nodes,
            f'"auto" or {workers} (MPI ranks - 2) under this mpiexec',
            f"start `mpiexec -n {config.num_nodes + FIRST_WORKER_RANK} ...` or pass ClusterConfig(num_nodes='auto').",
        )
    if config.protocol == "inproc":
        raise ConfigError(
            "ClusterConfig",
            "protocol",
            config.protocol,
            'None, "tcp", "tls" or "ucx" (MPI ranks are separate processes)',
            "pass ClusterConfig(protocol=None).",
        )
    return dataclasses.replace(config, num_nodes=workers)


def initialize(config: ClusterConfig | None = None, **kwargs: Any) -> bool:
    """Make this MPI rank the qdask scheduler, the client, or a worker.

    Wraps :func:`dask_mpi.initialize`. Worker ranks ``2 .. quantum + 1``
    are quantum workers, the rest classical, where ``quantum`` comes from
    ``config.quantum_devices`` ("auto": all). Threads and memory per worker
    come from ``config`` as for a local cluster (``memory_per_node="auto"``
    divides this host's memory by the number of workers; set it explicitly
    when the ranks span hosts).

    Parameters
    ----------
    config : ClusterConfig, optional
        Shape of the cluster; ``num_nodes`` must be "auto" or the number of
        worker ranks. With ``protocol="tls"`` every rank reads its
        certificates from dask config (``distributed.comm.tls.*``).
    **kwargs
        Passed on to :func:`dask_mpi.initialize`, overriding qdask's defaults:
        ``interface="lo"``, ``dashboard_address="127.0.0.1:0"``, ``nthreads``,
        ``memory_limit`` and ``protocol`` from ``config``. ``worker_options``
        are merged with qdask's worker plugins.

    Returns
    -------
    bool
        As dask-mpi: True on the client rank. With the default ``exit=True``
        the other ranks serve until the client exits and never return.

    Raises
    ------
    dask_mpi.WorldTooSmallException
        Fewer than three ranks, raised on every rank before anything starts.
    qdask.ConfigError
        ``config`` does not fit the MPI world.
    """
    dask_mpi = require_dask_mpi()
    comm = _world(kwargs.pop("comm", None))
    config = _resolve(config if config is not None else ClusterConfig(), worker_ranks(comm))
    lay = spec.layout(config)
    rank = comm.Get_rank()
    role = "quantum" if rank - FIRST_WORKER_RANK < lay.quantum else "classical"
    worker_options = {"plugins": spec.worker_plugins(role), **(kwargs.pop("worker_options", None) or {})}
    options: dict[str, Any] = dict(
        interface="lo",
        nthreads=lay.threads_per_node,
        memory_limit=lay.memory_per_node,
        dashboard_address="127.0.0.1:0",
        protocol=config.protocol,
        worker_options=worker_options,
        comm=comm,
    )
    options.update(kwargs)
    if rank != SCHEDULER_RANK:
        return bool(dask_mpi.initialize(**options))
    preload = list(dask.config.get("distributed.scheduler.preload"))
    if SCHEDULER_PRELOAD not in preload:
        preload.append(SCHEDULER_PRELOAD)
    with dask.config.set({"distributed.scheduler.preload": preload}):
        return bool(dask_mpi.initialize(**options))
