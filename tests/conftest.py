"""Shared fixtures: real multi-process qdask clusters on loopback."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import dask
import pytest

from qdask import ClusterConfig, QuantumCluster


@pytest.fixture(scope="module")
def cluster2():
    """A two-worker embedded cluster shared by a test module (read-only use)."""
    with QuantumCluster(ClusterConfig(num_nodes=2, memory_per_node="2GiB")) as qc:
        yield qc


@pytest.fixture(autouse=True, scope="module")
def _dask_config_as_collected() -> Iterator[None]:
    """Each module leaves dask.config as it found it.

    ``gen_cluster`` resets the config to its snapshot from when
    ``distributed.utils_test`` was imported (``reset_config``), which drops the
    defaults of libraries imported after it, such as dask-jobqueue's
    ``jobqueue`` section: a later module using them would fail with KeyError.
    """
    saved = copy.deepcopy(dask.config.config)
    yield
    dask.config.config.clear()
    dask.config.config.update(saved)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked ``long(seconds)`` first, longest first; the others after them, in their order.

    ``make test`` hands whole modules to its pytest-xdist workers (``--dist
    loadscope``: a module's cluster fixture starts once) in the order of their
    first test here (``--no-loadscope-reorder``; by default xdist orders them by
    their number of tests). Longest first keeps a long module begun late from
    holding one worker after the others have finished. Tests keep their order
    within a module.
    """

    def seconds(item: pytest.Item) -> float:
        marker = item.get_closest_marker("long")
        return float(marker.args[0]) if marker is not None else 0.0

    items.sort(key=lambda item: -seconds(item))
