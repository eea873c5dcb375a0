"""Resource facts every layer shares: Dask resource names, state-vector sizes, GPUs.

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
(``ws.used_resources``) are Dask's own. This module is the bottom layer
(``docs/architecture.md``): it imports nothing of qdask.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import psutil

logger = logging.getLogger("qdask.worker.discovery")  # the logger these helpers always used

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



def statevector_bytes(num_qubits: float, workspace: float = 1.0) -> int:
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
