"""The worker plugin that discovers hardware and advertises it to the scheduler."""

from __future__ import annotations

import ctypes
import logging
from typing import TYPE_CHECKING, Any

from dask.utils import parse_bytes
from distributed import WorkerPlugin
from distributed.core import Status

from qdask import _compat, config
from qdask.monitoring.worker import METRIC, WorkerMetrics
from qdask.worker.discovery import Capabilities, discover

if TYPE_CHECKING:
    from distributed import Worker

logger = logging.getLogger(__name__)

#: Topic of the event a worker sends when its capabilities change after it registered.
CAPABILITIES_TOPIC = "qdask-capabilities"
#: Key of the capabilities in the worker's startup information (``WorkerState.extra``).
STARTUP_KEY = "qdask"

ROLES = ("quantum", "classical")
#: Seconds a closing worker waits for a heartbeat in flight (one takes milliseconds).
HEARTBEAT_DRAIN = 2.0


class QuantumWorkerPlugin(WorkerPlugin):
    """Detect the worker's hardware and advertise it as Dask resources.

    Installed at worker start (``Worker(plugins=...)``, the ``qdask.plugins.worker``
    preload) the resources are part of the worker's registration, so the first
    task already sees them. Registered later (``Client.register_plugin``) the
    worker updates the scheduler with ``Worker.set_resources`` and an event.

    Parameters
    ----------
    role : {"quantum", "classical"}, default "quantum"
        Quantum workers expose ``quantum`` slots and ``statevector_bytes``;
        classical workers expose neither, so circuits never land there.
    noise : dict, optional
        Emulated device noise of a quantum worker, e.g. ``{"gate_error": 0.01,
        "readout_error": 0.02}`` (:class:`qdask.hybrid.noise.DeviceNoise`);
        default ``qdask.worker.noise`` on the worker.
    cost_model : dict, optional
        qsim's speed on the worker's host
        (:meth:`qdask.quantum.cost.CostModel.to_dict`), measured by the
        process that starts the worker on that host; default: the worker
        measures it at its start (~0.1 s).
    """

    name = "qdask-worker"
    idempotent = True

    def __init__(
        self, role: str = "quantum", noise: dict[str, float] | None = None, cost_model: dict[str, float] | None = None
    ) -> None:
        if role not in ROLES:
            raise ValueError(
                f"QuantumWorkerPlugin(role={role!r}) is invalid: allowed {ROLES}. "
                "Fix: QuantumWorkerPlugin(role='quantum')."
            )
        self.role = role
        from qdask.hybrid.noise import DeviceNoise  # here: the scheduler preload imports this module, not cirq

        DeviceNoise.coerce(noise)  # validates; a plain dict travels to the worker
        self.noise = noise
        self.cost_model = cost_model

    async def setup(self, worker: Worker) -> None:
        caps = discover(
            nthreads=worker.state.nthreads,
            memory_limit=worker.memory_manager.memory_limit,
            quantum=self.role == "quantum",
            cost_model=self.cost_model,
        )
        worker.qdask_capabilities = caps  # type: ignore[attr-defined]
        # Latency, bytes sent and per-GPU readings ride on every heartbeat.
        worker.metrics[METRIC] = WorkerMetrics([g.index for g in caps.gpus])
        # Resources the user declared explicitly (--resources) win over discovery.
        declared = worker.state.total_resources
        resources = {k: v for k, v in caps.resources().items() if k not in declared}
        if worker.status == Status.init:
            # Not registered yet: the registration message carries both.
            _compat.declare_resources_before_registration(worker, resources)
            worker.startup_information[STARTUP_KEY] = _startup_info
        else:
            if resources:
                await worker.set_resources(**resources)
            worker.log_event(CAPABILITIES_TOPIC, {"capabilities": caps.to_dict()})
        if self.role == "quantum":
            reuse = config.get("worker.heap-reuse")
            if reuse is not None and not reuse_freed_memory(parse_bytes(reuse)):
                logger.info("qdask: no glibc mallopt here; qdask.worker.heap-reuse has no effect")
            from qdask.hybrid import noise as device

            noise = device.DeviceNoise.coerce(self.noise if self.noise is not None else config.get("worker.noise"))
            if noise is not None:
                device.install(worker, noise)
        logger.info(
            "qdask %s worker: %d slot(s), %d-qubit max, qsim %s%s",
            caps.role,
            caps.nthreads,
            caps.max_qubits,
            caps.qsim_isa,
            f", {len(caps.gpus)} GPU(s)" if caps.gpus else "",
        )


    async def teardown(self, worker: Worker) -> None:
        # Worker.close removes the plugins before it closes its connections: a heartbeat
        # still in flight then would fail, and be logged as an error with a traceback
        # (seen after Ctrl-C of `qdask demo --keep`). No new one; the last may finish.
        if worker.status == Status.closing:
            await _compat.let_heartbeat_finish(worker, timeout=HEARTBEAT_DRAIN)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_freed_memory(limit: int) -> bool:
    """Serve blocks under ``limit`` bytes from the heap and keep up to ``2 * limit`` freed (glibc).

    qsim allocates a new state vector (and scratch) for every simulation.
    Mapped afresh, each costs a page fault per 4 KiB plus zeroing, twice over
    when two workers fault at once; reused, none. Sets this process's
    ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (what Dask's
    ``MALLOC_TRIM_THRESHOLD_`` sets at start). Returns False where there is no
    glibc ``mallopt`` (macOS, musl) or it refused the value.
    """
    if not 0 < limit <= 2**30:
        raise ValueError(
            f"qdask.worker.heap-reuse of {limit} bytes is out of range (1 B to 1 GiB). "
            "Fix: a size such as 32MiB, or null to leave glibc's settings alone."
        )
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * limit))


def _startup_info(worker: Worker) -> dict[str, Any]:
    caps: Capabilities = worker.qdask_capabilities  # type: ignore[attr-defined]
    return caps.to_dict()
