"""Self-healing on real multi-process clusters: workers that die at start, frozen workers.

A worker preload (:data:`DYING`) makes the next worker processes exit during
their start or right after registering, as a worker does that a loaded host
OOM-kills while it imports; ``SIGSTOP`` freezes a worker the way swapping or
a hung host does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
import threading
import time

import cirq
import dask
import pytest
import qsimcirq
from _polling import wait_for

import qdask
from qdask import ClusterConfig, QuantumCluster
from qdask.deploy.nannies import TOPIC
from qdask.fault import NodeFailure

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(20)

#: Worker preload: while the file CONTROL holds "n mode" with n > 0, the worker
#: process decrements n and exits, during its start ("start") or just after it
#: registered with the scheduler ("after"). (The path is written into the file:
#: worker processes fork from one server per interpreter, whose environment is
#: that of the first test.)
DYING = textwrap.dedent(
    """
    import fcntl, os

    def dask_setup(worker):
        path = CONTROL
        if not os.path.exists(path):
            return
        with open(path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            n, mode = f.read().split()
            if int(n) <= 0:
                return
            f.seek(0)
            f.truncate()
            f.write(f"{int(n) - 1} {mode}")
        if mode == "start":
            os._exit(3)
        worker.loop.call_later(0.0, os._exit, 3)  # once registered: the loop runs after the start
    """
)


@pytest.fixture
def dying(tmp_path):
    """(the preload's config, the control file)."""
    hook, control = tmp_path / "dying.py", tmp_path / "dying"
    hook.write_text(f"CONTROL = {str(control)!r}\n" + DYING)
    return {"distributed.worker.preload": [str(hook)]}, control


def nanny_events(client) -> list[dict]:
    return [msg for _, msg in client.get_events(TOPIC)]


@pytest.mark.parametrize("mode", ["start", "after"])
def test_a_worker_dying_during_or_right_after_its_start_is_restarted(dying, mode):
    preload, control = dying
    with dask.config.set(preload), QuantumCluster(ClusterConfig(num_nodes=2, memory_per_node="1GiB")) as qc:
        client, s = qc.get_client(), qc.cluster.scheduler
        # A new worker (a scale-up) whose first two processes die: Dask closed its Nanny
        # (during the start) or never restarted it (right after), and the cluster stayed short.
        control.write_text(f"2 {mode}")
        t0 = time.perf_counter()
        qc.cluster.scale(3)
        # SpecCluster lists the new Nanny once its start returned, which is after its
        # worker registered: the kill below must find every Nanny running.
        wait_for(lambda: len(s.workers) == 3 and control.read_text().startswith("0") and len(qc.cluster.workers) == 3,
                 timeout=60, what="the cluster back to its planned 3 workers")
        scaled = time.perf_counter() - t0
        # A worker that is killed and whose replacement dies the same way.
        control.write_text(f"1 {mode}")
        victim, pid = next(iter(client.run(os.getpid).items()))
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: control.read_text().startswith("0"), timeout=60, what="the replacement's death")
        wait_for(lambda: len(client.run(os.getpid)) == 3, timeout=60, what="three live workers again")
        assert len(qc.cluster.workers) == 3 and victim not in client.run(os.getpid)
        circuits = circuits_for(30, 8, 10)
        got = qdask.Sampler(client, seed=1, simulator="qsim").run_batch(circuits, repetitions=5)
        assert [g[0] for g in got] == [r[0] for r in qsimcirq.QSimSimulator(seed=1).run_batch(circuits, repetitions=5)]
        restarts = wait_for(lambda: [e for e in nanny_events(client) if e["action"] == "restart"], timeout=30,
                            what="restart events")
        assert all(e["limit"] == 5 and e["cause"] for e in restarts)
        t0 = time.perf_counter()
    # Every Nanny's start has ended: a restart that lost its worker's "connected" message
    # waited for it until the close cancelled it, a minute later.
    closed = time.perf_counter() - t0
    assert closed < 20, f"closing the cluster took {closed:.0f} s"
    print(f"\nself-healing ({mode}): scale-up to 3 with two dying starts took {scaled:.2f} s; "
          f"{len(restarts)} restart events; closed in {closed:.1f} s")


def circuits_for(n: int, qubits: int, depth: int) -> list[cirq.Circuit]:
    q = cirq.LineQubit.range(qubits)
    return [cirq.testing.random_circuit(q, n_moments=depth, op_density=0.8, random_state=i)
            + cirq.measure(*q, key="m") for i in range(n)]


def test_a_frozen_worker_is_detected_and_its_work_moves():
    # The victim's chunk holds the batch until the worker is found frozen, however short the
    # rest of the work: 150 circuits are enough for both workers to hold some.
    n, reps = 150, 10
    circuits = circuits_for(n, 16, 24)
    ref = qsimcirq.QSimSimulator(seed=5).run_batch(circuits, repetitions=reps)
    # 1 s asks for Dask's floor: ten heartbeat intervals, 5 s on a small cluster.
    with dask.config.set({"qdask.scheduler.worker-ttl": "1s", "qdask.quantum.chunk-duration": "50ms"}), \
            QuantumCluster(ClusterConfig(num_nodes=2, memory_per_node="1GiB")) as qc:
        client, s = qc.get_client(), qc.cluster.scheduler
        assert s.worker_ttl == 1.0
        failures: list[NodeFailure] = []
        qc.on_node_failure(failures.append)
        pids = client.run(os.getpid)
        victim = sorted(pids)[0]
        out: dict = {}

        def run() -> None:
            try:
                out["got"] = qdask.Sampler(client, seed=5, simulator="qsim").run_batch(circuits, repetitions=reps)
            except BaseException as e:
                out["error"] = e

        t = threading.Thread(target=run, name="test-batch")
        t.start()
        # Assigned work (not yet a heartbeat saying it runs): the batch then cannot end without it.
        wait_for(lambda: s.workers.get(victim) is not None and s.workers[victim].processing or not t.is_alive(),
                 interval=0.01, what="the victim holding a chunk")
        assert t.is_alive(), f"the batch ended before the victim ran a chunk ({out.get('error')!r})"
        os.kill(pids[victim], signal.SIGSTOP)
        stopped = time.perf_counter()
        try:
            t.join(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pids[victim], signal.SIGCONT)
        took = time.perf_counter() - stopped
        assert not t.is_alive() and "error" not in out, out.get("error")
        assert [g[0] for g in out["got"]] == [r[0] for r in ref]
        wait_for(lambda: failures, what="the node failure event")
        assert failures[0].worker == victim and failures[0].cause == "heartbeat-lost"
        wait_for(lambda: len(client.run(os.getpid)) == 2, timeout=60, what="the frozen worker restarted")
        assert pids[victim] not in client.run(os.getpid).values()
        print(f"\nfrozen worker: SIGSTOPped mid-batch, detected as {failures[0].cause!r}, batch of {n} done "
              f"{took:.1f} s later, all correct")
