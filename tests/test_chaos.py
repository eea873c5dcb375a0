"""Whole-cluster failures on real multi-process clusters: every worker SIGKILLed at once, chaos.

The chaos tests run ``benchmarks/chaos.py`` (random SIGKILL and SIGSTOP of
workers, a scheduler restart with resume from checkpoints): 6 s on two workers in
``make test``, two minutes marked ``slow``.

Every result is compared with serial qsim under the same seed; "exactly once"
means each circuit of the batch has one result, equal to the serial one, and
(with fault tolerance on) one checkpoint written for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import pytest
import qsimcirq
from _polling import wait_for
from test_fault import circuits_for

import qdask
from qdask import ClusterConfig, FaultToleranceConfig, QuantumCluster

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(51)


def worker_pids(qc: QuantumCluster) -> dict[str, int]:
    return qc.get_client().run(os.getpid, on_error="ignore")


def kill_all(pids: dict[str, int]) -> None:
    """SIGKILL every worker process in one sweep (as an OOM killer or a reboot does)."""
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def circuit_tasks_done(dask_scheduler) -> int:
    """Circuit chunk tasks that finished so far (their results may already be collected and forgotten)."""
    return sum(
        tp.state_counts["memory"] + tp.state_counts["released"] + tp.state_counts["forgotten"]
        for name, tp in dask_scheduler.task_prefixes.items()
        if name.startswith("qdask_sample")
    )


@pytest.mark.parametrize("fault_tolerance", [False, True], ids=["plain", "fault-tolerant"])
def test_sigkill_every_worker_at_once_mid_batch_loses_nothing(tmp_path, fault_tolerance):
    n, reps = 600, 20
    circuits = circuits_for(n, 10, 14)
    ref = qsimcirq.QSimSimulator(seed=11).run_batch(circuits, repetitions=reps)
    # Only the issue's own failure mode: no patience beyond qdask's defaults.
    with dask.config.set({"qdask.quantum.chunk-duration": "50ms"}), \
            QuantumCluster(ClusterConfig(num_nodes=2, memory_per_node="1GiB")) as qc:
        client = qc.get_client()
        ft = qc.enable_fault_tolerance(FaultToleranceConfig(checkpoint_url=str(tmp_path / "ck"))) \
            if fault_tolerance else None
        pids = worker_pids(qc)
        out: dict[str, object] = {}

        def run() -> None:
            try:
                out["got"] = qdask.Sampler(client, seed=11, simulator="qsim").run_batch(circuits, repetitions=reps)
            except BaseException as e:  # re-raised below, in the test's thread
                out["error"] = e

        t = threading.Thread(target=run, name="test-batch")
        t0 = time.perf_counter()
        t.start()
        wait_for(lambda: client.run_on_scheduler(circuit_tasks_done) >= 2 or not t.is_alive(), what="first chunks done")
        assert t.is_alive(), f"the batch ended before the kill: make it longer ({out.get('error')!r})"
        kill_all(pids)
        killed_at = time.perf_counter() - t0
        t.join(timeout=240)
        assert not t.is_alive()
        if "error" in out:
            raise out["error"]  # type: ignore[misc]
        got = out["got"]
        assert len(got) == n
        for i, (a, b) in enumerate(zip(got, ref)):
            assert a[0] == b[0], i
        # Both restarted (the batch may end on the first one back).
        new = wait_for(lambda: p if len(p := worker_pids(qc)) == 2 else None, timeout=60, what="two workers back")
        assert not set(new.values()) & set(pids.values())
        written = None
        if ft is not None:
            ft.stop()
            written = ft.checkpoints.stats["written"]
            assert written == n and ft.checkpoints.stats.get("hits", 0) == 0
            assert len(list((tmp_path / "ck").rglob("*.npz"))) == n
        print(f"\nkill-all ({'fault-tolerant' if ft else 'plain'}): {n} circuits, both workers SIGKILLed at "
              f"{killed_at:.2f} s, batch done in {time.perf_counter() - t0:.2f} s, all correct"
              + (f", {written} checkpoints written (one each)" if ft else ""))


def test_a_batch_submitted_while_no_worker_is_registered_waits_for_them():
    circuits = circuits_for(20, 8, 10)
    ref = qsimcirq.QSimSimulator(seed=3).run_batch(circuits, repetitions=10)
    with QuantumCluster(ClusterConfig(num_nodes=2, memory_per_node="1GiB")) as qc:
        client, s = qc.get_client(), qc.cluster.scheduler
        kill_all(worker_pids(qc))
        wait_for(lambda: not s.workers, timeout=30, what="no worker registered")
        t0 = time.perf_counter()
        # Planned against the cluster: the plan waits for a worker instead of failing
        # with NoQuantumWorkersError (placement rule 7).
        got = qdask.Sampler(client, seed=3, simulator="qsim").run_batch(circuits, repetitions=10)
        assert [g[0] for g in got] == [r[0] for r in ref]
        print(f"\nbatch submitted with 0 workers registered: done {time.perf_counter() - t0:.2f} s later, correct")


# -- benchmarks/chaos.py ------------------------------------------------------------
def run_chaos(tmp_path, seconds: float, restart_every: float, workers: int = 3) -> dict:
    out = tmp_path / "chaos.json"
    script = Path(__file__).parent.parent / "benchmarks" / "chaos.py"
    argv = [sys.executable, str(script), "--seconds", str(seconds), "--restart-every", str(restart_every),
            "--workers", str(workers), "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 600)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    print(f"\nchaos {seconds:.0f} s: " + ", ".join(f"{k}={v}" for k, v in report.items() if k != "errors"))
    assert report["job_finished"] and report["job_exit"] == 0, report
    assert report["lost"] == 0 and report["duplicates"] == 0 and report["wrong"] == 0, report
    assert report["batches"] >= 1 and report["restart"] >= 1, report
    assert report["kill"] + report["kill-all"] + report["stop"] >= 1, report
    assert proc.returncode == 0
    return report


def test_chaos_bounded_kills_stops_and_a_scheduler_restart_lose_nothing(tmp_path):
    # Two workers: the chaos job computes on all it has, and the suite shares two cores.
    run_chaos(tmp_path, seconds=6, restart_every=3, workers=2)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_chaos_two_minutes(tmp_path):
    report = run_chaos(tmp_path, seconds=120, restart_every=40)
    assert report["restart"] >= 2 and report["kill"] >= 10 and report["stops_over_ttl"] >= 1
