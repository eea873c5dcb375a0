"""TLS clusters, clear refusals of clients that do not match, and loopback-only listeners."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import psutil
import pytest
from distributed.comm.addressing import get_address_host_port

from qdask import ClusterConfig, QuantumCluster
from qdask._compat import scheduler_workers
from qdask.deploy.connect import speaks_tls
from qdask.worker.discovery import QUANTUM


@pytest.fixture(scope="module")
def tls_cluster():
    with QuantumCluster(ClusterConfig(protocol="tls", num_nodes=1, memory_per_node="1GiB")) as qc:
        yield qc


def test_tls_cluster_runs_a_task(tls_cluster):
    assert tls_cluster.scheduler_address.startswith("tls://127.0.0.1:")
    assert tls_cluster.security.require_encryption
    [row] = tls_cluster.resources()
    assert row["worker"].startswith("tls://127.0.0.1:")
    assert row["resources"][QUANTUM] == 1
    client = tls_cluster.get_client()
    assert client.submit(pow, 2, 10, resources={QUANTUM: 1}).result() == 1024


def test_plain_tcp_client_is_refused_with_the_fix(tls_cluster):
    # Dask refuses it with "Connection reset by peer"; qdask says why and what to do.
    tls_address = tls_cluster.scheduler_address
    tcp_address = tls_address.replace("tls://", "tcp://")
    with pytest.raises(ValueError) as info:
        QuantumCluster(address=tcp_address)
    message = str(info.value)
    assert f"the scheduler at {tcp_address} requires TLS" in message
    assert f"connect to {tls_address}" in message
    assert "security=Security(" in message


def test_tls_client_without_certificates_gets_a_clear_error(tls_cluster):
    # Dask's own error ("TLS expects a `ssl_context` argument ... Instead got
    # None") names neither the scheduler nor the fix.
    address = tls_cluster.scheduler_address
    with pytest.raises(ValueError) as info:
        QuantumCluster(address=address)
    assert f"the scheduler at {address} requires TLS: pass security=Security(" in str(info.value)
    # With the cluster's certificates the same call attaches.
    with QuantumCluster(address=address, security=tls_cluster.security) as qc:
        assert len(qc.resources()) == 1


def test_tls_probe_tells_tls_from_plain_servers(tls_cluster, cluster2):
    _, tls_location = tls_cluster.scheduler_address.split("://")
    _, tcp_location = cluster2.scheduler_address.split("://")
    assert speaks_tls(tls_location)
    assert not speaks_tls(tcp_location, timeout=0.5)


def _listening(pid: int) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    }


def test_default_local_cluster_listens_on_loopback_only(cluster2):
    client = cluster2.get_client()
    workers = scheduler_workers(client)
    assert len(workers) == 2
    # { pid: ports it must listen on }. The scheduler, its dashboard and the
    # nannies live in this process (LocalCluster); each worker in its own.
    expected: dict[int, set[int]] = {
        os.getpid(): {get_address_host_port(cluster2.scheduler_address)[1], urlsplit(cluster2.dashboard_link).port}
    }
    for address, pid in client.run(os.getpid).items():
        expected.setdefault(pid, set()).add(get_address_host_port(address)[1])
        # Not the worker's parent: workers are forked from Python's forkserver (qdask.deploy.forkserver).
        expected[os.getpid()].add(get_address_host_port(workers[address]["nanny"])[1])
    assert len(expected) == 3 and len(expected[os.getpid()]) == 4
    for pid, ports in expected.items():
        listening = _listening(pid)
        # Worker processes also serve /metrics over HTTP: every socket counts.
        assert {ip for ip, _ in listening} == {"127.0.0.1"}, (pid, listening)
        assert ports <= {port for _, port in listening}, (pid, ports, listening)
