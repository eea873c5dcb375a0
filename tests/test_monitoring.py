"""Monitoring on real multi-process clusters: sampler, log, trace, reading API, rules,
Prometheus and ``qdask monitor``.

Circuit tasks are stand-ins with the annotation and resources the quantum layer
attaches (CONTRACT: ``qdask={"kind": "circuit", ...}``,
``resources={"quantum": 1, "statevector_bytes": N}``); they sleep or allocate
instead of simulating, so each workload hits exactly the condition under test.
Rule tests analyse only the samples of their own workload (``window`` = time
since the workload started).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import _polling as polling
import dask
import numpy as np
import psutil
import pytest
from _processes import ctrl_c_ready
from distributed import LocalCluster, get_task_stream, get_worker
from prometheus_client.parser import text_string_to_metric_families
from test_monitoring_units import documented_fields

from qdask import MonitoringConfig, QuantumCluster
from qdask.deploy import spec
from qdask.monitoring.worker import WorkerMetrics
from qdask.worker.discovery import QUANTUM, STATEVECTOR_BYTES, detect_gpus

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(29)

QDASK = str(Path(sys.executable).parent / "qdask")
SV = 2**20  # state-vector bytes a stand-in circuit requests


def annotation(qubits: int = 10, priority: int = 0) -> dict:
    return {"kind": "circuit", "circuits": 1, "qubits": qubits, "backend": "qsim", "est_seconds": 0.25,
            "statevector_bytes": SV, "priority": priority}


def submit_circuits(client, n, fn, *args, priority=0, workers=None, qubits=10):
    with dask.annotate(qdask=annotation(qubits, priority)):
        return [
            client.submit(fn, *args, resources={QUANTUM: 1, STATEVECTOR_BYTES: SV}, priority=priority,
                          workers=workers, allow_other_workers=False, pure=False)
            for _ in range(n)
        ]


def inc(x):
    return x + 1


def hold_memory(fraction: float, seconds: float) -> int:
    """Grow this worker's memory to ``fraction`` of its limit for ``seconds``."""
    limit = get_worker().memory_manager.memory_limit
    extra = int(fraction * limit) - psutil.Process().memory_info().rss
    block = np.ones(max(extra, 0), dtype=np.uint8)
    time.sleep(seconds)
    return block.nbytes


def payload(nbytes: int) -> np.ndarray:
    """The same incompressible block each call, made once per worker (computing it is not the point)."""
    worker = get_worker()
    if getattr(worker, "_test_payload", None) is None or worker._test_payload.nbytes != nbytes:
        worker._test_payload = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    return worker._test_payload


def wait_for(predicate, timeout=15.0):
    return polling.wait_for(predicate, timeout)


def settle(qc, n=2):
    """Wait until ``n`` more samples were taken (the last heartbeat figures are in)."""
    s = qc.cluster.scheduler
    target = s.extensions["qdask"].monitor.count + n
    wait_for(lambda: s.extensions["qdask"].monitor.count >= target)


def scrape(qc) -> dict:
    """``/metrics`` of the cluster's scheduler: {(name, labels...): value} for qdask_* samples."""
    base = qc.dashboard_link.rsplit("/", 1)[0]
    text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("qdask_") and s.labels.get("scheduler") == qc.scheduler_address:
                labels = tuple(v for k, v in sorted(s.labels.items()) if k != "scheduler")
                out[(s.name, *labels)] = s.value
    return out


@pytest.fixture
def monitored(cluster2, tmp_path):
    """cluster2 sampled every 100 ms, with a log and a trace; stopped afterwards."""
    mon = cluster2.start_monitoring(
        MonitoringConfig(sampling_interval="100ms", log_file=str(tmp_path / "m.jsonl"), enable_tracing=True,
                         trace_file=str(tmp_path / "trace.json"))
    )
    yield mon
    mon.stop()


# -- lifetime -------------------------------------------------------------------------
def test_start_is_idempotent_reconfigures_and_stop_removes_everything(cluster2):
    s = cluster2.cluster.scheduler
    mon = cluster2.start_monitoring(MonitoringConfig(sampling_interval="100ms"))
    try:
        assert mon.running and mon.config.sampling_interval == 0.1
        assert s.periodic_callbacks["qdask-monitor"].callback_time == 100
        assert "qdask-monitor" in s.plugins
        again = cluster2.start_monitoring(MonitoringConfig(sampling_interval="250ms"))
        assert again.config.sampling_interval == 0.25
        assert s.periodic_callbacks["qdask-monitor"].callback_time == 250
        cluster2.start_monitoring(MonitoringConfig(sampling_interval="250ms"))
        assert list(s.plugins).count("qdask-monitor") == 1
    finally:
        mon.stop()
    mon.stop()
    assert not mon.running
    assert "qdask-monitor" not in s.periodic_callbacks and "qdask-monitor" not in s.plugins


# -- samples, log and trace -------------------------------------------------------------
def test_samples_follow_a_batch_and_the_log_has_one_documented_record_per_sample(cluster2, monitored, tmp_path):
    client = cluster2.get_client()
    monitor = cluster2.cluster.scheduler.extensions["qdask"].monitor
    first = monitor.count
    futures = submit_circuits(client, 4, time.sleep, 1.0, priority=5)
    futures += submit_circuits(client, 2, time.sleep, 1.0, priority=1)
    # Ready circuits per annotated priority, counted by the transition hook.
    wait_for(lambda: monitor.tracker.by_priority == {5: 4, 1: 2}, timeout=10)
    busy = wait_for(lambda: [r for r in monitored.samples() if r["total"]["quantum_busy"] == 2], timeout=10)
    assert busy[-1]["total"]["quantum_utilization"] == 100.0
    assert busy[-1]["total"]["quantum_queued"] + busy[-1]["total"]["quantum_busy"] == busy[-1]["tasks"][
        "circuits_ready"]
    assert any(r["tasks"]["circuits_by_priority"] == {"1": 2, "5": 4} for r in monitored.samples())
    client.gather(futures)
    settle(cluster2)
    last = monitored.samples()[-1]
    assert last["tasks"]["circuits_ready"] == 0 and last["total"]["quantum_busy"] == 0
    assert sum(r["tasks"]["finished"] for r in monitored.samples(since=busy[0]["time"] - 1)) >= 6

    # Every field documented, on real records.
    assert set(last) == documented_fields("Top level")
    for record in last["workers"].values():
        assert set(record) == documented_fields("Worker record")
        assert record["latency"] > 0 and record["role"] == "quantum"  # the qdask worker metric arrived
    assert set(last["total"]) == documented_fields("Cluster totals")
    assert set(last["tasks"]) == documented_fields("Tasks")

    monitored.stop()
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert len(lines) == monitor.count - first
    assert [json.loads(line)["time"] for line in lines[-3:]] == [r["time"] for r in list(monitor.samples)[-3:]]


def test_log_rotates_at_its_size_and_keeps_its_backups(cluster2, tmp_path):
    log = tmp_path / "rot.jsonl"
    mon = cluster2.start_monitoring(MonitoringConfig(sampling_interval="50ms", log_file=str(log),
                                                     log_max_bytes="16KiB", log_backups=2))
    try:
        wait_for(lambda: (tmp_path / "rot.jsonl.2").exists(), timeout=60)
        wait_for(lambda: log.exists() and log.stat().st_size > 0)
    finally:
        mon.stop()
    files = sorted(tmp_path.glob("rot.jsonl*"))
    assert [f.name for f in files] == ["rot.jsonl", "rot.jsonl.1", "rot.jsonl.2"]  # never a .3
    record = max(len(line) + 1 for f in files for line in f.read_text().splitlines())
    for f in files:
        lines = f.read_text().splitlines()
        assert all(json.loads(line)["time"] > 0 for line in lines)  # whole records, none split
        assert f.stat().st_size <= 16 * 1024 + record
    # Later records in lower numbers: rot.jsonl.2 is the oldest.
    first = [json.loads(f.read_text().splitlines()[0])["time"] for f in reversed(files)]
    assert first == sorted(first)


def test_trace_has_one_span_per_circuit_task_matching_dask_task_stream(cluster2, monitored, tmp_path):
    client = cluster2.get_client()
    with get_task_stream(client) as stream:
        circuits = submit_circuits(client, 4, time.sleep, 0.2, qubits=12)
        classical = client.map(inc, range(3), pure=False)
        client.gather(circuits + classical)
    monitored.stop()  # closes the JSON array
    events = json.loads((tmp_path / "trace.json").read_text())
    spans = {e["args"]["key"]: e for e in events if e["ph"] == "X"}
    assert set(spans) == {f.key for f in circuits}  # classical tasks leave no span
    workers = {e["args"]["name"]: e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    for record in stream.data:
        if record["key"] not in spans:
            continue
        span = spans[record["key"]]
        compute = [s for s in record["startstops"] if s["action"] == "compute"][0]
        assert span["ts"] == pytest.approx(compute["start"] * 1e6)
        assert span["dur"] == pytest.approx((compute["stop"] - compute["start"]) * 1e6)
        assert span["dur"] >= 0.2e6  # it slept 0.2 s
        assert span["args"]["worker"] == record["worker"] and workers[record["worker"]] == span["pid"]
        assert span["args"]["backend"] == "qsim" and span["args"]["qubits"] == 12
        assert span["args"]["statevector_bytes"] == SV and span["args"]["state"] == "memory"
        assert span["name"] == "qsim 12q"


def test_real_sampler_batches_are_traced_with_their_annotations(cluster2, monitored, tmp_path):
    import cirq

    from qdask import Sampler

    client = cluster2.get_client()
    qubits = cirq.LineQubit.range(12)
    circuits = [cirq.testing.random_circuit(qubits, n_moments=8, op_density=0.8, random_state=i)
                + cirq.measure(*qubits, key="m") for i in range(12)]
    with get_task_stream(client) as stream:
        Sampler(client, seed=1).run_batch(circuits, repetitions=20)
    monitored.stop()
    spans = [e for e in json.loads((tmp_path / "trace.json").read_text()) if e["ph"] == "X"]
    chunk_keys = {r["key"] for r in stream.data if str(r["key"]).startswith("qdask_")}
    assert {e["args"]["key"] for e in spans} == chunk_keys and chunk_keys
    assert sum(e["args"]["circuits"] for e in spans) == len(circuits)
    assert {(e["args"]["qubits"], e["args"]["backend"]) for e in spans} == {(12, "qsim")}


# -- reading API against independent readings ------------------------------------------
def test_reading_api_is_populated_and_agrees_with_independent_readings(cluster2, monitored):
    client = cluster2.get_client()
    futures = submit_circuits(client, 2, time.sleep, 2.0)
    # Both slots busy, as Dask's own resource accounting (resources()) says too.
    wait_for(lambda: all(r["used_resources"].get(QUANTUM) == 1 for r in cluster2.resources()))
    m = wait_for(lambda: (m := cluster2.metrics(window=0.3)).quantum_utilization == 100.0 and m)
    assert m.node_utilization == 100.0
    d = cluster2.detailed_metrics(window=0.3)
    assert d.quantum_busy == 2.0 and d.quantum_slots == 2
    client.gather(futures)

    # Scatter data to one worker and compute on the other: its sent bytes grow by at least that much.
    a, b = sorted(client.nthreads())
    before = cluster2.detailed_metrics().workers[a]["sent_bytes"]
    data = client.scatter(np.ones(20 * 2**20, dtype=np.uint8), workers=[a])
    assert client.submit(len, data, workers=[b], pure=False).result() == 20 * 2**20
    wait_for(lambda: cluster2.detailed_metrics(window=0.2).workers[a]["sent_bytes"] >= before + 20 * 2**20)
    assert max(r["workers"][a]["bandwidth"] for r in monitored.samples()) > 0

    d = cluster2.detailed_metrics()
    assert d.active_nodes == len(client.nthreads()) == 2
    resources = cluster2.resources()
    assert d.statevector_bytes == sum(r["resources"][STATEVECTOR_BYTES] for r in resources)
    assert d.memory_limit == sum(r["memory_limit"] for r in resources)
    pids = client.run(os.getpid)
    rss = sum(psutil.Process(pid).memory_info().rss for pid in pids.values())
    assert 0.5 * rss < d.memory_usage < 2 * rss
    assert d.cpu_usage >= 0 and d.latency > 0 and d.bandwidth >= 0 and d.avg_load >= 0
    assert d.samples > 0 and d.window > 0
    stats = cluster2.error_statistics()
    assert (stats.node_failures, stats.network_errors, stats.quantum_errors) == (0, 0, 0)
    assert stats.avg_recovery_time is None


# -- analysis rules on live workloads ----------------------------------------------------
def _analyze_since(qc, t0):
    settle(qc)
    return qc.analyze(window=time.time() - t0)


def test_tiny_tasks_are_reported_scheduler_bound(cluster2, monitored):
    t0 = time.time()
    cluster2.get_client().gather(cluster2.get_client().map(inc, range(300), pure=False))
    rules = [b.rule for b in _analyze_since(cluster2, t0).bottlenecks]
    assert rules == ["scheduler-bound"]


def test_a_flood_of_single_circuit_submits_after_heavy_work_is_found(cluster2, monitored):
    import cirq

    from qdask import Sampler

    client = cluster2.get_client()
    t0 = time.time()
    client.gather(submit_circuits(client, 4, time.sleep, 1.0))  # heavier work first: 4 s of compute
    sampler = Sampler(client, seed=1, progress=False)
    q = cirq.LineQubit.range(2)
    tiny = cirq.Circuit(cirq.H(q[0]), cirq.CNOT(*q), cirq.measure(*q, key="m"))
    client.gather([sampler.submit(tiny, repetitions=1) for _ in range(150)])  # one submit per circuit
    result = _analyze_since(cluster2, t0)
    (b,) = [b for b in result.bottlenecks if b.rule == "scheduler-bound"]
    assert b.evidence["group"].startswith("qdask_sample_"), b.evidence
    assert b.evidence["finished"] >= 100 and b.evidence["circuits_per_task"] == 1.0, b.evidence
    assert "sampler.run_batch(circuits" in b.recommendation
    # The window as a whole is not tiny: the heavy tasks lift its mean above the threshold.
    samples = cluster2.get_client().sync(cluster2.get_client().scheduler.qdask_samples, since=t0)
    finished = sum(s["tasks"]["finished"] for s in samples)
    assert sum(s["tasks"]["compute"] for s in samples) / finished > 0.010


def test_work_pinned_to_one_worker_is_an_imbalance(cluster2, monitored):
    client = cluster2.get_client()
    a = sorted(client.nthreads())[0]
    t0 = time.time()
    client.gather(submit_circuits(client, 6, time.sleep, 0.3, workers=[a]))
    result = _analyze_since(cluster2, t0)
    assert [b.rule for b in result.bottlenecks] == ["imbalance"]
    assert result.bottlenecks[0].evidence["worker"] == a


def test_moving_large_results_between_workers_is_transfer_bound(cluster2, monitored):
    client = cluster2.get_client()
    a, b = sorted(client.nthreads())
    client.submit(payload, 100 * 2**20, workers=[a], pure=False).result()  # made before the window
    t0 = time.time()
    for _ in range(4):
        big = client.submit(payload, 100 * 2**20, workers=[a], pure=False)
        assert client.submit(len, big, workers=[b], pure=False).result() == 100 * 2**20
        del big
    result = _analyze_since(cluster2, t0)
    assert [x.rule for x in result.bottlenecks] == ["transfer-bound"]


def test_a_healthy_balanced_batch_reports_no_bottleneck(cluster2, monitored):
    client = cluster2.get_client()
    t0 = time.time()
    futures = submit_circuits(client, 8, time.sleep, 0.25)
    client.gather(futures)
    result = _analyze_since(cluster2, t0)
    assert result.healthy, result.bottlenecks
    assert result.samples > 0


def test_memory_near_the_limit_is_reported(cluster2, monitored):
    # Last of the rule tests: heartbeats report the memory back down only a while later.
    client = cluster2.get_client()
    t0 = time.time()
    (fut,) = submit_circuits(client, 1, hold_memory, 0.76, 1.5, qubits=27)
    fut.result()
    result = _analyze_since(cluster2, t0)
    assert [b.rule for b in result.bottlenecks] == ["memory-pressure"]
    assert result.bottlenecks[0].evidence["fraction"] >= 0.7


# -- Prometheus --------------------------------------------------------------------------
def exposition(qc) -> str:
    return urllib.request.urlopen(qc.dashboard_link.rsplit("/", 1)[0] + "/metrics", timeout=30).read().decode()


#: Units in Prometheus' base units, one of which ends a name that has a unit.
UNITS = ("bytes", "seconds", "ratio")
#: What the conventions rule out: non-base units, percentages.
NOT_BASE = re.compile(r"_(percent|percentage|milliseconds|ms|microseconds|minutes|hours|kb|mb|gb|kib|mib|gib)(_|$)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def convention_violations(text: str) -> list[str]:
    """Every qdask_* family and sample of an exposition that breaks Prometheus' naming conventions."""
    bad = []
    for family in text_string_to_metric_families(text):
        name = family.name
        if not name.startswith("qdask_"):
            continue
        if not re.fullmatch(r"qdask_[a-z][a-z0-9]*(_[a-z0-9]+)*", name):
            bad.append(f"{name}: not snake case")
        if NOT_BASE.search(name):
            bad.append(f"{name}: not in a base unit")
        words = name.split("_")
        for unit in UNITS:
            if unit in words[1:-1]:
                bad.append(f"{name}: unit {unit!r} not last")
        if name.endswith(("_total", "_count", "_sum", "_bucket")):
            bad.append(f"{name}: family name ends in a reserved suffix")
        if not family.documentation:
            bad.append(f"{name}: no HELP")
        for sample in family.samples:
            if family.type == "counter":
                if not sample.name.endswith(("_total", "_created")):
                    bad.append(f"{sample.name}: counter sample without _total")
                if sample.value < 0:
                    bad.append(f"{sample.name}: negative counter")
            elif family.type == "histogram":
                if not sample.name.endswith(HISTOGRAM_SUFFIXES):
                    bad.append(f"{sample.name}: histogram sample without _bucket/_sum/_count")
            elif sample.name != name:
                bad.append(f"{sample.name}: sample name differs from its {family.type} family")
            if name.endswith("_ratio") and not 0.0 <= sample.value <= 1.0:
                bad.append(f"{sample.name}={sample.value}: a ratio outside 0-1")
            if "://" in sample.labels.get("worker", ""):
                bad.append(f"{sample.name}: worker label is an address ({sample.labels['worker']})")
        if family.type == "histogram":
            les = [s.labels["le"] for s in family.samples if s.name.endswith("_bucket")]
            if not les or les[-1] != "+Inf":
                bad.append(f"{name}: histogram without a +Inf bucket")
    return bad


def test_convention_checker_catches_what_the_conventions_rule_out():
    text = (
        "# HELP qdask_statevector_bytes_used x\n# TYPE qdask_statevector_bytes_used gauge\n"
        "qdask_statevector_bytes_used 1.0\n"
        "# HELP qdask_utilization_percent x\n# TYPE qdask_utilization_percent gauge\n"
        "qdask_utilization_percent 50.0\n"
        "# HELP qdask_load_ratio x\n# TYPE qdask_load_ratio gauge\nqdask_load_ratio{worker=\"tcp://1.2.3.4:5\"} 2.0\n"
    )
    bad = convention_violations(text)
    assert any("unit 'bytes' not last" in b for b in bad)
    assert any("qdask_utilization_percent: not in a base unit" in b for b in bad)
    assert any("a ratio outside 0-1" in b for b in bad)
    assert any("worker label is an address" in b for b in bad)


def test_prometheus_metrics_are_scraped_from_the_scheduler(cluster2, monitored):
    client = cluster2.get_client()
    names = {addr: str(ws.name) for addr, ws in cluster2.cluster.scheduler.workers.items()}
    futures = submit_circuits(client, 1, time.sleep, 1.5, priority=3)
    wait_for(lambda: sum(v for k, v in scrape(cluster2).items() if k[0] == "qdask_quantum_busy_slots") == 1)
    metrics = scrape(cluster2)
    for name in names.values():  # labelled by worker name, stable across restarts
        assert metrics[("qdask_quantum_slots", name)] == 1
        assert metrics[("qdask_statevector_budget_bytes", name)] > 0
        assert ("qdask_worker_latency_seconds", name) in metrics
    assert metrics[("qdask_workers", "quantum")] == 2 and metrics[("qdask_workers", "classical")] == 0
    assert metrics[("qdask_quantum_utilization_ratio",)] == 0.5
    assert metrics[("qdask_ready_circuit_tasks", "3")] == 1
    assert metrics[("qdask_events_total", "node_failure")] == 0
    samples = metrics[("qdask_monitoring_samples_total",)]
    client.gather(futures)
    wait_for(lambda: scrape(cluster2)[("qdask_monitoring_samples_total",)] > samples)


def test_exposition_follows_the_naming_conventions_and_counts_circuits(cluster2):
    import cirq

    from qdask import Sampler

    before = scrape(cluster2)
    q = cirq.LineQubit.range(3)
    circuits = [cirq.Circuit(cirq.H.on_each(*q), cirq.measure(*q, key="m")) for _ in range(5)]
    Sampler(cluster2.get_client(), seed=1, progress=False).run_batch(circuits, repetitions=10)
    # Dask's pages group tasks by prefix: readable kind, width and expected duration.
    prefixes = set(cluster2.cluster.scheduler.task_prefixes)
    assert any(re.fullmatch(r"qdask_sample_3q_\d+(\.\d)?(us|ms|s)", p) for p in prefixes), prefixes
    assert not any(re.fullmatch(r"qdask_\w+_c\d+", p) for p in prefixes), prefixes
    # The stand-in circuit tasks of the other tests count too: "kind" other.
    with dask.annotate(qdask=annotation()):
        cluster2.get_client().submit(inc, 1, key="stand-in-1", pure=False).result()
    text = exposition(cluster2)
    assert convention_violations(text) == []
    if shutil.which("promtool"):
        # qdask's families only: promtool also lints Dask's own (some lack HELP there).
        ours = [line for line in text.splitlines()
                if (line.split()[2] if line.startswith("#") else line).startswith("qdask_")]
        lint = subprocess.run(["promtool", "check", "metrics"], input="\n".join(ours) + "\n",
                              capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    # The engine tagged the batch's tasks: its progress is complete.
    progress = list(cluster2.cluster.scheduler.extensions["qdask"].monitor.counters.batch_progress.values())
    ours = [p for p in progress if p["kind"] == "sample"][-1]
    assert ours["done"] == ours["tasks"] >= 1 and ours["circuits"] == 5 and ours["finished"] is not None
    after = scrape(cluster2)
    def delta(*key):
        return after.get(key, 0) - before.get(key, 0)
    finished = {k[1:]: delta(*k) for k in after if k[0] == "qdask_circuits_total" and delta(*k)}
    assert sum(v for (backend, kind), v in finished.items() if kind == "sample") == 5, finished
    assert finished.get(("qsim", "other")) == 1, finished
    assert delta("qdask_batches_total") == 1
    assert delta("qdask_circuit_duration_seconds_count") == 6
    assert delta("qdask_circuit_duration_seconds_bucket", "+Inf") == 6
    assert 0 < delta("qdask_circuit_duration_seconds_sum") < 60


def test_two_schedulers_in_one_process_share_one_collector_under_their_own_labels(cluster2):
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      scheduler_kwargs={"plugins": spec.scheduler_plugins()}) as other:
        address = other.scheduler_address
        second = QuantumCluster(address=address)
        with second:
            other.scheduler.extensions["qdask"].events.record("node_failure", worker="tcp://127.0.0.1:1")
            assert scrape(second)[("qdask_events_total", "node_failure")] == 1
            assert scrape(cluster2)[("qdask_events_total", "node_failure")] == 0
            assert scrape(second)[("qdask_workers", "quantum")] == 0
            # Registered once: each family appears once, with both schedulers' samples in it.
            text = urllib.request.urlopen(second.dashboard_link.rsplit("/", 1)[0] + "/metrics").read().decode()
            assert text.count("# TYPE qdask_workers gauge") == 1
            assert cluster2.scheduler_address in text and second.scheduler_address in text
    # A closed scheduler leaves the collector.
    assert address not in urllib.request.urlopen(
        cluster2.dashboard_link.rsplit("/", 1)[0] + "/metrics").read().decode()


# -- command line -------------------------------------------------------------------------
def test_qdask_monitor_prints_samples_until_interrupted(cluster2):
    monitor = cluster2.cluster.scheduler.extensions["qdask"].monitor
    assert not monitor.sampling
    proc = subprocess.Popen(
        [QDASK, "monitor", "--address", cluster2.scheduler_address, "--interval", "200ms"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        preexec_fn=ctrl_c_ready,
    )
    try:
        lines = []
        while len([x for x in lines if "quantum" in x and "workers 2" in x]) < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
        assert monitor.sampling  # it started the monitor
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped after" in out
    assert not monitor.sampling  # and stopped it again


# -- GPU readings (NVML) --------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not detect_gpus(), reason="NVML reports no GPU")
def test_worker_metric_reads_every_gpu_through_nvml():
    gpus = detect_gpus()
    rows = WorkerMetrics([g.index for g in gpus]).read_gpus()
    assert [r["index"] for r in rows] == [g.index for g in gpus]
    for row, gpu in zip(rows, gpus):
        assert 0 <= row["utilization"] <= 100
        assert 0 < row["memory_used"] <= row["memory_total"] == gpu.total_memory



# -- reading results: frames, compact text, the cluster card ----------------------------------
def test_results_have_frames_and_compact_text_in_human_units(cluster2, monitored):
    import pandas as pd

    client = cluster2.get_client()
    client.gather(submit_circuits(client, 2, time.sleep, 0.2))
    settle(cluster2)
    table = cluster2.resources()
    frame = table.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 2
    assert {"worker", "memory_limit", "joined", "cost_model", "used_resources"} <= set(frame.columns)
    assert frame["memory_limit"].dtype.kind in "iu"  # raw bytes in the frame
    for result in (table, cluster2.metrics(), cluster2.detailed_metrics(), cluster2.error_statistics()):
        text = str(result)
        assert max(map(len, text.splitlines())) <= 100, text
        assert not re.search(r"\d{7,}|e\+0\d", text), text  # no raw byte counts or epoch times
    assert re.search(r"\d+/1 +\d.* GiB", str(table)), str(table)  # slots and state vector as used/total
    assert "%" in str(cluster2.metrics()) and "GiB" in str(cluster2.detailed_metrics())
    assert sorted(cluster2.detailed_metrics().to_frame().index) == sorted(client.nthreads())
    assert cluster2.metrics().to_frame().shape == (1, 3)
    assert cluster2.error_statistics().to_frame()["node_failures"].iloc[0] == 0


def test_cluster_card_is_dask_style_html_with_quantum_figures(cluster2):
    html = cluster2._repr_html_()
    assert "QuantumCluster" in html and f'href="{cluster2.dashboard_link}"' in html
    assert "<strong>Workers:</strong> 2" in html
    assert "Quantum slots:</strong> 0 busy of 2" in html
    assert "GPUs:</strong> none" in html or "GPUs:</strong> " in html
    assert "State-vector memory:</strong>" in html and "GiB" in html
    for row in cluster2.resources():
        assert row["worker"] in html
