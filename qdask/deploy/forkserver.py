"""Local worker processes forked from a server that has imported cirq and qsim already.

Dask spawns each worker process afresh (``distributed.worker.multiprocessing-method:
spawn``): a new interpreter that imports distributed, then, in the qdask worker
plugin, cirq and qsimcirq. On 2 cores that took 1.7-1.8 s per added worker, most
of it cirq's import (matplotlib, pandas, scipy, sympy). Dask's own
``forkserver`` method, with these modules in the server's preload list, forks
each worker from an interpreter that has them: 0.2 s from ``cluster.scale`` to
a registered worker. That is what elastic scaling, a worker joining mid-batch
and every restart after a failure wait for.

The server is Python's: one per interpreter, started with the first worker and
kept until the interpreter exits (as multiprocessing's resource tracker is).
It is not used where a GPU is visible: qsimcirq's import asks CUDA for its
devices, and a CUDA runtime initialised before a fork is unusable in the child.
"""

from __future__ import annotations

import logging

import dask.config

from qdask import _compat, config
from qdask.resources import detect_gpus

logger = logging.getLogger(__name__)

#: What the server imports before it forks any worker: what the worker plugin needs,
#: including the modules of the built-in backends, which its setup loads
#: (``qdask.quantum.backends.registry``; stimcirq only where the ``clifford`` extra
#: is installed: the server skips a preload that raises ImportError). The server
#: also imports the worker's HTTP routes (``distributed.worker.http.routes``, with
#: prometheus_client), which ``Worker.start`` would import in each worker.
PRELOAD = (
    "distributed", "cirq", "qsimcirq", "qdask.worker.plugin", "qdask.quantum.execute",
    "qdask.hybrid.schrodinger_feynman", "qdask.hybrid.noise", "stimcirq",
)
ROUTES_KEY = "distributed.worker.http.routes"
METHODS = ("forkserver", "spawn")
METHOD_KEY = "distributed.worker.multiprocessing-method"


def start_method() -> str:
    """``qdask.worker.start-method``, checked."""
    method = config.get("worker.start-method")
    if method not in METHODS:
        raise ValueError(
            f"qdask.worker.start-method={method!r} is invalid: allowed {METHODS}. "
            "Fix: 'forkserver' (workers forked with cirq and qsim imported) or 'spawn' (Dask's default)."
        )
    return method


def use_preloaded_forkserver() -> bool:
    """Start this process's local Dask workers from a preloaded forkserver, where that is safe.

    Sets ``distributed.worker.multiprocessing-method`` to ``forkserver`` for
    the rest of this process, so that workers added later (elastic scaling,
    restarts) start the same way. Returns whether workers start so: not with
    ``qdask.worker.start-method: spawn``, not where a GPU is visible, and not
    when the user chose another Dask method than its default.
    """
    wanted = start_method()
    if dask.config.get(METHOD_KEY) == "forkserver":  # set here before, or by the user
        return True
    if wanted != "forkserver" or dask.config.get(METHOD_KEY) != "spawn" or detect_gpus():
        return False
    dask.config.set({METHOD_KEY: "forkserver"})
    # Dask sets its own preload list at its first call; ours replaces it
    # before the server starts (with the first worker), and includes it:
    # cirq imports numpy, pandas and scipy, distributed the rest.
    preload = [*PRELOAD, *dask.config.get(ROUTES_KEY, [])]
    _compat.set_worker_forkserver_preload(preload)
    logger.debug("local workers fork from a server with %s imported", preload)
    return True
