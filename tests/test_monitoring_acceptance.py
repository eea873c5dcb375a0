"""Acceptance figures of monitoring (slow; run with ``-m slow -s`` to see the figures).

Each metric is compared with an independent reading on a real cluster:
quantum utilization with the trace's task timings, bandwidth with the bytes a
transfer moved, latency with a scheduler-to-worker RPC timed on the scheduler;
and the sampler's own cost is measured (per sample and per transition) and on a
throughput run with and without 100 ms sampling.
"""

from __future__ import annotations

import json
import statistics
import time

import dask
import numpy as np
import pytest
from distributed.metrics import time as dask_time

from qdask import ClusterConfig, MonitoringConfig, QuantumCluster
from qdask.worker.discovery import QUANTUM, STATEVECTOR_BYTES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qc():
    with QuantumCluster(ClusterConfig(num_nodes=2, memory_per_node="2GiB")) as cluster:
        yield cluster


def circuits(client, n, seconds):
    ann = {"kind": "circuit", "circuits": 1, "qubits": 10, "backend": "qsim", "est_seconds": seconds,
           "statevector_bytes": 2**20, "priority": 0}
    with dask.annotate(qdask=ann):
        return [client.submit(time.sleep, seconds, resources={QUANTUM: 1, STATEVECTOR_BYTES: 2**20}, pure=False)
                for _ in range(n)]


def test_quantum_utilization_agrees_with_the_trace(qc, tmp_path):
    trace_file = tmp_path / "trace.json"
    mon = qc.start_monitoring(MonitoringConfig(sampling_interval="100ms", enable_tracing=True,
                                               trace_file=str(trace_file)))
    client = qc.get_client()
    client.gather(circuits(client, 16, 0.5))
    time.sleep(0.5)
    samples = mon.samples()
    mon.stop()
    spans = [e for e in json.loads(trace_file.read_text()) if e["ph"] == "X"]
    start = min(e["ts"] for e in spans) / 1e6
    stop = max(e["ts"] + e["dur"] for e in spans) / 1e6
    from_trace = 100 * sum(e["dur"] for e in spans) / 1e6 / (2 * (stop - start))
    inside = [s["total"]["quantum_utilization"] for s in samples if start <= s["time"] <= stop]
    sampled = statistics.mean(inside)
    print(f"\nquantum utilization over {stop - start:.2f} s: trace {from_trace:.1f} %, "
          f"sampler {sampled:.1f} % ({len(inside)} samples)")
    assert abs(sampled - from_trace) <= 10


def test_bandwidth_integrates_to_the_bytes_moved(qc):
    mon = qc.start_monitoring(MonitoringConfig(sampling_interval="100ms"))
    client = qc.get_client()
    a, b = sorted(client.nthreads())
    time.sleep(1.0)
    t0 = time.time()
    before = qc.detailed_metrics(window=0.2).workers[a]["sent_bytes"]
    nbytes = 200 * 2**20
    data = client.submit(np.ones, nbytes, dtype=np.uint8, workers=[a], pure=False)
    assert client.submit(len, data, workers=[b], pure=False).result() == nbytes
    time.sleep(2.0)  # a few heartbeats after the transfer
    after = qc.detailed_metrics(window=0.2).workers[a]["sent_bytes"]
    samples = [s for s in mon.samples() if s["time"] >= t0]
    integral = sum(s["workers"][a]["bandwidth"] * s["interval"] for s in samples)
    mon.stop()
    print(f"\nsent {after - before:,} bytes ({nbytes:,} moved); bandwidth integrated over samples {integral:,.0f}")
    assert after - before >= nbytes
    assert 0.5 * (after - before) <= integral <= 1.5 * (after - before)


def test_latency_is_of_the_order_of_an_rpc(qc):
    mon = qc.start_monitoring(MonitoringConfig(sampling_interval="100ms"))
    time.sleep(3.0)
    client = qc.get_client()

    async def ping(dask_scheduler):
        out = {}
        for addr in dask_scheduler.workers:
            t = dask_time()
            await dask_scheduler.rpc(addr).identity()
            out[addr] = dask_time() - t
        return out

    rtts = client.run_on_scheduler(ping)
    reported = qc.detailed_metrics(window=1.0)
    mon.stop()
    print(f"\nlatency: reported {reported.latency * 1e3:.2f} ms (heartbeat EWMA), "
          f"identity RPC {statistics.mean(rtts.values()) * 1e3:.2f} ms")
    assert 0 < reported.latency < 1 and all(0 < r < 1 for r in rtts.values())


def test_cost_of_sampling(qc):
    client = qc.get_client()

    def sample_cost(dask_scheduler):
        monitor = dask_scheduler.extensions["qdask"].monitor
        t = time.perf_counter()
        for _ in range(200):
            monitor.sample(commit=False)
        per_sample = (time.perf_counter() - t) / 200
        tracker = monitor.tracker
        t = time.perf_counter()
        for i in range(100_000):
            tracker.transition(("x", i), "waiting", "processing")  # unknown key: the common path
        per_transition = (time.perf_counter() - t) / 100_000
        return per_sample, per_transition

    per_sample, per_transition = client.run_on_scheduler(sample_cost)
    print(f"\nsample: {per_sample * 1e6:.0f} us ({100 * per_sample / 0.1:.2f} % of a 100 ms interval); "
          f"transition hook: {per_transition * 1e9:.0f} ns")

    def scheduler_cpu(dask_scheduler):
        return time.thread_time()  # the scheduler's event-loop thread

    def throughput(n=1000):
        """Wall time, and CPU time of the scheduler's thread (insensitive to other load on the machine)."""
        cpu, t = client.run_on_scheduler(scheduler_cpu), time.perf_counter()
        client.gather(client.map(lambda x: x, range(n), pure=False))
        return time.perf_counter() - t, client.run_on_scheduler(scheduler_cpu) - cpu

    throughput()  # warm up
    off, on = [], []
    # ABBA order: successive runs get slower on their own, which must not count against either side.
    for monitored in (False, True, True, False, False, True, True, False):
        if monitored:
            mon = qc.start_monitoring(MonitoringConfig(sampling_interval="100ms", enable_tracing=False))
            on.append(throughput())
            mon.stop()
        else:
            off.append(throughput())
    wall = statistics.median(w for w, _ in on) / statistics.median(w for w, _ in off)
    cpu = statistics.median(c for _, c in on) / statistics.median(c for _, c in off)
    print(f"1000 tiny tasks with 100 ms sampling / without: wall {wall:.3f}, scheduler CPU {cpu:.3f} "
          f"(off {[f'{w:.2f}s/{c:.2f}s' for w, c in off]}, on {[f'{w:.2f}s/{c:.2f}s' for w, c in on]})")
    assert per_sample < 0.1  # a sample must fit in the interval it runs in
