"""One builder for what qdask adds to schedulers and workers.

Used alike by :class:`~qdask.deploy.cluster.QuantumCluster`, the
``qdask.plugins.*`` preloads for the ``dask`` CLI and the MPI launcher, so
that every way of starting a cluster installs the same plugins.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from qdask.config import ClusterConfig, ConfigError, HybridConfig
from qdask.resources import GPUInfo, usable_cores
from qdask.scheduler.plugin import QuantumSchedulerPlugin
from qdask.worker.plugin import QuantumWorkerPlugin


def scheduler_plugins(optimization_level: str | None = None) -> list[QuantumSchedulerPlugin]:
    """Scheduler plugins of a qdask cluster (``optimization_level``: the cluster's, see docs/hybrid.md)."""
    return [QuantumSchedulerPlugin(optimization_level=optimization_level)]


def worker_plugins(role: str = "quantum", noise: dict[str, float] | None = None) -> list[QuantumWorkerPlugin]:
    """Worker plugins for a worker of ``role`` ("quantum" or "classical"), emulating ``noise`` if given."""
    return [QuantumWorkerPlugin(role=role, noise=noise)]


@dataclass(frozen=True)
class Layout:
    """How many workers of each role, with threads and memory each (and GPUs per quantum worker)."""

    quantum: int
    classical: int
    threads_per_node: int
    memory_per_node: int
    gpu_per_node: int = 0

    @property
    def total(self) -> int:
        return self.quantum + self.classical


def layout(config: ClusterConfig, hybrid: HybridConfig | None = None) -> Layout:
    """Resolve "auto" values of the configs into a concrete worker layout.

    ``num_nodes="auto"`` means one single-threaded worker per usable core;
    ``quantum_devices="auto"`` makes every worker a quantum worker. A
    :class:`HybridConfig` overrides both with its explicit group sizes.
    """
    if hybrid is not None:
        quantum, classical = hybrid.quantum_nodes, hybrid.classical_nodes
    else:
        n = usable_cores() if config.num_nodes == "auto" else int(config.num_nodes)
        quantum = n if config.quantum_devices == "auto" else int(config.quantum_devices)
        classical = n - quantum
    total = quantum + classical
    if config.memory_per_node == "auto":
        memory = int(psutil.virtual_memory().total / max(total, 1))
    else:
        memory = int(config.memory_per_node)
    gpus = hybrid.gpu_per_node if hybrid is not None else 0
    return Layout(quantum, classical, config.threads_per_node, memory, gpus)


def gpu_assignment(lay: Layout, gpus: list[GPUInfo]) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each quantum worker of a hybrid layout with GPUs.

    Each quantum worker gets ``gpu_per_node`` GPUs of its own, taken from
    those with the most free memory (:func:`qdask.deploy.gpu.select_gpus`),
    in index order.

    Raises
    ------
    ConfigError
        When fewer GPUs are visible than the quantum workers need.

    Examples
    --------
    >>> gpus = [GPUInfo(i, "H200", 2**37, 2**37) for i in range(4)]
    >>> gpu_assignment(Layout(2, 1, 1, 2**30, gpu_per_node=2), gpus)
    ['0,1', '2,3']
    """
    from qdask.deploy.gpu import select_gpus

    need = lay.quantum * lay.gpu_per_node
    visible = ", ".join(f"{g.index}: {g.name}" for g in gpus) or "none (NVML)"
    if need > len(gpus):
        raise ConfigError(
            "HybridConfig", "gpu_per_node", lay.gpu_per_node,
            f"at most {len(gpus) // max(lay.quantum, 1)} for {lay.quantum} quantum worker(s) "
            f"(visible GPUs: {visible})",
            "pass HybridConfig(gpu_per_node=0) for CPU quantum workers, fewer quantum_nodes, "
            "or run where NVML sees enough GPUs (check CUDA_VISIBLE_DEVICES).",
        )  # fmt: skip
    chosen = [g.index for g in select_gpus(need, gpus)]
    per = lay.gpu_per_node
    return [",".join(map(str, chosen[i * per:(i + 1) * per])) for i in range(lay.quantum)]
