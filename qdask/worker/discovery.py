"""What a worker offers: cores, memory, GPUs, qsim builds and the widest circuit.

The resource model (see ``docs/resources.md``):

* ``quantum`` -- one slot per worker thread on workers that run circuits. qsim's
  Python binding holds the GIL, so one circuit per thread slot; qsim's own
  ``cpu_threads`` parallelises inside a circuit.
* ``statevector_bytes`` -- the bytes of state vector the worker may hold at
  once: ``statevector-fraction`` of its memory limit. A circuit task asks for
  ``workspace * 8 * 2**n`` of it, so Dask places it only where it fits and
  never runs two that together would not.
* ``gpu`` -- GPUs of the worker (from NVML), consumed one per GPU circuit.

All three are plain Dask worker resources, so placement and accounting
(``ws.used_resources``) are Dask's own.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from qdask import config

logger = logging.getLogger(__name__)

#: Resource names advertised by quantum workers.
QUANTUM = "quantum"
STATEVECTOR_BYTES = "statevector_bytes"
GPU = "gpu"

#: Key of the task annotation that carries a circuit task's requirements and cost
#: (``dask.annotate(qdask={...})``): read by placement, balancing, elastic scaling
#: and monitoring on the scheduler.
ANNOTATION = "qdask"

#: Bytes per amplitude of qsim's complex64 state vector.
BYTES_PER_AMPLITUDE = 8

_ISA_NAMES = {0: "avx512", 1: "avx2", 2: "sse4", 3: "basic"}


@dataclass(frozen=True)
class GPUInfo:
    """One GPU as NVML reports it (no CUDA context is created)."""

    index: int
    name: str
    total_memory: int
    free_memory: int


@dataclass(frozen=True)
class Capabilities:
    """Everything a worker advertises to the scheduler.

    Attributes
    ----------
    role : {"quantum", "classical"}
        Whether the worker runs circuits.
    cores : int
        CPU cores usable by this process (affinity mask).
    nthreads : int
        Dask worker threads; equals the quantum slots on quantum workers.
    memory_limit : int
        The worker's memory limit in bytes.
    statevector_bytes : int
        State-vector budget in bytes (``statevector-fraction * memory_limit``).
    max_qubits : int
        Widest circuit the worker can sample (complex64, sampling workspace).
    qsim_isa : str
        SIMD build qsim loads here ("avx512", "avx2", "sse4", "basic").
    qsim_gpu : bool
        A GPU build of qsim is installed and a GPU is present.
    gpus : list of GPUInfo
        GPUs visible to the worker.
    backends : list of str
        Quantum backends importable on the worker.
    host : str
        Host name.
    cost_model : dict
        qsim speed measured on this worker (:class:`qdask.quantum.cost.CostModel`).
    """

    role: str
    cores: int
    nthreads: int
    memory_limit: int
    statevector_bytes: int
    max_qubits: int
    qsim_isa: str
    qsim_gpu: bool
    gpus: list[GPUInfo] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    host: str = ""
    cost_model: dict[str, float] = field(default_factory=dict)

    def resources(self) -> dict[str, float]:
        """Dask worker resources for these capabilities (empty for classical workers)."""
        if self.role != "quantum":
            return {}
        res: dict[str, float] = {
            QUANTUM: float(self.nthreads),
            STATEVECTOR_BYTES: float(self.statevector_bytes),
        }
        if self.gpus:
            res[GPU] = float(len(self.gpus))
        return res

    def to_dict(self) -> dict[str, Any]:
        """Msgpack-friendly form, as sent to the scheduler."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Capabilities:
        d = dict(d)
        d["gpus"] = [GPUInfo(**g) for g in d.get("gpus", [])]
        return cls(**d)


def statevector_bytes(num_qubits: int, workspace: float = 1.0) -> int:
    """Bytes qsim needs for an ``num_qubits``-wide complex64 state vector times ``workspace``."""
    return int(math.ceil(workspace * BYTES_PER_AMPLITUDE * 2.0**num_qubits))


def max_qubits_for(budget_bytes: float, workspace: float = 1.0) -> int:
    """Widest state vector that fits in ``budget_bytes`` with ``workspace`` overhead."""
    per = workspace * BYTES_PER_AMPLITUDE
    if budget_bytes < per * 2:
        return 0
    return int(math.floor(math.log2(budget_bytes / per)))


def usable_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and cgroups' cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return psutil.cpu_count() or 1


def qsim_isa() -> str:
    """The SIMD instruction set qsimcirq's CPU build uses here."""
    from qsimcirq import qsim_decide

    return _ISA_NAMES.get(qsim_decide.detect_instructions(), "basic")


def detect_gpus() -> list[GPUInfo]:
    """GPUs visible to this process, through NVML only.

    Never creates a CUDA context (that would pin memory on every GPU and, with a
    GPU build of qsim on a GPU-less host, can kill the process). Honours
    ``CUDA_VISIBLE_DEVICES`` when it lists integer indices.
    """
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        logger.debug("NVML unavailable: %s", e)
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
        indices = list(range(count))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            try:
                indices = [int(i) for i in visible.split(",") if i.strip() != ""]
            except ValueError:  # UUIDs: keep NVML's order
                pass
        gpus = []
        for i in indices:
            if not 0 <= i < count:
                continue
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append(
                GPUInfo(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    total_memory=int(mem.total),
                    free_memory=int(mem.free),
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def qsim_gpu_usable(gpus: list[GPUInfo]) -> bool:
    """A GPU build of qsim is installed *and* a GPU is present.

    qsimcirq's GPU module kills the process at the first simulation when no
    device exists, so both must hold before anything routes work to it.
    """
    if not gpus:
        return False
    try:
        import qsimcirq
    except ImportError:
        return False
    return getattr(qsimcirq, "qsim_gpu", None) is not None


def available_backends() -> list[str]:
    """Names of the quantum backends importable in this process."""
    from qdask.quantum.backends import backend_names

    return backend_names()


def discover(
    *,
    nthreads: int,
    memory_limit: int | None,
    quantum: bool = True,
) -> Capabilities:
    """Detect this process's hardware and derive the worker's capabilities.

    Parameters
    ----------
    nthreads : int
        Worker threads (quantum slots on a quantum worker).
    memory_limit : int or None
        Worker memory limit in bytes; None or 0 means system memory.
    quantum : bool, default True
        Whether this worker runs circuits (False for classical-only workers).
    """
    limit = int(memory_limit or psutil.virtual_memory().total)
    budget = int(config.get("worker.statevector-fraction") * limit)
    gpus = detect_gpus()
    return Capabilities(
        role="quantum" if quantum else "classical",
        cores=usable_cores(),
        nthreads=int(nthreads),
        memory_limit=limit,
        statevector_bytes=budget if quantum else 0,
        max_qubits=max_qubits_for(budget, config.get("worker.sampling-workspace")) if quantum else 0,
        qsim_isa=qsim_isa(),
        qsim_gpu=qsim_gpu_usable(gpus),
        gpus=gpus,
        backends=available_backends() if quantum else [],
        host=socket.gethostname(),
        cost_model=_calibrate() if quantum else {},
    )


def _calibrate() -> dict[str, float]:
    from qdask.quantum.cost import CostModel

    return CostModel.calibrate().to_dict()
