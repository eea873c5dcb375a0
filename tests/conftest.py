"""Shared fixtures: real multi-process qdask clusters on loopback."""

from __future__ import annotations

import pytest

from qdask import ClusterConfig, QuantumCluster


@pytest.fixture(scope="module")
def cluster2():
    """A two-worker embedded cluster shared by a test module (read-only use)."""
    with QuantumCluster(ClusterConfig(num_nodes=2, memory_per_node="2GiB")) as qc:
        yield qc
