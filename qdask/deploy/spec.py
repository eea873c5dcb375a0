"""One builder for what qdask adds to schedulers and workers.

Used alike by :class:`~qdask.deploy.cluster.QuantumCluster`, the
``qdask.plugins.*`` preloads for the ``dask`` CLI and the MPI launcher, so
that every way of starting a cluster installs the same plugins.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from qdask.config import ClusterConfig, HybridConfig
from qdask.resources import usable_cores
from qdask.scheduler.plugin import QuantumSchedulerPlugin
from qdask.worker.plugin import QuantumWorkerPlugin


def scheduler_plugins(optimization_level: str | None = None) -> list[QuantumSchedulerPlugin]:
    """Scheduler plugins of a qdask cluster (``optimization_level``: the cluster's, see docs/hybrid.md)."""
    return [QuantumSchedulerPlugin(optimization_level=optimization_level)]


def worker_plugins(
    role: str = "quantum", noise: dict[str, float] | None = None, *, local: bool = False
) -> list[QuantumWorkerPlugin]:
    """Worker plugins for a worker of ``role`` ("quantum" or "classical"), emulating ``noise`` if given.

    ``local``: for workers on this host, which get this process's measurement of
    qsim's speed (:func:`qdask.quantum.cost.measured_here`) instead of each
    taking its own at every start.
    """
    cost_model = None
    if local and role == "quantum":
        # Imported here for start-up cost: the dask CLI preloads import this module, not cirq.
        from qdask.quantum.cost import measured_here

        cost_model = measured_here().to_dict()
    return [QuantumWorkerPlugin(role=role, noise=noise, cost_model=cost_model)]


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
