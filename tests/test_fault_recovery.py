"""Failure detection, handlers, redistribution, manual recovery, replicas and corrupt checkpoints,
on a real two-worker cluster whose workers are really killed, stopped and cut off.

Every test leaves the cluster with two running workers (killed ones are
restarted by their Nanny) and fault tolerance stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import time
from pathlib import Path

import cirq
import dask
import numpy as np
import pytest
import qsimcirq
from _polling import wait_for
from distributed import Event, SchedulerPlugin, wait
from test_fault_units import PATIENT, FailingGate, kill_worker, worker_pids

import qdask
from qdask import ClusterConfig, FaultToleranceConfig, QuantumCluster
from qdask.fault import NetworkError, NodeFailure, QuantumError, RecoveryEvent
from qdask.fault.checkpoint import decode
from qdask.quantum.sampler import _by_program
from qdask.worker.discovery import QUANTUM

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(27)

SLOT = {QUANTUM: 1}


def random_circuit(n: int, seed: int, depth: int = 8) -> cirq.Circuit:
    q = cirq.LineQubit.range(n)
    return cirq.testing.random_circuit(q, n_moments=depth, op_density=0.8, random_state=seed) + cirq.measure(
        *q, key="m")


@pytest.fixture(scope="module")
def qc():
    with dask.config.set(PATIENT), QuantumCluster(ClusterConfig(num_nodes=2, memory_per_node="1500MiB")) as cluster:
        yield cluster


@pytest.fixture
def client(qc):
    client = qc.get_client()
    yield client
    client.wait_for_workers(2, timeout=300)


@pytest.fixture
def events(qc):
    """Every failure event the client's handlers receive, in order."""
    seen: list = []
    for register in (qc.on_node_failure, qc.on_network_error, qc.on_quantum_error, qc.on_recovery):
        register(seen.append)
    yield seen
    handlers = qc._handlers()
    for kind in ("node_failure", "network_error", "quantum_error", "recovery"):
        handlers.remove(kind, seen.append)


def of(events: list, cls: type, **match) -> list:
    return [e for e in events if isinstance(e, cls) and all(getattr(e, k) == v for k, v in match.items())]


def state(qc: QuantumCluster, key: str) -> str | None:
    """The scheduler's state of ``key`` (None until the scheduler has it)."""
    ts = qc.cluster.scheduler.tasks.get(key)
    return ts.state if ts is not None else None


def two_workers(client) -> tuple[str, str]:
    """The two workers' addresses, once no task of an earlier test is still processing on them.

    A test that kills a worker asserts on exactly the tasks it lost, so it starts on idle workers.
    """
    wait_for(lambda: not any(client.processing().values()))
    a, b = sorted(worker_pids(client))
    return a, b


# -- detection --------------------------------------------------------------------
def set_worker_ttl(ttl: float, dask_scheduler=None) -> float:
    """Set the scheduler's worker-ttl (and its check's period); returns the previous one."""
    previous = dask_scheduler.worker_ttl
    dask_scheduler.worker_ttl = ttl
    pc = dask_scheduler.periodic_callbacks["worker-ttl"]
    pc.stop()
    pc.callback_time = 1000 * (ttl / 4 if ttl < 60 else ttl)  # Dask checks every worker-ttl
    pc.start()
    return previous


def set_no_workers_timeout(timeout: float | None, dask_scheduler=None) -> float | None:
    previous = dask_scheduler.no_workers_timeout
    dask_scheduler.no_workers_timeout = timeout
    return previous


def test_death_heartbeat_loss_and_graceful_leave_are_told_apart(qc, client, events, caplog):
    def broken(event):
        raise RuntimeError("a handler with a bug")

    qc.on_node_failure(broken)
    s = qc.cluster.scheduler
    # Graceful: a worker is retired (its data moved, then closed), then replaced.
    # Not cluster.scale(1): SpecCluster passes worker names where retire_workers
    # expects addresses, so it retires nothing and just closes the Nanny.
    retired = sorted(worker_pids(client))[0]
    name = s.workers[retired].name
    client.retire_workers([retired])
    wait_for(lambda: len(s.workers) == 1)
    del qc.cluster.worker_spec[name]  # a new name: SpecCluster would reuse the retired one
    qc.cluster.worker_spec[f"after-{name}"] = qc.cluster.new_spec
    qc.cluster.scale(2)
    client.wait_for_workers(2, timeout=300)
    # Death: SIGKILL.
    killed = kill_worker(client)
    wait_for(lambda: of(events, NodeFailure, worker=killed))
    client.wait_for_workers(2, timeout=300)
    # Lost heartbeat: a stopped process, with the scheduler's worker-ttl check made short.
    stopped, pid = next(iter(worker_pids(client).items()))
    ttl = client.run_on_scheduler(set_worker_ttl, 6.0)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: of(events, NodeFailure, worker=stopped))
    finally:
        with contextlib.suppress(ProcessLookupError):  # the Nanny may have killed it already
            os.kill(pid, signal.SIGKILL)
        client.run_on_scheduler(set_worker_ttl, ttl)
        qc._handlers().remove("node_failure", broken)
    failures = of(events, NodeFailure)
    assert [(e.worker, e.cause) for e in failures] == [(killed, "died"), (stopped, "heartbeat-lost")]
    # The graceful leave is in the registry, not among the failures.
    assert any(e["worker"] == retired and e["cause"] == "graceful" for e in qc.registry_events())
    assert "a handler with a bug" in caplog.text  # logged; the other handler still saw both
    assert qc.error_statistics().node_failures >= 2


def connect_to_closed_port(port: int) -> None:
    from distributed.comm import connect

    asyncio.run(connect(f"tcp://127.0.0.1:{port}", timeout=1))


def test_network_errors_failed_comm_and_lost_transfer(qc, client, events):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    failing = client.submit(connect_to_closed_port, port, pure=False)
    with pytest.raises(OSError):
        failing.result()
    comm = wait_for(lambda: of(events, NetworkError, cause="comm-error"))
    assert comm[0].keys == (failing.key,)

    a, b = two_workers(client)
    x = client.submit(np.ones, 2**16, workers=[a], pure=False)
    wait([x])

    def stop_listening(dask_worker):
        for listener in dask_worker.listeners:
            listener.stop()

    def connect_timeout(value):
        dask.config.set({"distributed.comm.timeouts.connect": value})

    client.run(stop_listening, workers=[a])
    client.run(connect_timeout, "1s", workers=[b])
    y = client.submit(np.sum, x, workers=[b], pure=False)
    try:
        lost = wait_for(lambda: of(events, NetworkError, cause="transfer-failed"))
    finally:
        client.cancel([y, x])
        client.run(connect_timeout, dask.config.get("distributed.comm.timeouts.connect"), workers=[b])
        kill_worker(client, a)  # cannot take connections any more: its Nanny restarts it
    assert lost[0].worker == b and lost[0].keys == (x.key,) and lost[0].peers == (a,)
    stats = qc.error_statistics()
    assert stats.network_errors >= 2


@pytest.mark.parametrize(
    "error, cause",
    [(MemoryError("CUDA error: out of memory"), "oom"), (ValueError("bad qubit count"), "validation"),
     (RuntimeError("kernel fault"), "backend")],
)
def test_quantum_errors_name_the_circuit_and_their_cause(qc, client, events, error, cause):
    q = cirq.LineQubit(0)
    # Measured mid-circuit: workers simulate the cirq gate itself (a circuit measured only at
    # the end travels in its compact form, its gates translated on the client).
    bad = cirq.Circuit(cirq.measure(q, key="pre"), FailingGate(error).on(q), cirq.measure(q, key="m"))
    circuits = [random_circuit(3, s) for s in range(3)] + [bad]
    before = qc.error_statistics().quantum_errors
    # The circuit's own error type reaches the caller (a qdask.BatchError with the 3 other results).
    with pytest.raises(type(error), match=f"circuit 3: {type(error).__name__}") as info:
        qdask.Sampler(client, seed=1, simulator="qsim").run_batch(circuits, repetitions=10)
    assert isinstance(info.value, qdask.BatchError) and sorted(info.value.results) == [0, 1, 2]
    assert "circuit 3 failed on backend 'qsim'" in info.value.errors[3].__notes__[-1]
    got = wait_for(lambda: of(events, QuantumError))
    assert (got[0].cause, got[0].circuit, got[0].backend) == (cause, 3, "qsim")
    assert got[0].worker in worker_pids(client) and type(error).__name__ in got[0].detail
    assert qc.error_statistics().quantum_errors == before + 1


# -- redistribution ---------------------------------------------------------------
def first_attempt_blocks(marker: str) -> float:
    """Hangs on its first attempt (after leaving ``marker``); returns its start time on the next."""
    started = time.time()
    if not os.path.exists(marker):
        Path(marker).touch()
        time.sleep(600)
    return started


def stamp(event_name: str | None = None) -> float:
    started = time.time()
    if event_name:
        Event(event_name).wait()
    return started


def test_dead_workers_task_runs_before_older_queued_work(qc, client, events, tmp_path):
    a, b = two_workers(client)
    gate = f"release-{tmp_path.name}"
    busy = client.submit(stamp, gate, workers=[b], resources=SLOT, pure=False)
    # Queued on b before x exists: older work, which Dask alone would run first.
    queued = [client.submit(stamp, workers=[b], resources=SLOT, pure=False) for _ in range(3)]
    wait_for(lambda: all(state(qc, f.key) == "processing" for f in queued))
    marker = str(tmp_path / "x-started")
    x = client.submit(first_attempt_blocks, marker, workers=[a], allow_other_workers=True, resources=SLOT,
                      pure=False)
    wait_for(lambda: os.path.exists(marker))
    kill_worker(client, a)
    failure = wait_for(lambda: of(events, NodeFailure, worker=a))[0]
    assert failure.keys == (x.key,) and failure.recovery.rescheduled == failure.recovery.interrupted == (x.key,)
    s = qc.cluster.scheduler
    wait_for(lambda: (ws := s.tasks[x.key].processing_on) is not None and ws.address == b)
    Event(gate, client=client).set()
    x_start, queued_starts = x.result(), client.gather(queued)
    assert s.tasks[x.key].who_has == {s.workers[b]}  # it ran where the older work waited
    busy.result()
    assert x_start < min(queued_starts)
    recovery = wait_for(lambda: of(events, RecoveryEvent, worker=a))[0]
    assert recovery.keys == (x.key,) and recovery.duration >= 0
    stats = qc.error_statistics()
    assert stats.recoveries >= 1 and stats.avg_recovery_time is not None


def test_manual_mode_holds_work_until_resubmitted_or_cancelled(qc, client, events, tmp_path):
    ft = qc.enable_fault_tolerance(FaultToleranceConfig(recovery_mode="manual", checkpoint_url=str(tmp_path / "ck")))
    s = qc.cluster.scheduler
    timeout = client.run_on_scheduler(set_no_workers_timeout, 2.0)  # held work must outlive it
    try:
        a, _ = two_workers(client)
        marker = str(tmp_path / "started")
        first = client.submit(first_attempt_blocks, marker, workers=[a], allow_other_workers=True, resources=SLOT,
                              pure=False)
        second = client.submit(stamp, workers=[a], resources=SLOT, pure=False)  # waits on a behind first
        wait_for(lambda: os.path.exists(marker))
        # The scheduler learns what runs where from heartbeats.
        wait_for(lambda: s.tasks[first.key] in s.workers[a].executing)
        kill_worker(client, a)
        failure = wait_for(lambda: of(events, NodeFailure, worker=a))[0]
        assert failure.recovery.mode == "manual"
        assert set(failure.recovery.held) == {first.key, second.key}
        assert failure.recovery.interrupted == (first.key,)  # second only waited for a slot there
        wait_for(lambda: all(state(qc, f.key) == "no-worker" for f in (first, second)))
        time.sleep(5.0)
        assert all(s.tasks[f.key].state == "no-worker" for f in (first, second))
        assert sorted(ft.held()) == sorted([first.key, second.key])
        assert ft.resubmit([first.key]) == [first.key]
        assert first.result() > 0
        ft.cancel([second.key])
        wait_for(lambda: second.status == "cancelled")
        wait_for(lambda: ft.held() == [])
        recovery = wait_for(lambda: of(events, RecoveryEvent, worker=a))[0]
        assert recovery.keys == (first.key,)
    finally:
        client.run_on_scheduler(set_no_workers_timeout, timeout)
        ft.stop()
    assert not qc.cluster.scheduler.extensions["qdask"].fault.status()["enabled"]


# -- replicas ---------------------------------------------------------------------
class CountRuns(SchedulerPlugin):
    """Counts tasks of a key set that start processing (i.e. are computed, again)."""

    name = "count-runs"

    def __init__(self, keys):
        self.keys, self.runs = set(keys), 0

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "processing" and key in self.keys:
            self.runs += 1


@pytest.mark.parametrize("factor", [2, 1])
def test_replicated_results_survive_a_worker_death_without_recomputation(qc, client, events, tmp_path, factor):
    circuits = [random_circuit(6, s) for s in range(40)]
    ref = qsimcirq.QSimSimulator(seed=5).run_batch(circuits, repetitions=20)
    ft = qc.enable_fault_tolerance(FaultToleranceConfig(replication_factor=factor,
                                                        checkpoint_url=str(tmp_path / f"ck{factor}")))
    sampler = qdask.Sampler(client, seed=5, simulator="qsim")
    s = qc.cluster.scheduler
    try:
        with dask.config.set({"qdask.quantum.chunk-duration": "1ms"}):  # one task per circuit
            sub = sampler.engine.submit(circuits, [None] * 40, [20] * 40, work="sample")
        wait(sub.futures)
        keys = {f.key for f in sub.futures}
        if factor > 1:
            wait_for(lambda: all(len(s.tasks[k].who_has) >= factor for k in keys))
        client.register_plugin(CountRuns(keys))
        victim = kill_worker(client)
        failure = wait_for(lambda: of(events, NodeFailure, worker=victim))[0]
        got = _by_program(sub, sampler.engine.collect(sub), len(circuits))
        runs = s.plugins[CountRuns.name].runs
        client.unregister_scheduler_plugin(CountRuns.name)
    finally:
        ft.stop()
    assert [g[0] for g in got] == [r[0] for r in ref]
    if factor > 1:
        assert failure.recovery.lost_results == () and runs == 0
    else:  # the control: without replicas the victim's results are computed again
        assert failure.recovery.lost_results and runs == len(failure.recovery.lost_results)
    print(f"\nreplication_factor={factor}: worker killed after the batch, {len(failure.recovery.lost_results)} "
          f"results lost, {runs} tasks recomputed")


# -- checkpoints ------------------------------------------------------------------
def test_five_corrupt_checkpoints_are_detected_and_recomputed(qc, client, tmp_path):
    circuits = [random_circuit(5, s) for s in range(20)]
    ref = qsimcirq.QSimSimulator(seed=9).run_batch(circuits, repetitions=30)
    url = str(tmp_path / "ck")
    ft = qc.enable_fault_tolerance(FaultToleranceConfig(checkpoint_url=url))
    try:
        first = qdask.Sampler(client, seed=9, simulator="qsim").run_batch(circuits, repetitions=30)
        files = sorted(Path(url).rglob("*.npz"))
        assert len(files) == 20 and ft.checkpoints.stats["written"] == 20
        damaged = files[:5]
        damaged[0].write_bytes(damaged[0].read_bytes()[:100])  # truncated
        damaged[1].write_bytes(b"")  # empty
        data = bytearray(damaged[2].read_bytes())
        data[len(data) // 2] ^= 0xFF  # a flipped byte
        damaged[2].write_bytes(bytes(data))
        damaged[3].write_bytes(os.urandom(2048))  # garbage
        damaged[4].write_bytes(files[10].read_bytes())  # another circuit's (valid) file
        again = qdask.Sampler(client, seed=9, simulator="qsim").run_batch(circuits, repetitions=30)
        stats = dict(ft.checkpoints.stats)
    finally:
        ft.stop()
    assert stats["corrupt"] == 5 and stats["hits"] == 15 and stats["written"] == 25
    assert [g[0] for g in again] == [g[0] for g in first] == [r[0] for r in ref]
    for path in damaged:  # rewritten with the recomputed result
        decode(path.stem, path.read_bytes(), 0, ft.checkpoints.secret)


# -- settings ---------------------------------------------------------------------
def test_enable_reconfigures_and_stop_restores_dask_defaults(qc, client, tmp_path):
    s = qc.cluster.scheduler
    amm = s.extensions["amm"]

    def policies():
        return sorted(type(p).__name__ for p in amm.policies)

    dask_policies, allowed = policies(), s.allowed_failures
    with dask.config.set({"temporary-directory": str(tmp_path)}):
        ft = qc.enable_fault_tolerance(FaultToleranceConfig(replication_factor=3, max_failures=5))
    default = tmp_path / f"qdask-checkpoints-{os.getuid()}"  # the default location: per user, private
    assert ft.config.checkpoint_url == str(default)
    assert stat.S_IMODE(default.stat().st_mode) == 0o700
    assert stat.S_IMODE((default / "qdask-hmac.key").stat().st_mode) == 0o600
    assert s.allowed_failures == 4
    assert "ReduceReplicas" not in policies() and {"KeepReplicas", "ReplicateResults"} <= set(policies())
    again = qc.enable_fault_tolerance(FaultToleranceConfig(max_failures=2, checkpoint_url=str(tmp_path / "b")))
    assert again.active and not ft.active
    assert s.allowed_failures == 1 and policies() == dask_policies
    qdask.Sampler(client, seed=1, simulator="qsim").run_batch([random_circuit(4, 1)], repetitions=5)
    assert len(list((tmp_path / "b").rglob("*.npz"))) == 1  # the new store is the one in use
    again.stop()
    assert s.allowed_failures == allowed and policies() == dask_policies and not again.active
