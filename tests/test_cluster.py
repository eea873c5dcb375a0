"""QuantumCluster on real multi-process local clusters."""

from __future__ import annotations

import os
import signal
import threading
import time

import dask
import psutil
import pytest
from _processes import is_helper
from distributed import Client

from qdask import ClusterConfig, HybridConfig, QuantumCluster
from qdask.deploy import forkserver
from qdask.quantum.cost import measured_here
from qdask.worker.discovery import QUANTUM, STATEVECTOR_BYTES, detect_gpus

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(10)


def _wait(predicate, timeout=2.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_every_worker_capability_reaches_the_scheduler(cluster2):
    table = cluster2.resources()
    assert len(table) == 2
    for row in table:
        assert row["role"] == "quantum"
        assert row["nthreads"] == 1
        assert row["memory_limit"] == 2 * 2**30
        assert row["max_qubits"] == 27
        assert row["resources"][QUANTUM] == 1
        assert row["resources"][STATEVECTOR_BYTES] == int(0.75 * 2 * 2**30)
        assert "qsim" in row["backends"]
        assert row["worker"].startswith("tcp://127.0.0.1:")
    assert "worker" in str(table) and "quantum" in str(table)


def test_used_resources_are_counted_while_a_task_runs(cluster2):
    client = cluster2.get_client()
    fut = client.submit(time.sleep, 1.5, resources={QUANTUM: 1, STATEVECTOR_BYTES: 1000}, pure=False)
    assert _wait(lambda: any(r["used_resources"].get(QUANTUM) == 1 for r in cluster2.resources()), timeout=5)
    busy = [r for r in cluster2.resources() if r["used_resources"].get(QUANTUM) == 1]
    assert busy[0]["used_resources"][STATEVECTOR_BYTES] == 1000
    fut.result()


def test_join_and_kill_show_in_resources_within_2s():
    with QuantumCluster(ClusterConfig(num_nodes=1, memory_per_node="1GiB")) as qc:
        assert len(qc.resources()) == 1
        qc.cluster.scale(2)
        t0 = time.monotonic()
        qc.get_client().wait_for_workers(2, timeout=30)
        # The worker is in resources() as soon as it registered with the scheduler.
        assert _wait(lambda: len(qc.resources()) == 2, timeout=2), qc.resources()
        new = [r for r in qc.resources() if r["joined"] is not None]
        assert all(r["role"] == "quantum" for r in new)

        victim = qc.resources()[1]["worker"]
        pid = qc.get_client().run(os.getpid, workers=[victim])[victim]
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        assert _wait(lambda: victim not in qc.resources().column("worker"), timeout=2)
        elapsed = time.monotonic() - t0
        leave = [e for e in qc.registry_events() if e["action"] == "leave" and e["worker"] == victim]
        assert leave and leave[0]["cause"] == "died"
        assert elapsed < 2


def test_workers_fork_from_a_server_that_imported_cirq_and_qsim(cluster2):
    # qdask.worker.start-method: forkserver (the default): without a GPU a
    # worker is forked from a server that preloaded what the worker plugin
    # imports; where NVML sees a GPU (the lent GPU machine) it is spawned as
    # Dask does. Either way the worker has qsim and its plugin.
    client = cluster2.get_client()
    parents = [" ".join(c) for c in client.run(lambda: psutil.Process().parent().cmdline()).values()]
    assert len(parents) == 2
    method = dask.config.get("distributed.worker.multiprocessing-method")
    if detect_gpus():
        assert method == "spawn" and not any("multiprocessing.forkserver" in p for p in parents), parents
    else:
        assert method == "forkserver"
        for server in parents:
            assert "multiprocessing.forkserver" in server
            preloaded = [*forkserver.PRELOAD, *dask.config.get(forkserver.ROUTES_KEY)]
            assert all(repr(m) in server for m in preloaded), server
    assert all(r["resources"].get(QUANTUM) for r in cluster2.resources())


def test_local_workers_start_with_this_process_measurement_of_qsim(cluster2):
    # Measured once where the cluster starts (qdask.quantum.cost.measured_here), not at
    # each worker's start: a restarted or added worker waits for no measurement.
    here = measured_here().to_dict()
    assert all(v > 0 for v in here.values()), here
    assert [r["cost_model"] for r in cluster2.resources()] == [here, here]


def test_worker_start_method_is_checked():
    with dask.config.set({"qdask.worker.start-method": "fork"}):
        with pytest.raises(ValueError, match="start-method='fork' is invalid.*forkserver.*spawn.*Fix"):
            forkserver.use_preloaded_forkserver()


def test_graceful_leave_is_told_apart():
    with QuantumCluster(ClusterConfig(num_nodes=2, memory_per_node="1GiB")) as qc:
        client = qc.get_client()
        victim = qc.resources()[0]["worker"]
        client.retire_workers([victim], close_workers=True)
        assert _wait(lambda: victim not in qc.resources().column("worker"), timeout=5)
        leave = [e for e in qc.registry_events() if e["action"] == "leave" and e["worker"] == victim]
        assert leave[0]["cause"] == "graceful"


def test_quantum_devices_and_hybrid_roles():
    with QuantumCluster(ClusterConfig(num_nodes=2, quantum_devices=1, memory_per_node="1GiB")) as qc:
        roles = sorted(r["role"] for r in qc.resources())
        assert roles == ["classical", "quantum"]
        classical = [r for r in qc.resources() if r["role"] == "classical"][0]
        assert QUANTUM not in classical["resources"]
    with QuantumCluster(
        ClusterConfig(memory_per_node="1GiB"), hybrid=HybridConfig(classical_nodes=1, quantum_nodes=1)
    ) as qc:
        assert sorted(r["role"] for r in qc.resources()) == ["classical", "quantum"]


def _children():
    """Our child processes, less multiprocessing's per-interpreter helpers."""
    return [
        p for p in psutil.Process().children(recursive=True)
        if not is_helper(p)
    ]


def test_close_leaves_no_child_process_thread_or_file():
    me = psutil.Process()
    threads_before = me.num_threads()
    before = {p.pid for p in _children()}  # e.g. the module's shared cluster
    qc = QuantumCluster(ClusterConfig(num_nodes=2, memory_per_node="1GiB"))
    ours = [p for p in _children() if p.pid not in before]
    assert len(ours) >= 2
    tmpdir = qc._tmpdir
    assert os.path.isdir(tmpdir)
    qc.close()
    assert _wait(lambda: not any(p.is_running() for p in ours), timeout=10), ours
    assert not os.path.exists(tmpdir)
    assert _wait(lambda: me.num_threads() <= threads_before + 1, timeout=10)
    assert repr(qc) == "<QuantumCluster closed>"


def test_a_worker_close_that_times_out_still_closes_its_nanny():
    """Dask's Nanny raises ``TimeoutError`` when its killed worker is not reaped within the close
    timeout and stays ``closing`` for good, so each later close of it (LocalCluster's own, every
    ``scale``) waits forever. qdask's Nanny waits for the reap and finishes the close."""
    from qdask.deploy.nannies import QuantumNanny

    qc = QuantumCluster(ClusterConfig(num_nodes=2, memory_per_node="1GiB"))
    name, nanny = next(iter(qc.cluster.workers.items()))
    assert isinstance(nanny, QuantumNanny) and qc.cluster.new_spec["cls"] is QuantumNanny
    pid = nanny.pid
    os.kill(pid, signal.SIGSTOP)  # deaf to the stop message: the close goes on to SIGKILL
    # No time left to reap it after the SIGKILL: Dask's own Nanny raises TimeoutError here.
    assert qc.cluster.sync(nanny.close, timeout=0.01) == "OK"
    assert nanny.status.name == "closed"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    others = [w.pid for w in qc.cluster.workers.values() if w is not nanny]
    closer = threading.Thread(target=lambda: (qc.cluster.scale(1), qc.close()), daemon=True)
    closer.start()
    closer.join(90)
    assert not closer.is_alive(), "scale or close hung on the worker closed above"
    assert _wait(lambda: not any(psutil.pid_exists(p) for p in [pid, *others]), timeout=10)


def test_dashboard_and_listeners_are_on_loopback(cluster2):
    link = cluster2.dashboard_link
    assert link.startswith("http://127.0.0.1:")
    assert cluster2.scheduler_address.startswith("tcp://127.0.0.1:")


def test_attach_mode_installs_plugins_on_a_plain_scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      memory_limit="1GiB") as plain:
        with QuantumCluster(address=plain.scheduler_address) as qc:
            assert _wait(lambda: len(qc.resources()) == 1 and qc.resources()[0]["role"] == "quantum", timeout=10)
            row = qc.resources()[0]
            assert row["resources"][QUANTUM] == 1
            # A worker of another cluster measures qsim itself, at its start.
            assert row["cost_model"] and row["cost_model"] != measured_here().to_dict()
        # Detaching does not stop the foreign cluster.
        with Client(plain, set_as_default=False) as c:
            assert len(c.nthreads()) == 1

