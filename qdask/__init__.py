"""qdask: Dask distributed as a quantum-classical machine.

Examples
--------
>>> import qdask
>>> with qdask.QuantumCluster() as qc:  # doctest: +SKIP
...     sampler = qdask.Sampler(qc.get_client())
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qdask.config import (
    ClusterConfig,
    ConfigError,
    ElasticConfig,
    FaultToleranceConfig,
    HybridConfig,
    LoadBalancerConfig,
    MonitoringConfig,
    MultiGPUConfig,
)

if TYPE_CHECKING:
    from qdask.deploy.cluster import QuantumCluster
    from qdask.quantum.backends import backend_names as backends
    from qdask.quantum.errors import BatchError
    from qdask.quantum.sampler import Sampler
    from qdask.quantum.simulator import Simulator

__version__ = "0.1.0"

# Imported on first use (PEP 562): every worker, preload and CLI process
# imports the ``qdask`` package, and cirq alone costs seconds of start-up.
_LAZY = {
    "BatchError": ("qdask.quantum.errors", "BatchError"),
    "QuantumCluster": ("qdask.deploy.cluster", "QuantumCluster"),
    "Sampler": ("qdask.quantum.sampler", "Sampler"),
    "Simulator": ("qdask.quantum.simulator", "Simulator"),
    "backends": ("qdask.quantum.backends", "backend_names"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qdask' has no attribute {name!r}")

__all__ = [
    "BatchError",
    "ClusterConfig",
    "ConfigError",
    "ElasticConfig",
    "FaultToleranceConfig",
    "HybridConfig",
    "LoadBalancerConfig",
    "MonitoringConfig",
    "MultiGPUConfig",
    "QuantumCluster",
    "Sampler",
    "Simulator",
    "backends",
]
