"""What a worker offers: cores, memory, GPUs, qsim builds and the widest circuit.

The resource model and its helpers live in :mod:`qdask.resources` (the bottom
layer, shared with the scheduler side); this module detects them on a worker.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from qdask import config
from qdask.resources import (  # noqa: F401 - re-exported: worker.discovery was their home
    BYTES_PER_AMPLITUDE,
    GPU,
    QUANTUM,
    STATEVECTOR_BYTES,
    GPUInfo,
    detect_gpus,
    max_qubits_for,
    qsim_gpu_usable,
    qsim_isa,
    statevector_bytes,
    usable_cores,
)

logger = logging.getLogger(__name__)


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



def available_backends() -> list[str]:
    """Names of the quantum backends importable in this process."""
    # Start-up cost: the backends load cirq, and the scheduler imports this module for
    # Capabilities alone (tests/test_deploy_cli.py keeps its preload free of cirq).
    from qdask.quantum.backends import backend_names

    return backend_names()


def discover(
    *,
    nthreads: int,
    memory_limit: int | None,
    quantum: bool = True,
    cost_model: dict[str, float] | None = None,
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
    cost_model : dict, optional
        qsim's speed on this host (:meth:`qdask.quantum.cost.CostModel.to_dict`),
        measured by the process that started the worker; default: measured now.
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
        cost_model=(dict(cost_model) if cost_model is not None else _calibrate()) if quantum else {},
    )


def _calibrate() -> dict[str, float]:
    # Imported here for start-up cost: qdask.quantum.cost loads cirq, which a
    # process that only reads Capabilities (the scheduler) never needs.
    from qdask.quantum.cost import measured_here

    return measured_here().to_dict()
