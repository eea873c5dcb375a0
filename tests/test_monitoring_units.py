"""Monitoring logic without a cluster: records, rules, aggregation, trace and event store.

The synthetic samples here are built with the same ``totals`` function the
sampler uses, and their fields are checked against the schema documented in
``docs/monitoring.md`` -- the cluster tests check real samples against the same
tables, so the synthetic ones cannot drift from reality unnoticed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import dask.config
import pytest

from qdask.monitoring.aggregate import detailed_metrics, per_worker, resource_metrics
from qdask.monitoring.analysis import RULES, Thresholds, analyze
from qdask.monitoring.client import format_summary
from qdask.monitoring.events import KINDS, EventStore
from qdask.monitoring.monitor import totals
from qdask.monitoring.results import (
    AnalysisResult,
    DetailedMetrics,
    ErrorStatistics,
    ResourceMetrics,
)
from qdask.monitoring.tracing import ChromeTrace

DOCS = Path(__file__).parents[1] / "docs" / "monitoring.md"
GiB = 2**30


def documented_fields(section: str) -> set[str]:
    """Field names of the table under ``### <section>`` in docs/monitoring.md."""
    text = DOCS.read_text()
    body = text.split(f"### {section}", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", body, flags=re.M))


def worker(role: str = "quantum", **kw) -> dict:
    """A worker record as the sampler builds it (quantum: one slot, 1 GiB budget)."""
    quantum = role == "quantum"
    record = {
        "name": "w", "role": role, "status": "running", "nthreads": 1, "processing": 0,
        "busy_threads": 0, "cpu": 5.0, "memory": 200 * 2**20, "memory_limit": 2 * GiB, "load": 0.0,
        "quantum_slots": 1.0 if quantum else 0.0, "quantum_busy": 0.0, "quantum_queued": 0.0,
        "statevector_bytes": float(GiB) if quantum else 0.0, "statevector_used": 0.0,
        "gpus": 0.0, "gpus_busy": 0.0, "gpu_utilization": None, "gpu_memory": None,
        "gpu_memory_total": None, "bandwidth": 0.0, "sent_bytes": 0, "latency": 0.001,
        "net_read": 0.0, "net_write": 0.0,
    }
    record.update(kw)
    return record


def sample(t: float, workers: dict, interval: float = 0.1, **tasks) -> dict:
    return {
        "time": t,
        "interval": interval,
        "workers": workers,
        "total": totals(workers.values()),
        "tasks": {"states": {}, "circuits_ready": 0, "circuits_by_priority": {}, "finished": 0, "erred": 0,
                  "compute": 0.0, "transfer": 0.0, "groups": {}, **tasks},
    }


def busy(n_queued: float = 0.0, **kw) -> dict:
    """A quantum worker running one circuit with ``n_queued`` more waiting."""
    return worker(processing=1 + int(n_queued), busy_threads=1, quantum_busy=1.0, quantum_queued=n_queued,
                  load=0.5 * (1 + n_queued), **kw)


def healthy_run(n: int = 20) -> list[dict]:
    """Two quantum workers equally busy with 0.3 s circuits."""
    return [
        sample(1000 + 0.1 * i, {"a": busy(1.0), "b": busy(1.0)}, finished=1 if i % 3 == 0 else 0,
               compute=0.3 if i % 3 == 0 else 0.0)
        for i in range(n)
    ]


def rules_fired(samples, **overrides) -> list[str]:
    return [b.rule for b in analyze(samples, Thresholds.from_config(**overrides)).bottlenecks]


# -- the documented schema ----------------------------------------------------------
def test_synthetic_records_have_exactly_the_documented_fields():
    s = sample(0.0, {"a": worker()})
    assert set(s) == documented_fields("Top level")
    assert set(s["workers"]["a"]) == documented_fields("Worker record")
    assert set(s["total"]) == documented_fields("Cluster totals")
    assert set(s["tasks"]) == documented_fields("Tasks")


def test_totals_sum_and_average_in_documented_units():
    t = totals([busy(2.0, cpu=50.0), worker(cpu=10.0, latency=0.003)])
    assert t["quantum_slots"] == 2 and t["quantum_busy"] == 1 and t["quantum_queued"] == 2
    assert t["quantum_utilization"] == 50.0
    assert t["node_utilization"] == 50.0
    assert t["cpu"] == 30.0
    assert t["memory"] == 400 * 2**20
    assert t["latency"] == pytest.approx(0.002)
    assert t["gpu_utilization"] is None and t["gpu_memory"] is None
    with_gpu = totals([worker(gpus=1.0, gpu_utilization=40.0, gpu_memory=1e9), worker(gpus=1.0, gpu_utilization=60.0,
                                                                                     gpu_memory=2e9)])
    assert with_gpu["gpu_utilization"] == 50.0 and with_gpu["gpu_memory"] == 3e9
    assert totals([])["quantum_utilization"] == 0.0


# -- aggregation ----------------------------------------------------------------------
def test_resource_and_detailed_metrics_average_the_window():
    samples = [
        sample(10.0, {"a": busy(), "b": worker()}, interval=1.0, finished=4, compute=2.0, transfer=0.5),
        sample(11.0, {"a": worker(), "b": worker()}, interval=1.0, finished=0),
    ]
    m = ResourceMetrics.from_dict(resource_metrics(samples))
    assert m.quantum_utilization == 25.0  # 50 % then 0 %
    assert m.node_utilization == 25.0
    d = DetailedMetrics.from_dict(detailed_metrics(samples))
    assert d.active_nodes == 2
    assert d.throughput == 2.0  # 4 tasks in 2 s
    assert d.mean_task_duration == 0.5
    assert d.transfer_time == 0.5 and d.compute_time == 2.0
    assert d.window == 2.0 and d.samples == 2
    assert d.quantum_slots == 2
    assert d.workers["a"]["quantum_busy"] == 0.5
    assert d.workers["a"]["role"] == "quantum"
    assert DetailedMetrics.from_dict(detailed_metrics(samples, recorded=False)).samples == 0


def test_per_worker_counts_a_worker_only_where_it_appears():
    samples = [sample(0.0, {"a": worker(cpu=10.0)}), sample(1.0, {"a": worker(cpu=30.0), "b": worker(cpu=5.0)})]
    rows = per_worker(samples)
    assert rows["a"]["cpu"] == 20.0 and rows["b"]["cpu"] == 5.0


def test_results_ignore_fields_a_newer_scheduler_adds():
    m = ResourceMetrics.from_dict({"node_utilization": 1.0, "network_bandwidth": 2.0, "quantum_utilization": 3.0,
                                   "something_new": 4})
    assert m == ResourceMetrics(1.0, 2.0, 3.0)


# -- analysis rules -------------------------------------------------------------------
def test_a_healthy_balanced_run_reports_no_bottleneck():
    result = analyze(healthy_run())
    assert result.healthy and result.bottlenecks == [] and result.recommendations == []
    assert result.samples == 20


def test_tiny_tasks_are_scheduler_bound():
    samples = [sample(float(i), {"a": busy(), "b": busy()}, interval=1.0, finished=100, compute=0.05)
               for i in range(3)]
    assert rules_fired(samples) == ["scheduler-bound"]
    (b,) = analyze(samples).bottlenecks
    assert "chunk" in b.recommendation
    assert b.evidence["mean_task_seconds"] == pytest.approx(0.0005)
    # Too few tasks to judge.
    assert rules_fired(samples, min_tasks=1000) == []


def test_one_overloaded_worker_is_an_imbalance():
    samples = [sample(float(i), {"a": busy(9.0), "b": worker(), "c": worker()}) for i in range(5)]
    (b,) = analyze(samples).bottlenecks
    assert b.rule == "imbalance" and b.evidence["worker"] == "a"
    assert "load balancer" in b.recommendation
    # A quantum worker busier than an idle classical one is not an imbalance: different roles.
    assert "imbalance" not in rules_fired([sample(0.0, {"a": busy(9.0), "c": worker("classical")})])
    # Below min-load nothing is overloaded.
    assert rules_fired(samples, min_load=60) == []
    # One long task has nothing a peer could take over.
    long_task = worker(processing=1, busy_threads=1, quantum_busy=1.0, load=3.0)
    assert rules_fired([sample(float(i), {"a": long_task, "b": worker()}) for i in range(5)]) == []


def test_long_quantum_queue_with_idle_classical_workers():
    samples = [sample(float(i), {"q": busy(5.0), "c": worker("classical")}) for i in range(4)]
    (b,) = analyze(samples).bottlenecks
    assert b.rule == "quantum-queue" and b.evidence["idle_classical_workers"] == 1
    assert "quantum workers" in b.recommendation
    # Classical workers busy too: the cluster is simply full.
    busy_classical = [sample(float(i), {"q": busy(5.0), "c": worker("classical", processing=1)}) for i in range(4)]
    assert rules_fired(busy_classical) == []
    # Short queue (below queue-per-slot).
    assert rules_fired([sample(0.0, {"q": busy(1.0), "c": worker("classical")})]) == []


def test_queue_must_persist_over_the_busy_samples():
    long_then_short = [sample(0.0, {"q": busy(5.0), "c": worker("classical")})] + [
        sample(float(i), {"q": busy(0.0), "c": worker("classical")}) for i in range(1, 4)
    ]
    assert rules_fired(long_then_short) == []
    assert rules_fired(long_then_short, persistence=0.25) == ["quantum-queue"]


def test_memory_near_the_limit_means_fewer_wide_circuits():
    samples = [sample(0.0, {"a": busy(memory=int(0.75 * 2 * GiB))})]
    (b,) = analyze(samples).bottlenecks
    assert b.rule == "memory-pressure" and b.evidence["fraction"] == pytest.approx(0.75)
    assert "statevector-fraction" in b.recommendation
    assert rules_fired(samples, memory_fraction=0.8) == []
    # Classical workers' memory is not about circuits.
    assert rules_fired([sample(0.0, {"c": worker("classical", memory=int(0.9 * 2 * GiB))})]) == []


def test_transfers_dominating_compute():
    samples = [sample(0.0, {"a": busy()}, finished=4, compute=0.01, transfer=0.8)]
    (b,) = analyze(samples).bottlenecks
    assert b.rule == "transfer-bound" and "Keep results on workers" in b.recommendation
    assert rules_fired([sample(0.0, {"a": busy()}, finished=4, compute=2.0, transfer=0.8)]) == []
    assert rules_fired([sample(0.0, {"a": busy()}, finished=4, compute=0.001, transfer=0.05)]) == []


def test_idle_gpu_while_cpu_circuits_queue():
    # Both workers' CPU slots are busy with queues behind them; the GPU does nothing.
    gpu_idle = {"g": busy(4.0, gpus=1.0, gpus_busy=0.0, gpu_utilization=2.0, gpu_memory=1e8), "a": busy(4.0)}
    samples = [sample(float(i), gpu_idle) for i in range(4)]
    (b,) = analyze(samples).bottlenecks
    assert b.rule == "gpu-idle" and b.evidence["gpu_utilization"] == 2.0
    assert "min-qubits" in b.recommendation
    # GPU busy: fine.
    gpu_busy = {"g": busy(4.0, gpus=1.0, gpus_busy=1.0, gpu_utilization=95.0, gpu_memory=1e9), "a": busy(4.0)}
    assert rules_fired([sample(float(i), gpu_busy) for i in range(4)]) == []
    # Idle GPU but nothing waiting: fine.
    idle_no_queue = {"g": busy(0.0, gpus=1.0, gpu_utilization=0.0, gpu_memory=0.0), "a": busy(0.0)}
    assert rules_fired([sample(float(i), idle_no_queue) for i in range(4)]) == []


def test_every_rule_has_a_test_above():
    names = {r.__name__ for r in RULES}
    assert names == {"scheduler_bound", "imbalance", "quantum_queue", "memory_pressure", "transfer_bound", "gpu_idle"}


def test_thresholds_come_from_dask_config():
    with dask.config.set({"qdask.monitoring.analysis.tiny-task": "50ms", "qdask.monitoring.analysis.min-tasks": 7}):
        t = Thresholds.from_config()
    assert t.tiny_task == pytest.approx(0.05) and t.min_tasks == 7
    assert Thresholds.from_config(min_load="2s").min_load == 2.0


def test_analysis_result_round_trips_through_a_dict():
    result = analyze([sample(0.0, {"a": busy(memory=int(0.75 * 2 * GiB))})])
    again = AnalysisResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result


# -- text summary --------------------------------------------------------------------
def test_summary_lists_metrics_failures_and_recommendations():
    samples = [sample(0.0, {"a": busy(memory=int(0.75 * 2 * GiB))})]
    text = format_summary(
        ResourceMetrics.from_dict(resource_metrics(samples)),
        DetailedMetrics.from_dict(detailed_metrics(samples)),
        ErrorStatistics(node_failures=2, network_errors=0, quantum_errors=1, avg_recovery_time=1.5),
        analyze(samples),
    )
    assert "quantum 100.0%" in text
    assert "2 node failure(s)" in text and "1 quantum error(s)" in text and "recovery 1.5 s" in text
    assert "memory-pressure" in text and "statevector-fraction" in text


# -- event store ---------------------------------------------------------------------
def test_event_store_counts_kinds_and_recovery_time():
    store = EventStore(history=2)
    store.record("node_failure", worker="tcp://127.0.0.1:1", cause="died", keys=["x"])
    store.record("recovery", duration=1.0)
    store.record("recovery", duration=3.0)
    store.record("migration", count=5, worker="tcp://127.0.0.1:1", thief="tcp://127.0.0.1:2")
    stats = ErrorStatistics.from_dict(store.statistics())
    assert stats == ErrorStatistics(node_failures=1, network_errors=0, quantum_errors=0, avg_recovery_time=2.0,
                                    recoveries=2)
    assert store.totals["migration"] == 5
    assert len(store.events) == 2  # history bounded, totals not
    (migration,) = store.since(0.0, ("migration",))
    assert migration.info == {"thief": "tcp://127.0.0.1:2"}
    with pytest.raises(ValueError, match="allowed"):
        store.record("oops")
    assert set(KINDS) >= {"node_failure", "network_error", "quantum_error", "recovery"}


# -- Chrome trace --------------------------------------------------------------------
def test_trace_is_valid_json_with_one_lane_per_worker_thread(tmp_path):
    path = tmp_path / "trace.json"
    trace = ChromeTrace(str(path))
    trace.span("qsim 10q", start=1.0, stop=2.0, worker="tcp://w1", thread=111, args={"qubits": 10})
    trace.span("qsim 12q", start=1.5, stop=2.5, worker="tcp://w1", thread=222, args={"qubits": 12})
    trace.span("qsim 14q", start=1.0, stop=1.2, worker="tcp://w2", thread=111, args={"qubits": 14})
    trace.counter("utilization %", 2.0, {"quantum": 50.0})
    trace.flush()
    # Streamed: readable before close once the array is terminated.
    partial = json.loads(path.read_text() + "]")
    assert len([e for e in partial if e["ph"] == "X"]) == 3
    trace.close()
    trace.close()  # idempotent
    events = json.loads(path.read_text())
    spans = [e for e in events if e["ph"] == "X"]
    assert [e["ts"] for e in spans] == pytest.approx([1e6, 1.5e6, 1e6])
    assert [e["dur"] for e in spans] == pytest.approx([1e6, 1e6, 0.2e6])
    lanes = {(e["pid"], e["tid"]) for e in spans}
    assert len(lanes) == 3  # two threads of w1, one of w2
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {"tcp://w1", "tcp://w2"}
    assert [e["args"] for e in events if e["ph"] == "C"] == [{"quantum": 50.0}]
    assert trace.spans == 3 and trace.closed


def test_a_flood_of_one_circuit_tasks_after_heavy_work_is_found_per_group():
    # 10 heavy circuit tasks of 2 s, then 300 one-circuit tasks of 0.5 ms (one Sampler.submit each):
    # the window's mean task (65 ms) is far above tiny-task (10 ms), the flood's own mean is not.
    heavy = {"qdask_sample_20q_1.6s": {"finished": 10, "compute": 20.0, "circuits": 40}}
    flood = {"qdask_sample_4q_100us": {"finished": 100, "compute": 0.05, "circuits": 100}}
    samples = [sample(1000.0 + i, {"a": busy(), "b": busy()}, interval=1.0, finished=10, compute=20.0,
                      groups=heavy) for i in range(2)]
    samples += [sample(1002.0 + i, {"a": busy(), "b": busy()}, interval=1.0, finished=100, compute=0.05,
                       groups=flood) for i in range(3)]
    whole_window_mean = sum(s["tasks"]["compute"] for s in samples) / sum(s["tasks"]["finished"] for s in samples)
    assert whole_window_mean > 0.010  # what the window-wide rule alone saw: no finding
    assert rules_fired([{**s, "tasks": {**s["tasks"], "groups": {}}} for s in samples]) == []
    (b,) = analyze(samples).bottlenecks
    assert b.rule == "scheduler-bound"
    assert b.evidence["group"] == "qdask_sample_4q_100us" and b.evidence["finished"] == 300
    assert b.evidence["circuits_per_task"] == 1.0
    assert "300 qdask_sample_4q_100us tasks (1 circuit(s) each)" in b.message
    assert "sampler.run_batch(circuits" in b.recommendation and "Sampler.submit" in b.recommendation


def test_tiny_classical_tasks_get_classical_batching_advice():
    groups = {"inc": {"finished": 150, "compute": 0.03, "circuits": 0}}
    samples = [sample(float(i), {"a": busy()}, interval=1.0, finished=150, compute=0.03, groups=groups)
               for i in range(2)]
    (b,) = analyze(samples).bottlenecks
    assert b.evidence["group"] == "inc" and b.evidence["circuits_per_task"] is None
    assert "client.map over chunks" in b.recommendation
