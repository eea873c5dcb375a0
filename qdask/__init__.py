"""qdask: Dask distributed as a quantum-classical machine.

Examples
--------
>>> import qdask
>>> with qdask.QuantumCluster() as qc:  # doctest: +SKIP
...     sampler = qdask.Sampler(qc.get_client())
"""

from __future__ import annotations

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
from qdask.deploy.cluster import QuantumCluster
from qdask.quantum.backends import backend_names as backends
from qdask.quantum.sampler import Sampler
from qdask.quantum.simulator import Simulator

__version__ = "0.1.0"

__all__ = [
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
